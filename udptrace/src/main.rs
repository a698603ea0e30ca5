//! `udptrace`: see the crate docs in lib.rs and README.md.

use std::{process::ExitCode, time::Duration};

use clap::Parser as _;
use udptrace::{
    cli::{Cli, Command, TraceArgs},
    doctor,
    lab::netns,
    lab_command::{self, output_for},
    render::{is_closed_pipe, note, stdout_was_closed},
    session::{TraceConfig, Tracer},
    shutdown::StopSignals,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // Default signal actions, and its stdout is /dev/null by design.
        Some(Command::LabGuard { parent }) => {
            netns::guard(parent);
            return ExitCode::SUCCESS;
        }
        _ if stdout_was_closed() => {
            note(format_args!(
                "udptrace: standard output is closed; redirect it (to a file, a pipe or /dev/null) instead"
            ));
            return ExitCode::FAILURE;
        }
        // Short, with nothing to clean up: Ctrl-C keeps its default action (the kernel
        // detaches what doctor attached when the process dies).
        Some(Command::Doctor { json, probes }) => match doctor::run(json, probes.map(Into::into)) {
            Ok(status) => return ExitCode::from(status),
            Err(error) => Err(anyhow::Error::new(error).context("writing the output")),
        },
        // Before anything is attached, built or announced: from here on SIGINT/SIGTERM end
        // the run with its summary and clean-up, whenever they come.
        Some(Command::Lab { command }) => match StopSignals::install() {
            Ok(mut signals) => lab_command::run(command, &mut signals).await,
            Err(error) => Err(error),
        },
        None => match StopSignals::install() {
            Ok(mut signals) => trace(&cli.trace, &mut signals).await,
            Err(error) => Err(error),
        },
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
                note(format_args!("{filter_error}"));
                return ExitCode::from(2);
            }
            note(format_args!("udptrace: {error:#}"));
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
        debug_bpf: args.output.debug_bpf,
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
    // A closed stdout ends the run like a signal; writing the summary then fails with EPIPE,
    // which `main` turns into a quiet exit.
    tracer
        .run(output.as_mut(), signals.or_stdout_closed())
        .await?;
    Ok(())
}
