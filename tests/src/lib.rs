//! tally-tests (under construction).
