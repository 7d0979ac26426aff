//! Runs the simulator standalone, with the same flags as
//! `tally sim openrouter`: `cargo run -p tally-sim --example openrouter_sim -- --help`.

use clap::Parser;

/// OpenRouter simulator.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sim: tally_sim::SimArgs,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    eprintln!(
        "OpenRouter simulator: base URL http://{}/api/v1",
        cli.sim.addr
    );
    tally_sim::run(cli.sim, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
