//! tally-worker: runs generations on OpenRouter (under construction).

pub mod catalog;
pub mod estimate;
pub mod routing;
