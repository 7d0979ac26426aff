//! tally-projector (under construction).
