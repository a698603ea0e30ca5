//! `--container NAME|ID` and `--pod NAMESPACE/NAME`: only events in those containers' network
//! namespaces, selected in the kernel like `--netns` (`Selectors::netns_set` and the
//! `SELECTED_NETNS` map, udptrace-ebpf/src/emit.rs). The kernel knows a namespace by its inode
//! only: a running container's is the inode of /proc/PID/ns/net of its first process (the
//! Docker API's `State.Pid`). A container that restarts gets a new namespace, so a thread of
//! its own follows Docker's `start` and `die` events and keeps the map current while the
//! programs run; a restarted container's events are shown from the moment its new inode is in
//! the map, milliseconds after Docker reported the start.
//!
//! Docker's API is the one asked, as for names (containers.rs), else Podman's, whose
//! Docker-compatible API has the same shape (`State.Pid`, labels, `start`/`die` events): the
//! first runtime that knows every wanted container is followed. A pod is the set of
//! containers carrying the kubelet's labels `io.kubernetes.pod.namespace` and
//! `io.kubernetes.pod.name` (dockershim, cri-dockerd, `podman run --label`).
//!
//! When no such API answers, or none knows every wanted container, containerd's and CRI-O's
//! running containers are looked for in /proc (`scan_proc`): each process outside the host's
//! namespace is read as `procs.rs` reads it for names (`containers::container_of`: cgroup,
//! parent shim or conmon, the bundle's config.json with CRI's pod annotations). Neither has an
//! event API udptrace speaks (containerd's is gRPC, which this binary does not carry;
//! containers.rs says why), so a restart is followed by scanning /proc again every
//! `PROC_RESCAN` on this thread, off the event path: a restarted container's events are shown
//! from the next scan on. Nothing here runs unless one of the options is given.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use aya::maps::{HashMap as BpfHashMap, MapData};
use bollard::{
    Docker,
    models::{ContainerInspectResponse, ContainerSummary},
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures_util::StreamExt as _;
use tokio::sync::oneshot;

use crate::{
    containers::{
        Container, Runtime, SHORT_ID, api_sockets, connect_api, container_of, listed_name,
    },
    render::note,
    sanitize::sanitize_kernel_string,
};

/// The kubelet's labels on a pod's containers.
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
/// Longest start-up waits for Docker's answers: bollard's own timeouts (5 s a request) end a
/// silent daemon's requests well before.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often containerd's and CRI-O's containers are looked for again in /proc: a scan reads a
/// few small files per process outside the host's namespace (milliseconds here); the next one
/// starts this long after the last ended, so the thread never takes more than a sliver of a CPU.
pub const PROC_RESCAN: Duration = Duration::from_secs(1);
/// What containerd's and CRI-O's containers are listed with, for messages.
const PROC_LISTERS: &str = "`ctr -n NAMESPACE task ls`, `crictl ps`";

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// `--container`: a name as `docker ps` shows it, an id, or the start of an id.
    Container(String),
    /// `--pod NAMESPACE/NAME`.
    Pod { namespace: String, name: String },
}

impl Wanted {
    /// `--container`'s value.
    pub fn parse_container(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty: give a container's name or id (`docker ps` shows both)".into());
        }
        Ok(Self::Container(text.to_owned()))
    }

    /// `--pod`'s value.
    pub fn parse_pod(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Self::Pod {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!(
                "`{}` is not NAMESPACE/NAME (a pod's namespace and name, as in `kubectl get pod -n NAMESPACE NAME`)",
                sanitize_kernel_string(text.as_bytes())
            )),
        }
    }

    /// The option as the user wrote it, for messages.
    fn shown(&self) -> String {
        let shown = match self {
            Self::Container(word) => format!("--container {word}"),
            Self::Pod { namespace, name } => format!("--pod {namespace}/{name}"),
        };
        sanitize_kernel_string(shown.as_bytes())
    }

    /// Whether a container Docker reports while udptrace runs is one asked for: by name (a
    /// container removed and made again under its name is the one meant) or by pod labels.
    /// Ids are followed as `Selected::by_id`.
    fn follows(&self, candidate: &Candidate) -> bool {
        match self {
            Self::Container(word) => candidate.name == *word,
            Self::Pod { namespace, name } => candidate.in_pod(namespace, name),
        }
    }

    /// The containers of `all` (found in `source`) this asks for, as Docker resolves a
    /// container's name or id: an exact name or id first, else a unique start of an id.
    fn choose<'a>(
        &self,
        source: Source,
        all: &'a [Candidate],
    ) -> Result<Vec<&'a Candidate>, String> {
        match self {
            Self::Container(word) => {
                if let Some(exact) = all.iter().find(|c| c.name == *word || c.id == *word) {
                    return Ok(vec![exact]);
                }
                let by_prefix: Vec<&Candidate> = all
                    .iter()
                    .filter(|c| c.id.starts_with(word.as_str()))
                    .collect();
                match by_prefix.len() {
                    0 => Err(source.unknown()),
                    1 => Ok(by_prefix),
                    n => Err(format!(
                        "{n} containers' ids start so: give more of the id, or the name"
                    )),
                }
            }
            Self::Pod { namespace, name } => {
                let members: Vec<&Candidate> =
                    all.iter().filter(|c| c.in_pod(namespace, name)).collect();
                if members.is_empty() {
                    return Err(format!(
                        "no container carries the kubelet's labels {POD_NAMESPACE_LABEL}={namespace} and {POD_NAME_LABEL}={name}"
                    ));
                }
                Ok(members)
            }
        }
    }
}

/// Where the containers chosen from were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Docker's or Podman's API: every container, running or not.
    Api(Runtime),
    /// /proc: containerd's and CRI-O's running containers.
    Proc,
}

impl Source {
    /// Why a name or id matched nothing.
    fn unknown(self) -> String {
        match self {
            Self::Api(runtime) => format!(
                "{} knows no container by that name or id (`{} ps -a` lists them)",
                runtime.product(),
                runtime.name()
            ),
            Self::Proc => format!(
                "no running containerd or CRI-O container has that name or id (looked for in \
                 /proc; {PROC_LISTERS} list them)"
            ),
        }
    }
}

/// What choosing a container needs to know of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    runtime: Runtime,
    id: String,
    /// As `docker ps` shows it (the API's `/NAME` without the slash).
    name: String,
    labels: HashMap<String, String>,
}

impl Candidate {
    fn new(
        runtime: Runtime,
        id: String,
        name: Option<&str>,
        labels: Option<&HashMap<String, String>>,
    ) -> Self {
        let name = name.unwrap_or_default();
        Self {
            runtime,
            id,
            name: name.strip_prefix('/').unwrap_or(name).to_owned(),
            labels: labels.cloned().unwrap_or_default(),
        }
    }

    fn from_summary(runtime: Runtime, summary: &ContainerSummary) -> Option<Self> {
        Some(Self::new(
            runtime,
            summary.id.clone()?,
            listed_name(summary),
            summary.labels.as_ref(),
        ))
    }

    fn from_inspect(runtime: Runtime, inspected: &ContainerInspectResponse) -> Option<Self> {
        Some(Self::new(
            runtime,
            inspected.id.clone()?,
            inspected.name.as_deref(),
            inspected.config.as_ref().and_then(|c| c.labels.as_ref()),
        ))
    }

    /// A containerd or CRI-O container as /proc showed it (`container_of`): its pod as the
    /// kubelet's labels, whichever annotations (CRI-O's or containerd CRI's) named it. Its
    /// text is sanitized already; matching the user's words against it is exact for names
    /// without control characters, which is what runtimes accept.
    fn from_proc(container: Container) -> Self {
        let labels = container.pod.map(|pod| {
            HashMap::from([
                (POD_NAMESPACE_LABEL.to_owned(), pod.namespace),
                (POD_NAME_LABEL.to_owned(), pod.name),
            ])
        });
        let name = container.name.unwrap_or_else(|| container.id.clone());
        Self::new(
            container.runtime,
            container.id,
            Some(&name),
            labels.as_ref(),
        )
    }

    fn in_pod(&self, namespace: &str, name: &str) -> bool {
        self.labels.get(POD_NAMESPACE_LABEL).map(String::as_str) == Some(namespace)
            && self.labels.get(POD_NAME_LABEL).map(String::as_str) == Some(name)
    }

    /// `NAME (RUNTIME SHORT-ID)`, sanitized.
    fn shown(&self) -> String {
        format!(
            "{} ({} {})",
            sanitize_kernel_string(self.name.as_bytes()),
            self.runtime.name(),
            self.id.get(..SHORT_ID).unwrap_or(&self.id)
        )
    }
}

/// Where a container's traffic is, for the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place {
    /// A network namespace of its own (or shared with its pod), by inode.
    Netns(u32),
    /// `--network host`: the host's namespace, shared with everything else on the host.
    Host,
    /// No namespace: the container does not run (Docker's status: exited, created, ...).
    Stopped(String),
}

/// Where the inspected container's traffic is now.
fn place_of(inspected: &ContainerInspectResponse) -> Place {
    let host_mode = inspected
        .host_config
        .as_ref()
        .and_then(|config| config.network_mode.as_deref())
        == Some("host");
    if host_mode {
        return Place::Host;
    }
    let state = inspected.state.as_ref();
    let status = state
        .and_then(|s| s.status)
        .map_or_else(|| "not running".to_owned(), |s| s.to_string());
    let pid = state
        .filter(|s| s.running == Some(true))
        .and_then(|s| s.pid)
        .filter(|pid| *pid > 0);
    let Some(inode) = pid.and_then(|pid| netns_inode(format!("/proc/{pid}/ns/net"))) else {
        return Place::Stopped(status);
    };
    // Another way into the host's namespace (`--network container:X` of a host-network
    // container); the daemon itself may run elsewhere, as the lab's does.
    if netns_inode("/proc/self/ns/net") == Some(inode) {
        return Place::Host;
    }
    Place::Netns(inode)
}

fn netns_inode(path: impl AsRef<Path>) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// containerd's and CRI-O's containers running under `proc_root` in network namespaces other
/// than the host's (udptrace's and PID 1's), each with its namespace's inode. Docker's and
/// Podman's are left to their APIs, which name them. Work is bounded by the processes outside
/// the host's namespace: one `container_of` per distinct (namespace, cgroup), so a container's
/// many processes cost one bundle read.
fn scan_proc(proc_root: &Path) -> Vec<(Candidate, u32)> {
    let hosts: Vec<u32> = ["self/ns/net", "1/ns/net"]
        .iter()
        .filter_map(|link| netns_inode(proc_root.join(link)))
        .collect();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut looked_at = HashSet::new();
    let mut found: HashMap<String, (Candidate, u32)> = HashMap::new();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        let Some(inode) = netns_inode(dir.join("ns/net")) else {
            continue;
        };
        if hosts.contains(&inode) {
            continue;
        }
        let Ok(cgroup) = std::fs::read_to_string(dir.join("cgroup")) else {
            continue;
        };
        if !looked_at.insert((inode, cgroup)) {
            continue;
        }
        if let Some(container) = container_of(proc_root, pid)
            && matches!(container.runtime, Runtime::Containerd | Runtime::Crio)
        {
            found
                .entry(container.id.clone())
                .or_insert_with(|| (Candidate::from_proc(container), inode));
        }
    }
    let mut found: Vec<(Candidate, u32)> = found.into_values().collect();
    found.sort_by(|a, b| a.0.id.cmp(&b.0.id));
    found
}

/// Chooses the `wanted` containers among those /proc shows (`scan_proc`); the ids chosen by
/// id are kept so that `follow_proc` knows them again (by name is by name).
fn resolve_proc(proc_root: &Path, wanted: &[Wanted]) -> anyhow::Result<(ProcSelection, Vec<u32>)> {
    let running = scan_proc(proc_root);
    let candidates: Vec<Candidate> = running.iter().map(|(c, _)| c.clone()).collect();
    let mut ids = HashSet::new();
    for one in wanted {
        let chosen = one
            .choose(Source::Proc, &candidates)
            .map_err(|e| anyhow!("{}: {e}", one.shown()))?;
        ids.extend(chosen.into_iter().map(|c| c.id.clone()));
    }
    let selection = ProcSelection {
        wanted: wanted.to_vec(),
        ids,
    };
    let inodes = selection.inodes(&running);
    Ok((selection, inodes))
}

/// The containerd and CRI-O containers asked for: by the user's words, and by the ids they
/// resolved to at start.
struct ProcSelection {
    wanted: Vec<Wanted>,
    ids: HashSet<String>,
}

impl ProcSelection {
    /// The namespaces of the wanted containers among `running`, sorted.
    fn inodes(&self, running: &[(Candidate, u32)]) -> Vec<u32> {
        let mut inodes: Vec<u32> = running
            .iter()
            .filter(|(candidate, _)| {
                self.ids.contains(&candidate.id) || self.wanted.iter().any(|w| w.follows(candidate))
            })
            .map(|(_, inode)| *inode)
            .collect();
        inodes.sort_unstable();
        inodes.dedup();
        inodes
    }
}

/// The selected containers' namespaces, by container id (`None`: it does not run now).
/// Containers of one pod share a namespace: it stays selected while any of them runs.
#[derive(Debug, Default)]
struct Selected {
    by_id: HashMap<String, Option<u32>>,
    wanted: Vec<Wanted>,
}

/// What the map must do after a change: an inode to add, one to remove.
#[derive(Debug, Default, PartialEq, Eq)]
struct Change {
    add: Option<u32>,
    remove: Option<u32>,
}

impl Selected {
    fn wants(&self, candidate: &Candidate) -> bool {
        self.by_id.contains_key(&candidate.id) || self.wanted.iter().any(|w| w.follows(candidate))
    }

    /// Records where container `id` is now.
    fn set(&mut self, id: &str, inode: Option<u32>) -> Change {
        let old = self.by_id.insert(id.to_owned(), inode).flatten();
        if old == inode {
            return Change::default();
        }
        let still_used = |inode: u32| self.by_id.values().any(|v| *v == Some(inode));
        Change {
            add: inode,
            remove: old.filter(|old| !still_used(*old)),
        }
    }

    fn inodes(&self) -> Vec<u32> {
        let mut inodes: Vec<u32> = self.by_id.values().flatten().copied().collect();
        inodes.sort_unstable();
        inodes.dedup();
        inodes
    }
}

/// The namespaces resolved at start-up, with the thread that will follow Docker's events once
/// it has the map.
pub struct ContainerSelection {
    inodes: Vec<u32>,
    map: oneshot::Sender<(BpfHashMap<MapData, u32, u32>, oneshot::Receiver<()>)>,
}

/// Following Docker's events; dropping it ends the thread.
pub struct Following {
    _stop: oneshot::Sender<()>,
}

impl ContainerSelection {
    /// Asks Docker (`socket`, else DOCKER_HOST's or /run/docker.sock), else Podman
    /// (CONTAINER_HOST's or /run/podman/podman.sock), where the wanted containers' traffic is;
    /// when neither answers or knows them all, looks for containerd's and CRI-O's running
    /// containers in /proc. A clear error when none knows them, a container is not running, or
    /// shares the host's namespace.
    pub fn resolve(wanted: &[Wanted], socket: Option<&Path>) -> anyhow::Result<Self> {
        let shown = wanted
            .iter()
            .map(Wanted::shown)
            .collect::<Vec<_>>()
            .join(" ");
        let [(_, docker), (_, podman)] = api_sockets(socket);
        let apis: Vec<(Runtime, PathBuf)> = api_sockets(socket)
            .into_iter()
            .filter(|(_, socket)| socket.exists())
            .collect();
        let no_api = apis.is_empty().then(|| {
            format!(
                "no Docker or Podman API to ask: {} does not exist (DOCKER_HOST=unix://PATH \
                 names another socket), nor {} (Podman's; CONTAINER_HOST=unix://PATH)",
                docker.display(),
                podman.display()
            )
        });
        let (ready, answer) = mpsc::channel();
        let (map, map_rx) = oneshot::channel();
        let wanted = wanted.to_vec();
        std::thread::Builder::new()
            .name("container-filter".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready.send(Err(anyhow!(error)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    // Events from here on are replayed to the follower, so that a container
                    // restarting while the first answers come is not missed.
                    let since = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    // The first runtime that knows them all; else what each said.
                    let mut errors: Vec<String> = no_api.into_iter().collect();
                    for (runtime, socket) in apis {
                        match resolve(runtime, &socket, wanted.clone()).await {
                            Ok((docker, selected)) => {
                                if ready.send(Ok(selected.inodes())).is_err() {
                                    return;
                                }
                                if let Ok((map, stop)) = map_rx.await {
                                    follow(runtime, &docker, selected, map, since, stop).await;
                                }
                                return;
                            }
                            Err(error) => errors.push(format!("{error:#}")),
                        }
                    }
                    let proc_root = Path::new("/proc");
                    match resolve_proc(proc_root, &wanted) {
                        Ok((selection, inodes)) => {
                            if ready.send(Ok(inodes.clone())).is_err() {
                                return;
                            }
                            if let Ok((map, stop)) = map_rx.await {
                                follow_proc(proc_root, &selection, inodes, map, stop).await;
                            }
                        }
                        Err(error) => {
                            errors.push(format!("{error:#}"));
                            let _ = ready.send(Err(anyhow!(errors.join("; "))));
                        }
                    }
                });
            })
            .context("starting the container filter's thread")?;
        let inodes = answer
            .recv_timeout(RESOLVE_TIMEOUT)
            .map_err(|_| {
                anyhow!("{shown}: the container runtime did not answer within {RESOLVE_TIMEOUT:?}")
            })?
            .with_context(|| shown.clone())?;
        Ok(Self { inodes, map })
    }

    /// The network namespace inodes selected now.
    pub fn inodes(&self) -> &[u32] {
        &self.inodes
    }

    /// Writes the namespaces into the programs' map and hands it to the thread, which keeps
    /// it current as containers stop and start.
    pub fn install(self, mut map: BpfHashMap<MapData, u32, u32>) -> anyhow::Result<Following> {
        for inode in &self.inodes {
            map.insert(inode, 1, 0)
                .with_context(|| format!("selecting network namespace {inode}"))?;
        }
        let (stop, stopped) = oneshot::channel();
        // A thread that already ended (it cannot have: it waits for this) leaves the map as
        // written.
        let _ = self.map.send((map, stopped));
        Ok(Following { _stop: stop })
    }
}

/// Lists `runtime`'s containers (its API on `socket`), chooses the wanted ones and finds
/// their namespaces.
async fn resolve(
    runtime: Runtime,
    socket: &Path,
    wanted: Vec<Wanted>,
) -> anyhow::Result<(Docker, Selected)> {
    let product = runtime.product();
    let docker = connect_api(runtime, socket)
        .await
        .with_context(|| format!("{product} does not answer on {}", socket.display()))?;
    let all: Vec<Candidate> = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            ..ListContainersOptions::default()
        }))
        .await
        .with_context(|| format!("listing {product}'s containers on {}", socket.display()))?
        .into_iter()
        .filter_map(|summary| Candidate::from_summary(runtime, &summary))
        .collect();
    let mut selected = Selected::default();
    for one in &wanted {
        let chosen = one
            .choose(Source::Api(runtime), &all)
            .map_err(|e| anyhow!("{}: {e}", one.shown()))?;
        let mut running = 0;
        for candidate in chosen {
            let inspected = docker
                .inspect_container(&candidate.id, None)
                .await
                .with_context(|| format!("{}: inspecting {}", one.shown(), candidate.shown()))?;
            match place_of(&inspected) {
                Place::Netns(inode) => {
                    running += 1;
                    selected.set(&candidate.id, Some(inode));
                }
                Place::Host => bail!(
                    "{}: {} runs with --network host: its network namespace is the host's, \
                     shared with all the host's traffic; select its traffic by port or address \
                     instead",
                    one.shown(),
                    candidate.shown()
                ),
                // A pod may have finished containers (init containers); it needs one running.
                Place::Stopped(_) if matches!(one, Wanted::Pod { .. }) => {
                    selected.set(&candidate.id, None);
                }
                Place::Stopped(status) => bail!(
                    "{}: {} is not running ({status}); its network namespace exists only while \
                     it runs",
                    one.shown(),
                    candidate.shown()
                ),
            }
        }
        if running == 0 {
            bail!(
                "{}: none of the pod's containers runs; its network namespace exists only while \
                 one does",
                one.shown()
            );
        }
    }
    selected.wanted = wanted;
    Ok((docker, selected))
}

/// Keeps `map` current: each container `runtime` (Docker or Podman) starts or stops that was
/// asked for gets its namespace added or removed, until `stop` or the end of its event stream
/// (the map then stays as it is, said on stderr).
async fn follow(
    runtime: Runtime,
    docker: &Docker,
    mut selected: Selected,
    mut map: BpfHashMap<MapData, u32, u32>,
    since: u64,
    mut stop: oneshot::Receiver<()>,
) {
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        (
            "event".to_owned(),
            vec!["start".to_owned(), "die".to_owned()],
        ),
    ]);
    let mut events = docker.events(Some(EventsOptions {
        since: Some(since.to_string()),
        filters: Some(filters),
        ..EventsOptions::default()
    }));
    loop {
        let event = tokio::select! {
            _ = &mut stop => return,
            event = events.next() => event,
        };
        let Some(Ok(event)) = event else {
            note(format_args!(
                "udptrace: {}'s event stream ended: --container/--pod keep the network \
                 namespaces selected so far",
                runtime.product()
            ));
            return;
        };
        let Some(id) = event.actor.and_then(|actor| actor.id) else {
            continue;
        };
        // The container as it is now, whichever event came: replayed events and a stop
        // following a start then change nothing wrong. A container gone from Docker has no
        // namespace any more.
        let (candidate, inode) = match docker.inspect_container(&id, None).await {
            Ok(inspected) => {
                let inode = match place_of(&inspected) {
                    Place::Netns(inode) => Some(inode),
                    Place::Host | Place::Stopped(_) => None,
                };
                (Candidate::from_inspect(runtime, &inspected), inode)
            }
            Err(_) => (None, None),
        };
        let wanted = match &candidate {
            Some(candidate) => selected.wants(candidate),
            None => selected.by_id.contains_key(&id),
        };
        if !wanted {
            continue;
        }
        let change = selected.set(&id, inode);
        if let Some(inode) = change.add
            && let Err(error) = map.insert(inode, 1, 0)
        {
            note(format_args!(
                "udptrace: --container/--pod: cannot select network namespace {inode}: {error}"
            ));
        }
        if let Some(inode) = change.remove {
            // Gone already is fine: removal only keeps a reused inode from being selected.
            let _ = map.remove(&inode);
        }
    }
}

/// Keeps `map` current for containerd's and CRI-O's containers (`selection`), which have no
/// event API here: /proc is scanned again every `PROC_RESCAN` until `stop`; namespaces of
/// wanted containers that appeared are added, those gone are removed. `selected` is what the
/// map holds now.
async fn follow_proc(
    proc_root: &Path,
    selection: &ProcSelection,
    mut selected: Vec<u32>,
    mut map: BpfHashMap<MapData, u32, u32>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(PROC_RESCAN) => {}
        }
        let now = selection.inodes(&scan_proc(proc_root));
        for inode in now.iter().filter(|inode| !selected.contains(inode)) {
            if let Err(error) = map.insert(inode, 1, 0) {
                note(format_args!(
                    "udptrace: --container/--pod: cannot select network namespace {inode}: {error}"
                ));
            }
        }
        for inode in selected.iter().filter(|inode| !now.contains(inode)) {
            // Gone already is fine: removal only keeps a reused inode from being selected.
            let _ = map.remove(inode);
        }
        selected = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "7b0095692950c3c15eb927493b46a55845f0d0cc445aac805d53a6c759eb343f";
    const DB: &str = "7b01aa692950c3c15eb927493b46a55845f0d0cc445aac805d53a6c759eb343f";
    const POD: &str = "0c55e1f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c";

    fn candidate(id: &str, name: &str, pod: Option<(&str, &str)>) -> Candidate {
        let labels = pod.map(|(namespace, name)| {
            HashMap::from([
                (POD_NAMESPACE_LABEL.to_owned(), namespace.to_owned()),
                (POD_NAME_LABEL.to_owned(), name.to_owned()),
            ])
        });
        Candidate::new(
            Runtime::Docker,
            id.into(),
            Some(&format!("/{name}")),
            labels.as_ref(),
        )
    }

    fn all() -> Vec<Candidate> {
        vec![
            candidate(WEB, "web-1", None),
            candidate(DB, "db", None),
            candidate(POD, "k8s_nginx_web-5d8f_shop", Some(("shop", "web-5d8f"))),
        ]
    }

    fn chosen(wanted: &Wanted) -> Result<Vec<String>, String> {
        let all = all();
        wanted
            .choose(Source::Api(Runtime::Docker), &all)
            .map(|c| c.iter().map(|c| c.name.clone()).collect())
    }

    #[test]
    fn containers_are_chosen_as_docker_resolves_them() {
        let container = |word: &str| Wanted::parse_container(word).unwrap();
        assert_eq!(chosen(&container("web-1")), Ok(vec!["web-1".to_owned()]));
        assert_eq!(chosen(&container(DB)), Ok(vec!["db".to_owned()]));
        assert_eq!(chosen(&container("7b01")), Ok(vec!["db".to_owned()]));
        assert_eq!(chosen(&container("0c55e1f0a1b2")).unwrap().len(), 1);
        let ambiguous = chosen(&container("7b0")).unwrap_err();
        assert!(ambiguous.contains("2 containers' ids"), "{ambiguous}");
        let unknown = chosen(&container("web-2")).unwrap_err();
        assert!(unknown.contains("no container by that name"), "{unknown}");
        // A name is a whole name, not a start.
        assert!(chosen(&container("web")).is_err());
    }

    #[test]
    fn pods_are_their_containers_by_the_kubelet_labels() {
        let pod = Wanted::parse_pod("shop/web-5d8f").unwrap();
        assert_eq!(chosen(&pod), Ok(vec!["k8s_nginx_web-5d8f_shop".to_owned()]));
        let other = Wanted::parse_pod("default/web-5d8f").unwrap();
        let error = chosen(&other).unwrap_err();
        assert!(
            error.contains("io.kubernetes.pod.namespace=default"),
            "{error}"
        );
    }

    #[test]
    fn bad_option_values_are_refused_clearly() {
        assert!(Wanted::parse_container("").unwrap_err().contains("empty"));
        for bad in ["shop", "/web", "shop/", "a/b/c", ""] {
            let error = Wanted::parse_pod(bad).unwrap_err();
            assert!(error.contains("NAMESPACE/NAME"), "{bad}: {error}");
        }
        assert_eq!(
            Wanted::parse_pod("shop/web-5d8f"),
            Ok(Wanted::Pod {
                namespace: "shop".into(),
                name: "web-5d8f".into()
            })
        );
        assert_eq!(
            Wanted::Container("x\u{1b}[2J".into()).shown(),
            "--container x\\x1b[2J"
        );
    }

    #[test]
    fn restarts_move_the_selection_to_the_new_namespace() {
        let mut selected = Selected {
            wanted: vec![Wanted::Container("web-1".into())],
            ..Selected::default()
        };
        assert_eq!(
            selected.set(WEB, Some(10)),
            Change {
                add: Some(10),
                remove: None
            }
        );
        // The same answer twice (a replayed event) changes nothing.
        assert_eq!(selected.set(WEB, Some(10)), Change::default());
        // Stopped, then started in a new namespace.
        assert_eq!(
            selected.set(WEB, None),
            Change {
                add: None,
                remove: Some(10)
            }
        );
        assert_eq!(
            selected.set(WEB, Some(11)),
            Change {
                add: Some(11),
                remove: None
            }
        );
        assert_eq!(selected.inodes(), [11]);
        // Made again under its name (a new id): followed by name; another container is not.
        assert!(selected.wants(&candidate(DB, "web-1", None)));
        assert!(!selected.wants(&candidate(DB, "db", None)));
    }

    #[test]
    fn a_pods_namespace_stays_while_one_of_its_containers_runs() {
        let mut selected = Selected {
            wanted: vec![Wanted::parse_pod("shop/web-5d8f").unwrap()],
            ..Selected::default()
        };
        selected.set(POD, Some(20));
        selected.set(WEB, Some(20));
        assert_eq!(selected.set(WEB, None), Change::default());
        assert_eq!(selected.inodes(), [20]);
        assert_eq!(selected.set(POD, None).remove, Some(20));
        assert!(selected.inodes().is_empty());
        assert!(selected.wants(&candidate(
            DB,
            "k8s_sidecar_web-5d8f_shop",
            Some(("shop", "web-5d8f"))
        )));
    }

    /// A /proc stand-in: the host (`self`, PID 1 and a host shell), a CRI-O pod container
    /// under conmon (CRI-O's documented layout: cgroup `crio-ID.scope`, conmon given the
    /// bundle with `-b`, the kubelet's names in the bundle's annotations), a `ctr run`
    /// container under its containerd shim, and a Docker container (left to Docker's API).
    struct FakeProc {
        root: PathBuf,
    }

    impl FakeProc {
        fn new(test: &str) -> Self {
            let root = std::env::temp_dir()
                .join(format!("udptrace-procfilter-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let fake = Self { root };
            fake.netns("self", "host");
            fake.process(1, 0, "host", "0::/init.scope\n");
            fake.process(5, 1, "host", "0::/user.slice/session-1.scope\n");
            let bundle = fake.root.join(format!("crio/{POD}/userdata"));
            std::fs::create_dir_all(&bundle).unwrap();
            std::fs::write(
                bundle.join("config.json"),
                include_bytes!("../tests/fixtures/bundles/crio-config.json"),
            )
            .unwrap();
            fake.parent(
                30,
                &format!("/usr/bin/conmon\0-c\0{POD}\0-b\0{}\0", bundle.display()),
                None,
            );
            fake.process(
                31,
                30,
                "crio-pod",
                &format!("0::/kubepods.slice/crio-{POD}.scope\n"),
            );
            fake.shim_container(40, "rt-web", "ctr-a");
            fake.process(60, 1, "docker", &format!("0::/docker/{WEB}\n"));
            fake
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.root.join(relative)
        }

        /// `DIR/ns/net`: a file standing for namespace `ns` (same `ns`, same inode).
        fn netns(&self, dir: &str, ns: &str) {
            let store = self.path(&format!("namespaces/{ns}"));
            std::fs::create_dir_all(store.parent().unwrap()).unwrap();
            if !store.exists() {
                std::fs::write(&store, b"").unwrap();
            }
            std::fs::create_dir_all(self.path(&format!("{dir}/ns"))).unwrap();
            let link = self.path(&format!("{dir}/ns/net"));
            let _ = std::fs::remove_file(&link);
            std::fs::hard_link(&store, link).unwrap();
        }

        fn inode(&self, ns: &str) -> u32 {
            netns_inode(self.path(&format!("namespaces/{ns}"))).unwrap()
        }

        fn process(&self, pid: u32, ppid: u32, ns: &str, cgroup: &str) {
            self.netns(&pid.to_string(), ns);
            std::fs::write(
                self.path(&format!("{pid}/stat")),
                format!("{pid} (sh) S {ppid} 1"),
            )
            .unwrap();
            std::fs::write(self.path(&format!("{pid}/cgroup")), cgroup).unwrap();
        }

        fn parent(&self, pid: u32, cmdline: &str, cwd: Option<&Path>) {
            std::fs::create_dir_all(self.path(&pid.to_string())).unwrap();
            std::fs::write(self.path(&format!("{pid}/cmdline")), cmdline).unwrap();
            if let Some(cwd) = cwd {
                let link = self.path(&format!("{pid}/cwd"));
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(cwd, link).unwrap();
            }
        }

        /// `ctr run` container `id` (no annotations) in namespace `ns`: its init `pid`, its
        /// shim `pid - 1`, running in the bundle's directory.
        fn shim_container(&self, pid: u32, id: &str, ns: &str) {
            let bundle = self.path(&format!("task/default/{id}"));
            std::fs::create_dir_all(&bundle).unwrap();
            std::fs::write(bundle.join("config.json"), br#"{"ociVersion":"1.0.2"}"#).unwrap();
            self.parent(
                pid - 1,
                &format!("/usr/bin/containerd-shim-runc-v2\0-namespace\0default\0-id\0{id}\0"),
                Some(&bundle),
            );
            self.process(pid, pid - 1, ns, &format!("0::/default/{id}\n"));
        }

        fn remove(&self, pid: u32) {
            std::fs::remove_dir_all(self.path(&pid.to_string())).unwrap();
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn containerd_and_crio_containers_are_found_in_proc() {
        let fake = FakeProc::new("scan");
        let running = scan_proc(&fake.root);
        let shown: Vec<(String, u32)> = running
            .iter()
            .map(|(candidate, inode)| (candidate.shown(), *inode))
            .collect();
        // CRI-O's named by its annotations, `ctr run`'s by its id; not the host's processes,
        // not Docker's (its API names it).
        assert_eq!(
            shown,
            [
                (
                    format!("coredns (crio {})", &POD[..SHORT_ID]),
                    fake.inode("crio-pod")
                ),
                ("rt-web (containerd rt-web)".to_owned(), fake.inode("ctr-a")),
            ]
        );
        let (_, inodes) = resolve_proc(
            &fake.root,
            &[Wanted::parse_pod("kube-system/coredns-5d78c9869d-q7kzt").unwrap()],
        )
        .unwrap();
        assert_eq!(inodes, [fake.inode("crio-pod")]);
        for word in ["rt-web", "coredns", &POD[..8]] {
            let (_, inodes) = resolve_proc(&fake.root, &[Wanted::Container(word.into())]).unwrap();
            let expected = if word == "rt-web" {
                "ctr-a"
            } else {
                "crio-pod"
            };
            assert_eq!(inodes, [fake.inode(expected)], "{word}");
        }
        let error = resolve_proc(&fake.root, &[Wanted::Container(WEB.into())])
            .err()
            .unwrap();
        assert_eq!(
            format!("{error:#}"),
            format!(
                "--container {WEB}: no running containerd or CRI-O container has that name or \
                 id (looked for in /proc; {PROC_LISTERS} list them)"
            )
        );
        let error = resolve_proc(&fake.root, &[Wanted::parse_pod("shop/web").unwrap()])
            .err()
            .unwrap();
        assert!(
            format!("{error:#}").contains("io.kubernetes.pod.name=web"),
            "{error:#}"
        );
    }

    #[test]
    fn a_restarted_containerd_container_is_found_in_its_new_namespace() {
        let fake = FakeProc::new("restart");
        let (selection, inodes) =
            resolve_proc(&fake.root, &[Wanted::Container("rt-web".into())]).unwrap();
        assert_eq!(inodes, [fake.inode("ctr-a")]);
        // Stopped: nothing selected.
        fake.remove(40);
        assert!(selection.inodes(&scan_proc(&fake.root)).is_empty());
        // Made again under its name, in a namespace of its own.
        fake.shim_container(50, "rt-web", "ctr-b");
        assert_eq!(
            selection.inodes(&scan_proc(&fake.root)),
            [fake.inode("ctr-b")]
        );
    }
}
