-- Outbox payloads are JSON written once and read once: compressing them
-- (TOAST's default) costs more CPU inside the projector's transaction than
-- the disk it saves. Store them out of line, uncompressed.
ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
