//! `udptrace lab list` and `udptrace lab run NAME [--trace]`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    cli::{LabCommand, OutputArgs},
    lab::{
        self,
        docker::{self, DockerHost},
        netns, scenarios,
    },
    render::{note, output_for, print_stdout},
    session::{TraceConfig, Tracer},
    shutdown::StopSignals,
};

pub async fn run(command: LabCommand, signals: &mut StopSignals) -> anyhow::Result<()> {
    match command {
        LabCommand::List => {
            let mut text = String::new();
            let listed = scenarios::all()
                .into_iter()
                .map(|s| (s.name, s.description, s.expected))
                .chain(
                    docker::DOCKER_SCENARIOS
                        .iter()
                        .map(|s| (s.name, s.description, s.expected)),
                );
            for (name, description, expected) in listed {
                let expected = if expected.is_empty() {
                    "no verdict (healthy control)".to_owned()
                } else {
                    expected.join(", ")
                };
                text.push_str(&format!(
                    "{name:<28} {description}\n{:<28} expect: {expected}\n",
                    ""
                ));
                if let Some(change) =
                    scenarios::find(name).and_then(scenarios::Scenario::global_change)
                {
                    text.push_str(&format!(
                        "{:<28} global: it {change}; only in a test guest or with \
                         --allow-global-changes\n",
                        ""
                    ));
                }
            }
            if let Some(missing) = DockerHost::missing() {
                text.push_str(&format!(
                    "(the docker-... scenarios need dockerd: {missing})\n"
                ));
            }
            print_stdout(&text).context("writing the output")
        }
        LabCommand::Run {
            name,
            trace,
            allow_global_changes,
            output,
        } => {
            if allow_global_changes {
                lab::allow_global_changes();
            }
            // Before the first namespace exists: a SIGKILL at any moment leaves nothing behind.
            netns::spawn_guardian()?;
            let lab = if let Some(scenario) = scenarios::find(&name) {
                LabRun {
                    name: scenario.name,
                    description: scenario.description(),
                    expected: scenario.expected,
                    filter: vec!["port".into(), scenario.port().to_string()],
                    docker_socket: None,
                    exercise: Box::new(move || {
                        let lab = scenario.setup().context("building the lab")?;
                        let outcome = scenario.exercise(&lab)?.describe();
                        Ok((outcome, Box::new(lab) as Box<dyn Send>))
                    }),
                }
            } else if let Some(scenario) = docker::find(&name) {
                if let Some(missing) = DockerHost::missing() {
                    bail!("lab {name} needs a Docker daemon: {missing}");
                }
                // Before the tracer, which names the containers by asking this daemon.
                let host = DockerHost::start().context("starting a private dockerd")?;
                LabRun {
                    name: scenario.name,
                    description: scenario.description(),
                    expected: scenario.expected,
                    filter: scenario.filter(),
                    docker_socket: Some(host.docker.socket()),
                    exercise: Box::new(move || {
                        let outcome = scenario.exercise(&host)?.describe();
                        Ok((outcome, Box::new(host) as Box<dyn Send>))
                    }),
                }
            } else {
                bail!("no lab scenario `{name}`: see `udptrace lab list`");
            };
            let result = run_scenario(lab, trace, &output, signals).await;
            // On every path (done, Ctrl-C, an error): peers stop within a tick, the namespaces
            // go now.
            netns::cleanup_all();
            result
        }
    }
}

/// A scenario to run: the lab's own (namespaces and peers) or a Docker one (a private dockerd
/// in a lab namespace, netcat containers).
struct LabRun {
    name: &'static str,
    description: String,
    expected: &'static [&'static str],
    /// The tracer's filter: the scenario's ports.
    filter: Vec<String>,
    /// The Docker daemon that names the containers (Docker scenarios).
    docker_socket: Option<PathBuf>,
    /// Builds the lab (or uses the Docker host it owns) and exercises it (blocking).
    exercise: Box<dyn FnOnce() -> anyhow::Result<Exercised> + Send>,
}

/// What happened, described, and the lab: kept (namespaces, daemon) until the trace has
/// settled, since verdicts read the namespaces' sockets and rules.
type Exercised = (String, Box<dyn Send>);

/// `lab run`: builds the lab and exercises it (traced with `trace`) until it is done or a
/// signal comes.
async fn run_scenario(
    lab: LabRun,
    trace: bool,
    output: &OutputArgs,
    signals: &mut StopSignals,
) -> anyhow::Result<()> {
    let tracer = if trace {
        Some(Tracer::start(TraceConfig {
            filter: lab.filter,
            docker_socket: lab.docker_socket,
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
    note(format_args!(
        "lab {}: {}\nexpected verdicts: {}",
        lab.name,
        lab.description,
        if lab.expected.is_empty() {
            "none".into()
        } else {
            lab.expected.join(", ")
        }
    ));
    let exercised = tokio::task::spawn_blocking(lab.exercise);
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
    let (outcome, _lab) = outcome;
    note(format_args!("lab {}: {outcome}", lab.name));
    Ok(())
}
