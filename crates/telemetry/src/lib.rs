//! tally-telemetry (under construction).
