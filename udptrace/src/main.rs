//! `udptrace`: see the crate docs in lib.rs and README.md.

use std::{process::ExitCode, time::Duration};

use clap::Parser as _;
use udptrace::{
    cli::{Cli, Command, LabCommand, TraceArgs},
    doctor,
    lab_command::{self, output_for},
    render::{is_closed_pipe, stdout_was_closed},
    session::{TraceConfig, Tracer},
    shutdown::StopSignals,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // First: from here on SIGINT/SIGTERM end a run with its summary, whenever they come.
    let mut signals = match StopSignals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("udptrace: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let guardian = matches!(
        cli.command,
        Some(Command::Lab {
            command: LabCommand::Guard { .. }
        })
    );
    if stdout_was_closed() && !guardian {
        eprintln!(
            "udptrace: standard output is closed; redirect it (to a file, a pipe or /dev/null) instead"
        );
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Some(Command::Doctor { json, probes }) => match doctor::run(json, probes.map(Into::into)) {
            Ok(status) => return ExitCode::from(status),
            Err(error) => Err(anyhow::Error::new(error).context("writing the output")),
        },
        Some(Command::Lab { command }) => lab_command::run(command, &mut signals).await,
        None => trace(&cli.trace, &mut signals).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head -1`): it had what it wanted. Quiet and successful,
        // so that `set -o pipefail` scripts do not fail on it (README); the programs were
        // detached when the tracer was dropped on the way here.
        Err(error) if is_closed_pipe(&error) => ExitCode::SUCCESS,
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

async fn trace(args: &TraceArgs, signals: &mut StopSignals) -> anyhow::Result<()> {
    let config = TraceConfig {
        filter: args.filter.clone(),
        interface: args.interface.clone(),
        netns: args.netns.clone(),
        pid: args.pid,
        probes: args.output.probes.map(Into::into),
        ring_size: args.output.ring_size,
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
    // A closed stdout ends the run like a signal; writing the summary then fails with EPIPE,
    // which `main` turns into a quiet exit.
    tracer
        .run(output.as_mut(), signals.or_stdout_closed())
        .await?;
    Ok(())
}
