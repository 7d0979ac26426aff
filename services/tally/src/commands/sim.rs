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
            let listener = tokio::net::TcpListener::bind(args.addr)
                .await
                .with_context(|| format!("cannot listen on {} (TALLY_SIM_ADDR)", args.addr))?;
            let addr = listener.local_addr()?;
            println!("OpenRouter simulator on http://{addr}/api/v1 (Ctrl-C to stop)");
            let sim = tally_sim::Simulator::new(args.into());
            let mut stop = super::shutdown_signal();
            sim.serve_with_shutdown(listener, async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await?;
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
