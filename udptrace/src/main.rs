//! `udptrace`: see the crate docs in lib.rs and README.md.

use std::{
    io::BufWriter,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser as _;
use tokio::signal::unix::{SignalKind, signal};
use udptrace::{
    cli::{Cli, Command, TraceArgs, WatchArgs},
    doctor,
    lab::netns,
    lab_command,
    logfile::RotatingLog,
    manual,
    render::{is_closed_pipe, json::JsonOutput, note, output_for, print_stdout, stdout_was_closed},
    session::{TraceConfig, Tracer},
    shutdown::StopSignals,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // The lab's guardian process: internal, so not in the CLI definition (nor in the manual
    // page and completions generated from it). Default signal actions, and its stdout is
    // /dev/null by design.
    if let Some(parent) = netns::guardian_parent(std::env::args_os()) {
        netns::guard(parent);
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        _ if stdout_was_closed() => {
            note(format_args!(
                "udptrace: standard output is closed; redirect it (to a file, a pipe or /dev/null) instead"
            ));
            return ExitCode::FAILURE;
        }
        Some(Command::Replay { file, json }) => replay(&file, json),
        Some(Command::Completions { shell }) => {
            print_stdout(&manual::completions(shell)).context("writing the completions")
        }
        Some(Command::Man) => print_stdout(&manual::man_page()).context("writing the manual page"),
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
        Some(Command::Watch(args)) => match StopSignals::install() {
            Ok(mut signals) => watch(&args, &mut signals).await,
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
    let tracer = Tracer::start(trace_config(args, None)?)?;
    let mut output = output_for(args.output.json, args.output.pcap_on_stdout());
    // A closed stdout ends the run like a signal; writing the summary then fails with EPIPE,
    // which `main` turns into a quiet exit.
    tracer
        .run(output.as_mut(), signals.or_stdout_closed())
        .await?;
    Ok(())
}

/// `udptrace watch`: NDJSON records on stdout or in `--log FILE`.
async fn watch(args: &WatchArgs, signals: &mut StopSignals) -> anyhow::Result<()> {
    let trace = &args.trace;
    let reopen = Arc::new(AtomicBool::new(false));
    // Before the file is opened: a SIGHUP from then on reopens it instead of killing us.
    let mut hangups = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let log = args
        .log
        .as_deref()
        .map(|path| {
            RotatingLog::open(path, args.log_size, Arc::clone(&reopen))
                .with_context(|| format!("--log {}", path.display()))
        })
        .transpose()?;
    let tracer = Tracer::start(trace_config(trace, Some(args.escalate))?)?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            reopen.store(true, Ordering::Relaxed);
        }
    });
    // Everything watch reports reaches one `Output` (anomalies as typed events, status,
    // verdicts, the exit summary with the kernel's per-flow counts); `--metrics` is teed
    // beside it by the tracer.
    if let Some(log) = log {
        let mut output = JsonOutput::watch(BufWriter::with_capacity(1 << 16, log));
        tracer.run(&mut output, signals.recv()).await?;
    } else {
        let mut output = JsonOutput::watch(BufWriter::with_capacity(1 << 16, std::io::stdout()));
        tracer.run(&mut output, signals.or_stdout_closed()).await?;
    }
    Ok(())
}

/// What `args` ask to trace; `watch`: `udptrace watch --escalate`.
fn trace_config(args: &TraceArgs, watch: Option<Duration>) -> anyhow::Result<TraceConfig> {
    Ok(TraceConfig {
        filter: args.filter.clone(),
        interface: args.interface.clone(),
        netns: args.netns.clone(),
        pid: args.pid,
        probes: args.output.probes.map(Into::into),
        ring_size: args.output.ring_size,
        debug_bpf: args.output.debug_bpf,
        max_flows: Some(args.max_flows),
        reply_timeout: Some(args.reply_timeout),
        count: args.count,
        duration: args
            .duration
            .map(|secs| {
                Duration::try_from_secs_f64(secs)
                    .map_err(|_| anyhow::anyhow!("--duration {secs}: not a number of seconds"))
            })
            .transpose()?,
        diagnose_only: false,
        record: args.output.record.clone(),
        pcap: args.output.pcap.clone(),
        snaplen: args.output.snaplen,
        stack: args.output.stack,
        // DOCKER_HOST's or /run/docker.sock.
        docker_socket: None,
        watch,
        park_after: (!args.park_after.is_zero()).then_some(args.park_after),
        metrics: args.metrics,
        containers: args.containers.iter().chain(&args.pods).cloned().collect(),
    })
}

/// `udptrace replay FILE`: what the recording's run showed, rebuilt offline.
fn replay(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let input = std::fs::File::open(file).with_context(|| format!("replay {}", file.display()))?;
    let mut output = output_for(json, false);
    let replayed = udptrace::replay::replay(std::io::BufReader::new(input), output.as_mut())
        .with_context(|| format!("replay {}", file.display()))?;
    if replayed.mismatches > 0 {
        note(format_args!(
            "udptrace: {} answers of the recording did not fit this build's rules (recorded by another version?): verdicts may differ from the live run's",
            replayed.mismatches
        ));
    }
    Ok(())
}
