//! `udptrace`: see the crate docs in lib.rs and README.md.

use std::{process::ExitCode, time::Duration};

use clap::Parser as _;
use udptrace::{
    cli::{Cli, Command, TraceArgs},
    doctor,
    lab_command::{self, output_for},
    session::{TraceConfig, Tracer},
    shutdown::stop_signal,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Doctor { json, probes }) => {
            return ExitCode::from(doctor::run(json, probes.map(Into::into)) as u8);
        }
        Some(Command::Lab { command }) => lab_command::run(command).await,
        None => trace(&cli.trace).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A bad filter expression is a usage error (exit 2, like tcpdump); its Display
            // already carries the caret diagram.
            if let Some(filter_error) = error.downcast_ref::<udptrace::filter::FilterError>() {
                eprintln!("{filter_error}");
                return ExitCode::from(2);
            }
            eprintln!("udptrace: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn trace(args: &TraceArgs) -> anyhow::Result<()> {
    let config = TraceConfig {
        filter: args.filter.clone(),
        interface: args.interface.clone(),
        netns: args.netns.clone(),
        pid: args.pid,
        probes: args.output.probes.map(Into::into),
        ring_size: args.output.ring_size,
        max_flows: Some(args.max_flows),
        count: args.count,
        duration: args
            .duration
            .map(|secs| {
                Duration::try_from_secs_f64(secs)
                    .map_err(|_| anyhow::anyhow!("--duration {secs}: not a number of seconds"))
            })
            .transpose()?,
        diagnose_only: false,
    };
    let tracer = Tracer::start(config)?;
    let mut output = output_for(&args.output);
    tracer.run(output.as_mut(), stop_signal()).await?;
    Ok(())
}
