//! tally-api (under construction).
