//! Which container a network namespace belongs to. The kernel knows namespaces by inode only;
//! `procs.rs` finds a process in each and reads its /proc/PID/cgroup, whose path names the
//! runtime and the container id (`container_in_cgroup`). The container's name, image and
//! Kubernetes labels come from the runtime's own API: the Docker Engine API on its unix socket
//! (DOCKER_HOST=unix://... or /run/docker.sock), through bollard, on a thread of its own
//! (`ContainerNames`), so that the event path only reads a map and never waits for a daemon.
//! It lists the running containers once, follows Docker's `start`/`rename` events and answers
//! ids it has not seen. Without a runtime socket nothing is started and every name stays as
//! it was (`pid:comm`).
//!
//! Verified here with Debian's docker.io 20.10 (cgroup v1 `/docker/ID` paths). The systemd
//! paths (`docker-ID.scope`), containerd's CRI (`cri-containerd-ID.scope`), CRI-O
//! (`crio-ID.scope`) and Podman (`libpod-ID.scope`) are recognised from their documented
//! cgroup layouts and give runtime and id only: their metadata is not read.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use bollard::{
    Docker,
    models::{ContainerInspectResponse, ContainerSummary},
    query_parameters::EventsOptions,
};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::sanitize::sanitize_kernel_string;

/// Length of the id in text (`docker ps` shows 12 characters).
pub const SHORT_ID: usize = 12;
/// The Docker socket when DOCKER_HOST does not name one.
const DOCKER_SOCKET: &str = "/run/docker.sock";
/// Seconds bollard waits for an answer.
const API_TIMEOUT_SECS: u64 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::Crio => "crio",
            Self::Podman => "podman",
        }
    }
}

/// The Kubernetes pod a container belongs to, from the labels the kubelet sets
/// (`io.kubernetes.pod.namespace`, `io.kubernetes.pod.name`, `io.kubernetes.container.name`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// A container, as far as it is known: runtime and id from the cgroup, the rest from the
/// runtime's API (all of it untrusted text, sanitized).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub runtime: Runtime,
    /// The full id.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

impl Container {
    pub fn short_id(&self) -> &str {
        self.id.get(..SHORT_ID).unwrap_or(&self.id)
    }

    /// `ctr web-1 (docker 3336e43c0a1b)`, or `pod shop/web-5d8f nginx (docker ...)` for a
    /// pod's container: how events name its namespace; `None` until the runtime named it.
    pub fn label(&self) -> Option<String> {
        self.text("ctr")
    }

    /// `container web-1 (docker 3336e43c0a1b)` (a pod's container as in `label`): how
    /// verdicts name the container something happened in.
    pub fn described(&self) -> Option<String> {
        self.text("container")
    }

    fn text(&self, container_word: &str) -> Option<String> {
        let name = match &self.pod {
            Some(pod) => format!(
                "pod {}/{}{}",
                pod.namespace,
                pod.name,
                pod.container
                    .as_ref()
                    .map_or_else(String::new, |container| format!(" {container}"))
            ),
            None => format!("{container_word} {}", self.name.as_ref()?),
        };
        Some(format!(
            "{name} ({} {})",
            self.runtime.name(),
            self.short_id()
        ))
    }
}

/// The runtime and container id in /proc/PID/cgroup's text, when the process runs in a
/// container: the last path component of any hierarchy's line `N:controllers:/path`.
pub fn container_in_cgroup(text: &str) -> Option<(Runtime, String)> {
    text.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let mut components = path.rsplit('/');
        let last = components.next()?;
        let scoped = [
            ("docker-", Runtime::Docker),
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::Crio),
            ("libpod-", Runtime::Podman),
        ]
        .into_iter()
        .find_map(|(prefix, runtime)| {
            let id = last.strip_prefix(prefix)?.strip_suffix(".scope")?;
            Some((runtime, id))
        });
        let (runtime, id) = match scoped {
            Some(found) => found,
            // cgroupfs driver: /docker/ID (Docker's `--cgroup-parent` default).
            None if components.next() == Some("docker") => (Runtime::Docker, last),
            None => return None,
        };
        is_container_id(id).then(|| (runtime, id.to_owned()))
    })
}

/// 64 lowercase hex digits, as every runtime here makes them.
fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Container metadata learnt from the runtimes, filled by a background thread.
#[derive(Default)]
pub struct ContainerNames {
    known: Arc<Mutex<HashMap<String, Container>>>,
    /// Ids to look up; `None` when no runtime socket exists (nothing runs, nothing waits).
    asks: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    asked: Mutex<HashSet<String>>,
    /// Set when Docker reported a container start: a new namespace, whose first events may
    /// come before /proc's next scan would be allowed (`procs.rs`), so it is allowed at once.
    started: Arc<AtomicBool>,
}

impl ContainerNames {
    /// Starts following the Docker daemon on `socket`, else the one DOCKER_HOST
    /// (`unix://PATH`) or /run/docker.sock names, if that socket exists.
    pub fn connect(socket: Option<&Path>) -> Self {
        let socket = docker_socket(socket);
        if !socket.exists() {
            return Self::default();
        }
        let known = Arc::default();
        let (asks, requests) = tokio::sync::mpsc::unbounded_channel();
        let filler = Arc::clone(&known);
        let started = Arc::<AtomicBool>::default();
        let starts = Arc::clone(&started);
        let spawned = std::thread::Builder::new()
            .name("containers".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(follow_docker(socket, filler, requests, &starts));
            });
        Self {
            known,
            asks: spawned.is_ok().then_some(asks),
            asked: Mutex::default(),
            started,
        }
    }

    /// Whether a container started since the last call.
    pub fn take_started(&self) -> bool {
        self.started.swap(false, Ordering::Relaxed)
    }

    /// What is known of container `id` now; an unknown id is asked for (once) and known a
    /// few milliseconds later.
    pub fn get(&self, runtime: Runtime, id: &str) -> Container {
        let known = self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        known.unwrap_or_else(|| {
            if runtime == Runtime::Docker
                && let Some(asks) = &self.asks
                && self
                    .asked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id.to_owned())
            {
                let _ = asks.send(id.to_owned());
            }
            Container {
                runtime,
                id: id.to_owned(),
                name: None,
                image: None,
                pod: None,
            }
        })
    }
}

/// The Docker API socket: `socket` when given, else the one DOCKER_HOST (`unix://PATH`) names,
/// else /run/docker.sock.
pub fn docker_socket(socket: Option<&Path>) -> PathBuf {
    socket.map_or_else(
        || {
            std::env::var("DOCKER_HOST")
                .ok()
                .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DOCKER_SOCKET))
        },
        Path::to_path_buf,
    )
}

/// A client of the Docker daemon on `socket`, speaking the daemon's API version.
pub async fn connect_docker(socket: &Path) -> Result<Docker, bollard::errors::Error> {
    let docker = Docker::connect_with_unix(
        &socket.to_string_lossy(),
        API_TIMEOUT_SECS,
        bollard::API_DEFAULT_VERSION,
    )?;
    // Debian's docker.io 20.10 speaks API 1.41, older than bollard's default.
    docker.negotiate_version().await
}

/// The Docker side of `ContainerNames`: every running container, then each one that starts
/// (noted in `started`) or is renamed, and each id asked for. Ends (names stay as they are)
/// when the daemon does not answer.
async fn follow_docker(
    socket: PathBuf,
    known: Arc<Mutex<HashMap<String, Container>>>,
    mut asks: tokio::sync::mpsc::UnboundedReceiver<String>,
    started: &AtomicBool,
) {
    let Ok(docker) = connect_docker(&socket).await else {
        return;
    };
    let store = |container: Container| {
        known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(container.id.clone(), container);
    };
    if let Ok(list) = docker.list_containers(None).await {
        list.iter().filter_map(from_summary).for_each(store);
    }
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        (
            "event".to_owned(),
            vec!["start".to_owned(), "rename".to_owned()],
        ),
    ]);
    let mut events = docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..EventsOptions::default()
    }));
    loop {
        let id = tokio::select! {
            asked = asks.recv() => match asked {
                Some(id) => id,
                None => return,
            },
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if event.action.as_deref() == Some("start") {
                        started.store(true, Ordering::Relaxed);
                    }
                    match event.actor.and_then(|actor| actor.id) {
                        Some(id) => id,
                        None => continue,
                    }
                }
                _ => return,
            },
        };
        if let Ok(inspected) = docker.inspect_container(&id, None).await
            && let Some(container) = from_inspect(inspected)
        {
            store(container);
        }
    }
}

/// A listed container's name as the API gives it (`/web-1`): the first of its names.
pub fn listed_name(summary: &ContainerSummary) -> Option<&str> {
    summary.names.as_ref()?.first().map(String::as_str)
}

fn from_summary(summary: &ContainerSummary) -> Option<Container> {
    docker_container(
        summary.id.clone()?,
        listed_name(summary),
        summary.image.as_deref(),
        summary.labels.as_ref(),
    )
}

fn from_inspect(inspected: ContainerInspectResponse) -> Option<Container> {
    let config = inspected.config.unwrap_or_default();
    docker_container(
        inspected.id?,
        inspected.name.as_deref(),
        config.image.as_deref(),
        config.labels.as_ref(),
    )
}

/// A Docker container from the API's fields: `name` as Docker gives it (`/web-1`), labels
/// with the kubelet's pod labels when it runs a pod's container (dockershim, cri-dockerd).
fn docker_container(
    id: String,
    name: Option<&str>,
    image: Option<&str>,
    labels: Option<&HashMap<String, String>>,
) -> Option<Container> {
    if !is_container_id(&id) {
        return None;
    }
    let clean = |text: &str| sanitize_kernel_string(text.as_bytes());
    let label = |key: &str| labels.and_then(|labels| labels.get(key)).map(|v| clean(v));
    let pod = label("io.kubernetes.pod.name")
        .zip(label("io.kubernetes.pod.namespace"))
        .map(|(name, namespace)| Pod {
            namespace,
            name,
            container: label("io.kubernetes.container.name"),
        });
    Some(Container {
        runtime: Runtime::Docker,
        id,
        name: name.map(|name| clean(name.strip_prefix('/').unwrap_or(name))),
        image: image.map(clean),
        pod,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7b0095692950c3c15eb927493b46a55845f0d0cc445aac805d53a6c759eb343f";

    #[test]
    fn finds_the_container_in_the_cgroup_paths_runtimes_use() {
        // Debian's docker.io 20.10 on cgroup v1, as read here from a container's init.
        let v1 = format!("9:name=systemd:/docker/{ID}\n8:pids:/docker/{ID}\n0::/docker/{ID}\n");
        assert_eq!(container_in_cgroup(&v1), Some((Runtime::Docker, ID.into())));
        for (path, runtime) in [
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
            (
                format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
                Runtime::Containerd,
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/crio-{ID}.scope"),
                Runtime::Crio,
            ),
            (
                format!("/user.slice/user-1000.slice/libpod-{ID}.scope"),
                Runtime::Podman,
            ),
        ] {
            assert_eq!(
                container_in_cgroup(&format!("0::{path}\n")),
                Some((runtime, ID.into())),
                "{path}"
            );
        }
    }

    #[test]
    fn a_host_process_is_in_no_container() {
        for text in [
            "0::/init.scope\n",
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/docker\n",
            "0::/docker/not-an-id\n",
            "0::/system.slice/docker.service\n",
            // A container id must be the whole last component.
            &format!("0::/docker/{ID}/child\n"),
            "",
        ] {
            assert_eq!(container_in_cgroup(text), None, "{text:?}");
        }
    }

    #[test]
    fn names_come_from_docker_sanitized_with_the_pod_labels() {
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_owned(), "web-5d8f".to_owned()),
            ("io.kubernetes.pod.namespace".to_owned(), "shop".to_owned()),
            (
                "io.kubernetes.container.name".to_owned(),
                "nginx".to_owned(),
            ),
        ]);
        let container = docker_container(
            ID.into(),
            Some("/web\u{1b}[31m-1"),
            Some("nginx:1"),
            Some(&labels),
        )
        .unwrap();
        assert_eq!(container.name.as_deref(), Some("web\\x1b[31m-1"));
        assert_eq!(container.image.as_deref(), Some("nginx:1"));
        assert_eq!(
            container.pod,
            Some(Pod {
                namespace: "shop".into(),
                name: "web-5d8f".into(),
                container: Some("nginx".into()),
            })
        );
        assert_eq!(container.short_id(), "7b0095692950");
        assert_eq!(
            container.label().as_deref(),
            Some("pod shop/web-5d8f nginx (docker 7b0095692950)")
        );
        let plain = docker_container(ID.into(), Some("/web-1"), None, None).unwrap();
        assert_eq!(
            plain.label().as_deref(),
            Some("ctr web-1 (docker 7b0095692950)")
        );
        assert_eq!(
            plain.described().as_deref(),
            Some("container web-1 (docker 7b0095692950)")
        );
        assert_eq!(docker_container("short".into(), None, None, None), None);
    }

    #[test]
    fn without_a_runtime_nothing_is_asked_and_nothing_is_known() {
        let names = ContainerNames::default();
        let container = names.get(Runtime::Docker, ID);
        assert_eq!(container.name, None);
        assert_eq!(container.label(), None, "today's name stays");
        assert!(names.asked.lock().unwrap().is_empty());
        assert!(!names.take_started());
    }
}
