//! tally-ledger (under construction).
