//! tally (under construction).
fn main() {}
