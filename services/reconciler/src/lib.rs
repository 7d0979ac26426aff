//! tally-reconciler (under construction).
