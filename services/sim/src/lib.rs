//! tally-sim (under construction).
