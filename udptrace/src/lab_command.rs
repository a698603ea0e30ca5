//! `udptrace lab list` and `udptrace lab run NAME [--trace]`.

use std::time::Duration;

use anyhow::{Context as _, anyhow};

use crate::{
    cli::{LabCommand, OutputArgs},
    lab::{Scenario, netns, scenarios},
    render::{note, output_for, print_stdout},
    session::{TraceConfig, Tracer},
    shutdown::StopSignals,
};

pub async fn run(command: LabCommand, signals: &mut StopSignals) -> anyhow::Result<()> {
    match command {
        LabCommand::List => {
            let mut text = String::new();
            for scenario in scenarios::SCENARIOS {
                let expected = if scenario.expected.is_empty() {
                    "no verdict (healthy control)".to_owned()
                } else {
                    scenario.expected.join(", ")
                };
                text.push_str(&format!(
                    "{:<28} {}\n{:<28} expect: {expected}\n",
                    scenario.name, scenario.description, ""
                ));
            }
            print_stdout(&text).context("writing the output")
        }
        LabCommand::Run {
            name,
            trace,
            output,
        } => {
            let scenario = scenarios::find(&name)
                .ok_or_else(|| anyhow!("no lab scenario `{name}`: see `udptrace lab list`"))?;
            // Before the first namespace exists: a SIGKILL at any moment leaves nothing behind.
            netns::spawn_guardian()?;
            let result = run_scenario(scenario, trace, &output, signals).await;
            // On every path (done, Ctrl-C, an error): peers stop within a tick, the namespaces
            // go now.
            netns::cleanup_all();
            result
        }
    }
}

/// `lab run`: builds the lab, exercises it (traced with `trace`) until it is done or a signal
/// comes. A signal during the set-up (which blocks this thread) is kept by `signals` and ends
/// the run as soon as the set-up returns.
async fn run_scenario(
    scenario: &'static Scenario,
    trace: bool,
    output: &OutputArgs,
    signals: &mut StopSignals,
) -> anyhow::Result<()> {
    let tracer = if trace {
        Some(Tracer::start(TraceConfig {
            filter: vec!["port".into(), scenario.port().to_string()],
            probes: output.probes.map(Into::into),
            ring_size: output.ring_size,
            record: output.record.clone(),
            pcap: output.pcap.clone(),
            snaplen: output.snaplen,
            stack: output.stack,
            debug_bpf: output.debug_bpf,
            ..TraceConfig::default()
        })?)
    } else {
        None
    };
    let lab = scenario.setup().context("building the lab")?;
    note(format_args!(
        "lab {}: {}\nexpected verdicts: {}",
        scenario.name,
        scenario.description,
        if scenario.expected.is_empty() {
            "none".into()
        } else {
            scenario.expected.join(", ")
        }
    ));
    let lab = std::sync::Arc::new(lab);
    let exercised = {
        let lab = std::sync::Arc::clone(&lab);
        tokio::task::spawn_blocking(move || scenario.exercise(&lab))
    };
    let interrupted = || anyhow!("interrupted; the lab's namespaces were removed");
    let outcome = match tracer {
        Some(tracer) => {
            let mut out = output_for(output.json, output.pcap_on_stdout());
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let waiter = tokio::spawn(async move {
                let outcome = exercised.await;
                // Events and verdicts settle after the last datagram.
                tokio::time::sleep(Duration::from_millis(700)).await;
                let _ = done_tx.send(());
                outcome
            });
            let mut stopped = false;
            let stop = async {
                tokio::select! {
                    _ = done_rx => {}
                    () = signals.or_stdout_closed() => stopped = true,
                }
            };
            tracer.run(out.as_mut(), stop).await?;
            if stopped {
                return Err(interrupted());
            }
            waiter.await.context("lab task")?
        }
        None => {
            tokio::select! {
                outcome = exercised => outcome,
                () = signals.recv() => return Err(interrupted()),
            }
        }
    }
    .context("lab task")??;
    note(format_args!(
        "lab {}: {}",
        scenario.name,
        outcome.describe()
    ));
    Ok(())
}
