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
//! `io.kubernetes.pod.name` (dockershim, cri-dockerd, `podman run --label`). containerd and
//! CRI-O have no such API here (containers.rs reads their state on disk): they are not
//! selectable. Nothing here runs unless one of the options is given.

use std::{
    collections::HashMap,
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
    containers::{Runtime, SHORT_ID, api_sockets, connect_api, listed_name},
    render::note,
    sanitize::sanitize_kernel_string,
};

/// The kubelet's labels on a pod's containers.
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
/// Longest start-up waits for Docker's answers: bollard's own timeouts (5 s a request) end a
/// silent daemon's requests well before.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

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

    /// The containers of `all` (`runtime`'s) this asks for, as Docker resolves a container's
    /// name or id: an exact name or id first, else a unique start of an id.
    fn choose<'a>(
        &self,
        runtime: Runtime,
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
                    0 => Err(format!(
                        "{} knows no container by that name or id (`{} ps -a` lists them)",
                        runtime.product(),
                        runtime.name()
                    )),
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

/// What choosing a container needs to know of it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    id: String,
    /// As `docker ps` shows it (the API's `/NAME` without the slash).
    name: String,
    labels: HashMap<String, String>,
}

impl Candidate {
    fn new(id: String, name: Option<&str>, labels: Option<&HashMap<String, String>>) -> Self {
        let name = name.unwrap_or_default();
        Self {
            id,
            name: name.strip_prefix('/').unwrap_or(name).to_owned(),
            labels: labels.cloned().unwrap_or_default(),
        }
    }

    fn from_summary(summary: &ContainerSummary) -> Option<Self> {
        Some(Self::new(
            summary.id.clone()?,
            listed_name(summary),
            summary.labels.as_ref(),
        ))
    }

    fn from_inspect(inspected: &ContainerInspectResponse) -> Option<Self> {
        Some(Self::new(
            inspected.id.clone()?,
            inspected.name.as_deref(),
            inspected.config.as_ref().and_then(|c| c.labels.as_ref()),
        ))
    }

    fn in_pod(&self, namespace: &str, name: &str) -> bool {
        self.labels.get(POD_NAMESPACE_LABEL).map(String::as_str) == Some(namespace)
            && self.labels.get(POD_NAME_LABEL).map(String::as_str) == Some(name)
    }

    /// `NAME (RUNTIME SHORT-ID)`, sanitized.
    fn shown(&self, runtime: Runtime) -> String {
        format!(
            "{} ({} {})",
            sanitize_kernel_string(self.name.as_bytes()),
            runtime.name(),
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
    let Some(inode) = pid.and_then(|pid| netns_inode(&format!("/proc/{pid}/ns/net"))) else {
        return Place::Stopped(status);
    };
    // Another way into the host's namespace (`--network container:X` of a host-network
    // container); the daemon itself may run elsewhere, as the lab's does.
    if netns_inode("/proc/self/ns/net") == Some(inode) {
        return Place::Host;
    }
    Place::Netns(inode)
}

fn netns_inode(path: &str) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
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
    /// (CONTAINER_HOST's or /run/podman/podman.sock), where the wanted containers' traffic is:
    /// a clear error when no runtime answers, a container is unknown or not running, or
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
        if apis.is_empty() {
            bail!(
                "{shown}: no container runtime to ask: {} does not exist (udptrace asks Docker's \
                 API; DOCKER_HOST=unix://PATH names another socket), nor {} (Podman's; \
                 CONTAINER_HOST=unix://PATH)",
                docker.display(),
                podman.display()
            );
        }
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
                    let mut errors = Vec::new();
                    let mut resolved = None;
                    for (runtime, socket) in apis {
                        match resolve(runtime, &socket, wanted.clone()).await {
                            Ok(found) => {
                                resolved = Some((runtime, found));
                                break;
                            }
                            Err(error) => errors.push(format!("{error:#}")),
                        }
                    }
                    let Some((runtime, (docker, selected))) = resolved else {
                        let _ = ready.send(Err(anyhow!(errors.join("; "))));
                        return;
                    };
                    if ready.send(Ok(selected.inodes())).is_err() {
                        return;
                    }
                    if let Ok((map, stop)) = map_rx.await {
                        follow(runtime, &docker, selected, map, since, stop).await;
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
        .filter_map(|summary| Candidate::from_summary(&summary))
        .collect();
    let mut selected = Selected::default();
    for one in &wanted {
        let chosen = one
            .choose(runtime, &all)
            .map_err(|e| anyhow!("{}: {e}", one.shown()))?;
        let mut running = 0;
        for candidate in chosen {
            let inspected = docker
                .inspect_container(&candidate.id, None)
                .await
                .with_context(|| {
                    format!("{}: inspecting {}", one.shown(), candidate.shown(runtime))
                })?;
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
                    candidate.shown(runtime)
                ),
                // A pod may have finished containers (init containers); it needs one running.
                Place::Stopped(_) if matches!(one, Wanted::Pod { .. }) => {
                    selected.set(&candidate.id, None);
                }
                Place::Stopped(status) => bail!(
                    "{}: {} is not running ({status}); its network namespace exists only while \
                     it runs",
                    one.shown(),
                    candidate.shown(runtime)
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
                (Candidate::from_inspect(&inspected), inode)
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
        Candidate::new(id.into(), Some(&format!("/{name}")), labels.as_ref())
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
            .choose(Runtime::Docker, &all)
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
}
