//! Which container a network namespace belongs to. The kernel knows namespaces by inode only;
//! `procs.rs` finds the processes in each and reads their /proc/PID/cgroup, whose path names
//! the runtime and the container id (`container_in_cgroup`). The container's name, image and
//! Kubernetes labels come from the runtime:
//! - Docker, and Podman: their Engine APIs on unix sockets (Docker's: DOCKER_HOST=unix://...
//!   or /run/docker.sock; Podman's Docker-compatible one, `podman system service`:
//!   CONTAINER_HOST=unix://... or /run/podman/podman.sock), through bollard, on a thread of
//!   their own (`ContainerNames`), so that the event path only reads a map and never waits
//!   for a daemon. Each is listed once, followed by its `start`/`rename` events, and asked
//!   for ids not seen yet. Without a runtime socket nothing is started and every name stays
//!   as it was (`pid:comm`).
//! - containerd and CRI-O: their state on disk, the OCI bundle's config.json the container
//!   was created from (`from_bundle`), found through the container's parent process: the
//!   containerd shim runs in the bundle's directory (containerd 1.6
//!   runtime/v2/shim/util.go `Command`: `cmd.Dir = bundle`), conmon is given it as
//!   `--bundle`/`-b`. CRI writes the pod's names and the image into the bundle's annotations
//!   (`io.kubernetes.cri.sandbox-name`, CRI-O: `io.kubernetes.pod.name`, ...); a container
//!   made with `ctr run` is named by its id, which its maker chose. containerd's gRPC API
//!   (the `containerd-client` crate: tonic, prost, h2) would also give the labels `ctr run
//!   --label` keeps in containerd's database, but costs a gRPC stack in the static binary
//!   for what Kubernetes, the case that matters, already writes into the bundle; a local
//!   file read, at /proc-scan time, needs no thread and no daemon.
//!
//! Verified here with Debian's docker.io 20.10 (cgroup v1 `/docker/ID` paths), podman 4.3
//! (cgroupfs: `/libpod_parent/libpod-ID`) and containerd 1.6 (`ctr run`: `/NAMESPACE/ID`).
//! The systemd paths (`docker-ID.scope`, `libpod-ID.scope`), containerd's CRI
//! (`cri-containerd-ID.scope`) and CRI-O (`crio-ID.scope`) are recognised from their
//! documented layouts; CRI-O's bundle annotations from its documented format only (no CRI-O
//! could be run here).

use std::{
    collections::{HashMap, HashSet},
    fs,
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
/// Rootful Podman's API socket (podman.socket) when CONTAINER_HOST does not name one.
const PODMAN_SOCKET: &str = "/run/podman/podman.sock";
/// The kubelet's labels on a pod's containers (Docker, Podman), which CRI-O also writes into
/// the bundle's annotations, then containerd CRI's annotations for the same (containerd
/// pkg/cri/annotations): the first one present names the pod, its namespace, the container.
const POD_NAME_KEYS: &[&str] = &["io.kubernetes.pod.name", "io.kubernetes.cri.sandbox-name"];
const POD_NAMESPACE_KEYS: &[&str] = &[
    "io.kubernetes.pod.namespace",
    "io.kubernetes.cri.sandbox-namespace",
];
const CONTAINER_NAME_KEYS: &[&str] = &[
    "io.kubernetes.container.name",
    "io.kubernetes.cri.container-name",
];
/// The image a bundle was made from: containerd CRI's annotation, CRI-O's.
const IMAGE_KEYS: &[&str] = &[
    "io.kubernetes.cri.image-name",
    "io.kubernetes.cri-o.ImageName",
];
/// containerd's longest identifier (pkg/identifiers `maxLength`).
const CONTAINERD_ID_MAX: usize = 76;
/// The Docker API version Podman 4's compatible API serves (docs.podman.io: "compatible with
/// Docker v1.40"; 4.3 answers 1.41), used as is: negotiating asks its /version, which runs
/// conmon and the OCI runtime for their versions (half a second here), so that a container's
/// first events would come before its name.
const PODMAN_API: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};
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

    /// The runtime's name in sentences.
    pub fn product(self) -> &'static str {
        match self {
            Self::Docker => "Docker",
            Self::Containerd => "containerd",
            Self::Crio => "CRI-O",
            Self::Podman => "Podman",
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
    /// What the cgroup tells: runtime and id, no names yet.
    pub fn bare(runtime: Runtime, id: String) -> Self {
        Self {
            runtime,
            id,
            name: None,
            image: None,
            pod: None,
        }
    }

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
            // systemd's driver makes `PREFIX-ID.scope`; the cgroupfs drivers `PREFIX-ID`
            // (podman: `/libpod_parent/libpod-ID`, CRI-O: `.../crio-ID`).
            let id = last.strip_prefix(prefix)?;
            Some((runtime, id.strip_suffix(".scope").unwrap_or(id)))
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

/// The id of a container `ctr run` made in containerd namespace `namespace`: its cgroup is
/// `/NAMESPACE/ID` (containerd oci/spec.go's default `CgroupsPath`). Only asked for a process
/// whose parent is a containerd shim of that namespace: such a path alone is also a host
/// service's (`/system.slice/cron.service`).
fn containerd_in_cgroup(text: &str, namespace: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let mut components = path.rsplit('/');
        let id = components.next()?;
        (components.next() == Some(namespace) && is_containerd_id(id)).then(|| id.to_owned())
    })
}

/// A containerd identifier (pkg/identifiers: letters and digits, single `.`, `_` or `-`
/// between them, at most 76 characters): what `ctr run ... ID` accepts.
fn is_containerd_id(id: &str) -> bool {
    let separator = |b: u8| matches!(b, b'.' | b'_' | b'-');
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= CONTAINERD_ID_MAX
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || separator(b))
        && !separator(bytes[0])
        && !separator(bytes[bytes.len() - 1])
        && !bytes
            .windows(2)
            .any(|pair| separator(pair[0]) && separator(pair[1]))
}

/// The parent a container's processes are children of, as far as it tells where the
/// container's OCI bundle is.
#[derive(Debug, PartialEq, Eq)]
enum Supervisor {
    /// `containerd-shim-runc-v2 -namespace NS -id ID -address A`, running in its container's
    /// bundle directory, `.../NS/ID` (for a pod's shared shim, the pod sandbox's; the pod's
    /// containers' bundles are beside it).
    ContainerdShim { namespace: String, cwd: PathBuf },
    /// conmon (CRI-O, Podman), given the bundle as `--bundle`/`-b`.
    Conmon { bundle: PathBuf },
}

impl Supervisor {
    /// From the parent's command line and working directory.
    fn new(args: &[String], cwd: Option<PathBuf>) -> Option<Self> {
        let program = Path::new(args.first()?).file_name()?.to_str()?;
        let value = |flags: &[&str]| {
            args.windows(2)
                .find(|pair| flags.contains(&pair[0].as_str()))
                .map(|pair| pair[1].clone())
        };
        if program.starts_with("containerd-shim") {
            Some(Self::ContainerdShim {
                namespace: value(&["-namespace", "--namespace"])?,
                cwd: cwd?,
            })
        } else if program == "conmon" {
            Some(Self::Conmon {
                bundle: PathBuf::from(value(&["--bundle", "-b"])?),
            })
        } else {
            None
        }
    }

    /// The bundle directory of container `id`.
    fn bundle(&self, id: &str) -> Option<PathBuf> {
        match self {
            Self::ContainerdShim { cwd, .. } => Some(cwd.parent()?.join(id)),
            Self::Conmon { bundle } => Some(bundle.clone()),
        }
    }

    /// The parent of process `dir` (/proc/PID), if it is one.
    fn of(proc_root: &Path, dir: &Path) -> Option<Self> {
        // /proc/PID/stat: `pid (comm) state ppid ...`; comm may hold spaces and parentheses,
        // so the fields are counted after its last `)` (fs/proc/array.c `do_task_stat`).
        let stat = fs::read_to_string(dir.join("stat")).ok()?;
        let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
        let parent = proc_root.join(ppid);
        let cmdline = fs::read(parent.join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        Self::new(&args, fs::read_link(parent.join("cwd")).ok())
    }
}

/// The container process `pid` under `proc_root` runs in, if any: runtime and id from its
/// cgroup, and for containerd and CRI-O what their bundle's config.json says (Docker's and
/// Podman's names come from their APIs, `ContainerNames`).
pub fn container_of(proc_root: &Path, pid: u32) -> Option<Container> {
    let dir = proc_root.join(pid.to_string());
    let cgroup = fs::read_to_string(dir.join("cgroup")).ok()?;
    let found = container_in_cgroup(&cgroup);
    if let Some((runtime, id)) = &found
        && matches!(runtime, Runtime::Docker | Runtime::Podman)
    {
        return Some(Container::bare(*runtime, id.clone()));
    }
    let supervisor = Supervisor::of(proc_root, &dir);
    let (runtime, id) = match (found, &supervisor) {
        (Some(found), _) => found,
        (None, Some(Supervisor::ContainerdShim { namespace, .. })) => (
            Runtime::Containerd,
            containerd_in_cgroup(&cgroup, namespace)?,
        ),
        (None, _) => return None,
    };
    let config = supervisor
        .and_then(|supervisor| supervisor.bundle(&id))
        .and_then(|bundle| fs::read(bundle.join("config.json")).ok());
    Some(match config {
        Some(config) => from_bundle(runtime, id, &config),
        None => Container::bare(runtime, id),
    })
}

/// A runtime's labels or annotations, read sanitized (all of it is untrusted text).
struct Described<'a>(Option<&'a HashMap<String, String>>);

impl<'a> Described<'a> {
    fn new(labels: Option<&'a HashMap<String, String>>) -> Self {
        Self(labels)
    }

    /// The value of the first of `keys` present.
    fn value(&self, keys: &[&str]) -> Option<String> {
        let labels = self.0?;
        keys.iter()
            .find_map(|key| labels.get(*key))
            .map(|value| sanitize_kernel_string(value.as_bytes()))
    }

    fn pod(&self) -> Option<Pod> {
        Some(Pod {
            name: self.value(POD_NAME_KEYS)?,
            namespace: self.value(POD_NAMESPACE_KEYS)?,
            container: self.value(CONTAINER_NAME_KEYS),
        })
    }
}

/// What an OCI bundle's config.json tells udptrace: its annotations.
#[derive(Deserialize)]
struct BundleConfig {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// Container `id` of `runtime` as its bundle's config.json (`config`) describes it: the pod's
/// names and the image from CRI's annotations; a container without them (`ctr run`) is named
/// by its containerd id, which its maker chose. A config that does not parse names nothing.
fn from_bundle(runtime: Runtime, id: String, config: &[u8]) -> Container {
    let annotations = serde_json::from_slice::<BundleConfig>(config)
        .map(|config| config.annotations)
        .unwrap_or_default();
    let described = Described::new(Some(&annotations));
    let name = described.value(CONTAINER_NAME_KEYS).or_else(|| {
        (runtime == Runtime::Containerd).then(|| sanitize_kernel_string(id.as_bytes()))
    });
    Container {
        runtime,
        name,
        image: described.value(IMAGE_KEYS),
        pod: described.pod(),
        id,
    }
}

/// Container metadata learnt from the runtimes' APIs, filled by a background thread.
#[derive(Default)]
pub struct ContainerNames {
    known: Arc<Mutex<HashMap<String, Container>>>,
    /// Ids to look up, by the runtime whose API is asked; empty when no runtime socket
    /// exists (nothing runs, nothing waits).
    asks: Vec<(Runtime, tokio::sync::mpsc::UnboundedSender<String>)>,
    asked: Mutex<HashSet<String>>,
    /// Set when Docker or Podman reported a container start: a new namespace, whose first
    /// events may come before /proc's next scan would be allowed (`procs.rs`), so it is
    /// allowed at once.
    started: Arc<AtomicBool>,
}

impl ContainerNames {
    /// Starts following the Docker daemon on `docker_socket` (else the one DOCKER_HOST or
    /// /run/docker.sock names) and Podman's API (`podman_socket`), those whose socket exists.
    pub fn connect(docker_socket: Option<&Path>) -> Self {
        let apis: Vec<(Runtime, PathBuf)> = api_sockets(docker_socket)
            .into_iter()
            .filter(|(_, socket)| socket.exists())
            .collect();
        if apis.is_empty() {
            return Self::default();
        }
        let known = Arc::default();
        let started = Arc::<AtomicBool>::default();
        let mut asks = Vec::new();
        let mut followers = Vec::new();
        for (runtime, socket) in apis {
            let (ask, requests) = tokio::sync::mpsc::unbounded_channel();
            asks.push((runtime, ask));
            followers.push((runtime, socket, requests));
        }
        let filler = Arc::clone(&known);
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
                let follows = followers.into_iter().map(|(runtime, socket, requests)| {
                    follow_api(runtime, socket, Arc::clone(&filler), requests, &starts)
                });
                runtime.block_on(futures_util::future::join_all(follows));
            });
        Self {
            known,
            asks: if spawned.is_ok() { asks } else { Vec::new() },
            asked: Mutex::default(),
            started,
        }
    }

    /// Whether a container started since the last call.
    pub fn take_started(&self) -> bool {
        self.started.swap(false, Ordering::Relaxed)
    }

    /// What is known of container `seen` (as /proc showed it) now: its runtime's API's
    /// answer, else `seen`; an id its runtime's API has not told is asked for (once) and
    /// known a few milliseconds later.
    pub fn named(&self, seen: Container) -> Container {
        let known = self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&seen.id)
            .cloned();
        known.unwrap_or_else(|| {
            if let Some((_, asks)) = self.asks.iter().find(|(api, _)| *api == seen.runtime)
                && self
                    .asked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(seen.id.clone())
            {
                let _ = asks.send(seen.id.clone());
            }
            seen
        })
    }
}

/// The runtimes whose Docker-compatible API names containers, with their sockets: Docker's
/// (`docker_socket`), Podman's (`podman_socket`).
pub fn api_sockets(docker_socket: Option<&Path>) -> [(Runtime, PathBuf); 2] {
    [
        (Runtime::Docker, self::docker_socket(docker_socket)),
        (Runtime::Podman, podman_socket()),
    ]
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

/// Podman's API socket: the one CONTAINER_HOST (`unix://PATH`, as podman's remote client
/// reads it) names, else rootful Podman's /run/podman/podman.sock.
pub fn podman_socket() -> PathBuf {
    std::env::var("CONTAINER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(PODMAN_SOCKET))
}

/// A client of `runtime`'s Docker-compatible API on `socket`, speaking its API version.
pub async fn connect_api(
    runtime: Runtime,
    socket: &Path,
) -> Result<Docker, bollard::errors::Error> {
    let path = socket.to_string_lossy();
    if runtime == Runtime::Podman {
        return Docker::connect_with_unix(&path, API_TIMEOUT_SECS, &PODMAN_API);
    }
    let docker = Docker::connect_with_unix(&path, API_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)?;
    // Debian's docker.io 20.10 speaks API 1.41, older than bollard's default.
    docker.negotiate_version().await
}

/// One API of `ContainerNames` (Docker's, or Podman's with the same shape): every running
/// container, then each one that starts (noted in `started`) or is renamed, and each id asked
/// for. Ends (names stay as they are) when the daemon does not answer.
async fn follow_api(
    runtime: Runtime,
    socket: PathBuf,
    known: Arc<Mutex<HashMap<String, Container>>>,
    mut asks: tokio::sync::mpsc::UnboundedReceiver<String>,
    started: &AtomicBool,
) {
    let Ok(docker) = connect_api(runtime, &socket).await else {
        return;
    };
    let store = |container: Container| {
        known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(container.id.clone(), container);
    };
    if let Ok(list) = docker.list_containers(None).await {
        list.iter()
            .filter_map(|summary| from_summary(runtime, summary))
            .for_each(store);
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
            && let Some(container) = from_inspect(runtime, inspected)
        {
            store(container);
        }
    }
}

/// A listed container's name as the API gives it (`/web-1`): the first of its names.
pub fn listed_name(summary: &ContainerSummary) -> Option<&str> {
    summary.names.as_ref()?.first().map(String::as_str)
}

fn from_summary(runtime: Runtime, summary: &ContainerSummary) -> Option<Container> {
    api_container(
        runtime,
        summary.id.clone()?,
        listed_name(summary),
        summary.image.as_deref(),
        summary.labels.as_ref(),
    )
}

fn from_inspect(runtime: Runtime, inspected: ContainerInspectResponse) -> Option<Container> {
    let config = inspected.config.unwrap_or_default();
    api_container(
        runtime,
        inspected.id?,
        inspected.name.as_deref(),
        config.image.as_deref(),
        config.labels.as_ref(),
    )
}

/// A container from the Docker API's fields (Docker's or Podman's): `name` as the API gives
/// it (`/web-1`), labels with the kubelet's pod labels when it runs a pod's container
/// (dockershim, cri-dockerd; `podman run --label`, `podman kube play`).
fn api_container(
    runtime: Runtime,
    id: String,
    name: Option<&str>,
    image: Option<&str>,
    labels: Option<&HashMap<String, String>>,
) -> Option<Container> {
    if !is_container_id(&id) {
        return None;
    }
    let clean = |text: &str| sanitize_kernel_string(text.as_bytes());
    Some(Container {
        runtime,
        id,
        name: name.map(|name| clean(name.strip_prefix('/').unwrap_or(name))),
        image: image.map(clean),
        pod: Described::new(labels).pod(),
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
            // The cgroupfs drivers: podman 4.3 here (`--cgroup-manager cgroupfs`), CRI-O.
            (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman),
            (
                format!("/kubepods/besteffort/pod0e2c6a7b/crio-{ID}"),
                Runtime::Crio,
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
        let container = api_container(
            Runtime::Docker,
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
        let plain = api_container(Runtime::Podman, ID.into(), Some("/web-1"), None, None).unwrap();
        assert_eq!(
            plain.label().as_deref(),
            Some("ctr web-1 (podman 7b0095692950)")
        );
        assert_eq!(
            plain.described().as_deref(),
            Some("container web-1 (podman 7b0095692950)")
        );
        assert_eq!(
            api_container(Runtime::Docker, "short".into(), None, None, None),
            None
        );
    }

    #[test]
    fn a_ctr_run_container_is_its_shims_namespace_and_id() {
        let v1 = "9:name=systemd:/default/rt-web\n4:memory:/default/rt-web\n0::/\n";
        assert_eq!(containerd_in_cgroup(v1, "default"), Some("rt-web".into()));
        // Another namespace's shim, or a host service's path: not a container.
        assert_eq!(containerd_in_cgroup(v1, "k8s.io"), None);
        assert_eq!(
            containerd_in_cgroup("0::/system.slice/cron.service\n", "default"),
            None
        );
        for good in ["rt-web", "a", "web.1_x-2", ID] {
            assert!(is_containerd_id(good), "{good}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "we--b",
            "we b",
            "wéb",
            "a".repeat(77).as_str(),
        ] {
            assert!(!is_containerd_id(bad), "{bad}");
        }
    }

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn the_parent_tells_where_the_bundle_is() {
        let shim = Supervisor::new(
            &args("/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id SANDBOX -address /run/containerd/containerd.sock"),
            Some(PathBuf::from("/run/containerd/io.containerd.runtime.v2.task/k8s.io/SANDBOX")),
        )
        .unwrap();
        assert_eq!(
            shim.bundle(ID),
            Some(PathBuf::from(format!(
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}"
            )))
        );
        let conmon = Supervisor::new(
            &args(&format!("/usr/bin/conmon --api-version 1 -c {ID} -u {ID} -r /usr/sbin/runc -b /run/containers/storage/overlay-containers/{ID}/userdata -p /run/pid")),
            None,
        )
        .unwrap();
        assert_eq!(
            conmon.bundle(ID),
            Some(PathBuf::from(format!(
                "/run/containers/storage/overlay-containers/{ID}/userdata"
            )))
        );
        assert_eq!(Supervisor::new(&args("/bin/sh -c true"), None), None);
        // A shim without its namespace, or whose directory is unreadable: not usable.
        assert_eq!(
            Supervisor::new(&args("containerd-shim-runc-v2 -id x"), Some("/".into())),
            None
        );
        assert_eq!(
            Supervisor::new(&args("containerd-shim-runc-v2 -namespace default"), None),
            None
        );
    }

    #[test]
    fn bundles_name_cri_containers_by_their_annotations() {
        let crio = from_bundle(
            Runtime::Crio,
            ID.into(),
            include_bytes!("../tests/fixtures/bundles/crio-config.json"),
        );
        assert_eq!(crio.name.as_deref(), Some("coredns"));
        assert_eq!(
            crio.image.as_deref(),
            Some("registry.k8s.io/coredns/coredns:v1.10.1")
        );
        assert_eq!(
            crio.label().as_deref(),
            Some("pod kube-system/coredns-5d78c9869d-q7kzt coredns (crio 7b0095692950)")
        );
        let cri = from_bundle(
            Runtime::Containerd,
            ID.into(),
            include_bytes!("../tests/fixtures/bundles/containerd-cri-config.json"),
        );
        assert_eq!(
            cri.pod,
            Some(Pod {
                namespace: "shop".into(),
                name: "web-7c9d8f6b5-x2x4p".into(),
                container: Some("nginx".into()),
            })
        );
        assert_eq!(cri.image.as_deref(), Some("docker.io/library/nginx:1.25"));
        // `ctr run` without annotations: named by the id its maker chose, escaped.
        let ctr = from_bundle(
            Runtime::Containerd,
            "rt-web".into(),
            br#"{"ociVersion":"1.0.2"}"#,
        );
        assert_eq!(
            ctr.label().as_deref(),
            Some("ctr rt-web (containerd rt-web)")
        );
        let hostile = from_bundle(
            Runtime::Crio,
            ID.into(),
            br#"{"annotations":{"io.kubernetes.container.name":"x\u001b[2J"}}"#,
        );
        assert_eq!(hostile.name.as_deref(), Some("x\\x1b[2J"));
        // Not JSON, or annotations of the wrong shape: nothing named, no panic.
        for bad in [&b"{"[..], br#"{"annotations":[1]}"#, b"\xff"] {
            let container = from_bundle(Runtime::Crio, ID.into(), bad);
            assert_eq!(container, Container::bare(Runtime::Crio, ID.into()));
        }
    }

    /// `container_of` on a /proc stand-in: a `ctr run` container's init under its shim,
    /// whose working directory is the bundle.
    #[test]
    fn a_containerd_container_is_found_through_its_shim() {
        let root = std::env::temp_dir().join(format!("udptrace-bundle-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let bundle = root.join("task/default/rt-web");
        fs::create_dir_all(&bundle).unwrap();
        fs::write(
            bundle.join("config.json"),
            br#"{"annotations":{"io.kubernetes.pod.name":"web","io.kubernetes.pod.namespace":"shop"}}"#,
        )
        .unwrap();
        let proc_root = root.join("proc");
        fs::create_dir_all(proc_root.join("10")).unwrap();
        fs::create_dir_all(proc_root.join("20")).unwrap();
        fs::write(
            proc_root.join("10/cmdline"),
            b"/usr/bin/containerd-shim-runc-v2\0-namespace\0default\0-id\0rt-web\0",
        )
        .unwrap();
        std::os::unix::fs::symlink(&bundle, proc_root.join("10/cwd")).unwrap();
        fs::write(proc_root.join("20/stat"), b"20 (s h) (x) S 10 20 20 0").unwrap();
        fs::write(proc_root.join("20/cgroup"), b"4:memory:/default/rt-web\n").unwrap();
        let found = container_of(&proc_root, 20);
        // A host process: its parent is no shim.
        fs::write(proc_root.join("20/stat"), b"20 (sh) S 1 20 20 0").unwrap();
        let host = container_of(&proc_root, 20);
        fs::remove_dir_all(&root).unwrap();
        let found = found.unwrap();
        assert_eq!(found.runtime, Runtime::Containerd);
        assert_eq!(found.id, "rt-web");
        assert_eq!(
            found.label().as_deref(),
            Some("pod shop/web (containerd rt-web)")
        );
        assert_eq!(host, None);
    }

    #[test]
    fn without_a_runtime_nothing_is_asked_and_nothing_is_known() {
        let names = ContainerNames::default();
        let container = names.named(Container::bare(Runtime::Docker, ID.into()));
        assert_eq!(container.name, None);
        assert_eq!(container.label(), None, "today's name stays");
        assert!(names.asked.lock().unwrap().is_empty());
        assert!(!names.take_started());
    }
}
