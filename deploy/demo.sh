#!/usr/bin/env bash
# The main command: prepare the machine (Postgres, NATS with JetStream), then
# run `tally demo` — the OpenRouter simulator, every tally service, a stream
# of generations with a live summary, and a spend report at the end.
#
#   bash deploy/demo.sh                      # defaults
#   bash deploy/demo.sh --generations 2000   # any `tally demo` option
#
# Uses the local services that setup.sh starts: NATS on 127.0.0.1:4222 and
# Postgres database `tally` (role tally/tally) on 127.0.0.1:5432. Override
# with TALLY_NATS_URL / TALLY_DATABASE_URL.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash deploy/setup.sh --start-nats

export TALLY_DATABASE_URL="${TALLY_DATABASE_URL:-postgres://tally:tally@127.0.0.1:5432/tally}"
export TALLY_NATS_URL="${TALLY_NATS_URL:-nats://127.0.0.1:4222}"
echo "demo: building tally (release)"
cargo build --release -p tally --quiet
exec "$ROOT/target/release/tally" demo "$@"
