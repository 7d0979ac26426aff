//! `tally sim …`: the OpenRouter simulator and the load generator.

use anyhow::Context;

use crate::config::Config;

/// `tally sim` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum SimCommand {
    /// Serve an OpenRouter look-alike (generation stats, models) for tests, demos and load.
    Openrouter(tally_sim::SimArgs),
    /// Publish a stream of generation.completed events (some without cost) to NATS.
    Load(tally_sim::load::LoadArgs),
}

/// Runs a `tally sim` subcommand.
pub async fn sim(cfg: &Config, cmd: SimCommand) -> anyhow::Result<()> {
    match cmd {
        SimCommand::Openrouter(args) => {
            println!(
                "OpenRouter simulator on http://{}/api/v1 (Ctrl-C to stop)",
                args.addr
            );
            let addr = args.addr;
            let mut stop = super::shutdown_signal();
            tally_sim::run(args, async move {
                let _ = stop.changed().await;
            })
            .await
            .with_context(|| format!("serving the simulator on {addr} (TALLY_SIM_ADDR)"))?;
            Ok(())
        }
        SimCommand::Load(args) => {
            let bus = super::connect_bus(cfg).await?;
            bus.ensure_topology().await?;
            let report = tally_sim::load::run(&bus, &args, super::shutdown_signal()).await?;
            println!("{report}");
            Ok(())
        }
    }
}
