//! tally-worker (under construction).
