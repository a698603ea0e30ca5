//! `udptrace lab list` and `udptrace lab run NAME [--trace]`.

use std::{io::IsTerminal as _, time::Duration};

use anyhow::{Context as _, anyhow};

use crate::{
    cli::{LabCommand, OutputArgs},
    lab::{netns, scenarios},
    render::{Output, json::JsonOutput, text::TextOutput},
    session::{TraceConfig, Tracer},
    shutdown::stop_signal,
};

/// The output chosen on the command line; text is coloured only on a terminal without NO_COLOR.
pub fn output_for(args: &OutputArgs) -> Box<dyn Output> {
    let stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
    if args.json {
        Box::new(JsonOutput::new(stdout))
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Box::new(TextOutput::new(stdout, colour))
    }
}

pub async fn run(command: LabCommand) -> anyhow::Result<()> {
    match command {
        LabCommand::List => {
            for scenario in scenarios::SCENARIOS {
                let expected = if scenario.expected.is_empty() {
                    "no verdict (healthy control)".to_owned()
                } else {
                    scenario.expected.join(", ")
                };
                println!(
                    "{:<28} {}\n{:<28} expect: {expected}",
                    scenario.name, scenario.description, ""
                );
            }
            Ok(())
        }
        LabCommand::Run {
            name,
            trace,
            output,
        } => {
            let scenario = scenarios::find(&name)
                .ok_or_else(|| anyhow!("no lab scenario `{name}`: see `udptrace lab list`"))?;
            let tracer = if trace {
                Some(Tracer::start(TraceConfig {
                    filter: vec!["port".into(), scenario.port().to_string()],
                    probes: output.probes.map(Into::into),
                    ring_size: output.ring_size,
                    ..TraceConfig::default()
                })?)
            } else {
                None
            };
            let lab = scenario.setup().context("building the lab")?;
            eprintln!(
                "lab {}: {}\nexpected verdicts: {}",
                scenario.name,
                scenario.description,
                if scenario.expected.is_empty() {
                    "none".into()
                } else {
                    scenario.expected.join(", ")
                }
            );
            let lab = std::sync::Arc::new(lab);
            let exercised = {
                let lab = std::sync::Arc::clone(&lab);
                tokio::task::spawn_blocking(move || scenario.exercise(&lab))
            };
            let outcome = match tracer {
                Some(tracer) => {
                    let mut out = output_for(&output);
                    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                    let waiter = tokio::spawn(async move {
                        let outcome = exercised.await;
                        // Events and verdicts settle after the last datagram.
                        tokio::time::sleep(Duration::from_millis(700)).await;
                        let _ = done_tx.send(());
                        outcome
                    });
                    let stop = async {
                        tokio::select! {
                            _ = done_rx => {}
                            () = stop_signal() => {}
                        }
                    };
                    tracer.run(out.as_mut(), stop).await?;
                    waiter.await.context("lab task")?
                }
                None => {
                    tokio::select! {
                        outcome = exercised => outcome,
                        () = stop_signal() => {
                            // The peers' threads end on their own deadlines; the namespaces
                            // go now.
                            netns::cleanup_all();
                            anyhow::bail!("interrupted; the lab's namespaces were removed");
                        }
                    }
                }
            }
            .context("lab task")??;
            eprintln!("lab {}: {}", scenario.name, outcome.describe());
            drop(lab);
            netns::cleanup_all();
            Ok(())
        }
    }
}
