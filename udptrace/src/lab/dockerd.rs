//! A private Docker daemon (Debian's docker.io) for what must run the way a Docker user would:
//! its own socket, data and exec roots and pid file in a scratch directory, stopped (its
//! containers first) and its state removed when dropped, also when a check or test fails.
//! Used by udptrace's lab and tests (Docker's bridge, iptables rules and docker-proxy, inside a
//! network namespace the caller made) and by `cargo xtask dist --check` (no network at all),
//! which compiles this file into xtask with `#[path]`: it may use only std, anyhow and libc.
//! See ../shared/notes/real-components.md.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// dockerd is ready in about 0.6 s here; under load, give it more.
const READY_TIMEOUT: Duration = Duration::from_mins(1);
/// A daemon that does not stop on SIGTERM within this is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Debian's client, not another one earlier on PATH, so that client and daemon match.
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";

/// The daemon's network.
pub enum Network<'a> {
    /// No bridge and no iptables rules: the daemon must not touch the host's network.
    None,
    /// Docker's default bridge (docker0), its iptables rules and docker-proxy
    /// (`--userland-proxy=true`), all inside the network namespace at `netns` (a
    /// /run/netns/NAME path): dockerd is started through `nsenter --net`, which enters that
    /// namespace only (`ip netns exec` would also remount /sys, hiding the cgroup file system
    /// runc needs), so everything it makes there goes when the namespace is deleted.
    Bridge {
        netns: &'a Path,
        /// `--bip`: docker0's address and prefix (a documentation range).
        bip: &'a str,
        /// `--default-address-pool` (a documentation range), for user-defined networks.
        pool: &'a str,
    },
}

pub struct PrivateDocker {
    dir: PathBuf,
    daemon: Child,
}

/// What is missing for a private dockerd on this machine, if anything: one line.
pub fn missing() -> Option<String> {
    [DOCKER, DOCKERD]
        .into_iter()
        .find(|program| !Path::new(program).exists())
        .map(|program| {
            format!("{program} is missing: install Debian's docker.io (`cargo xtask setup` does)")
        })
}

impl PrivateDocker {
    /// Starts dockerd with its state under `dir` (created; removed again on drop) and waits
    /// until it answers.
    pub fn start(dir: &Path, network: &Network) -> anyhow::Result<Self> {
        if let Some(missing) = missing() {
            bail!(missing);
        }
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir)?;
        let log = fs::File::create(dir.join("dockerd.log"))?;
        let mut command = match network {
            Network::None => {
                let mut command = Command::new(DOCKERD);
                command.args(["--bridge", "none", "--iptables=false", "--ip6tables=false"]);
                command
            }
            Network::Bridge { netns, bip, pool } => {
                // nsenter execs dockerd (no fork for a network namespace): the child is the
                // daemon itself.
                let mut command = Command::new("nsenter");
                command
                    .arg(format!("--net={}", netns.display()))
                    .arg(DOCKERD)
                    .args(["--bip", bip])
                    .arg(format!("--default-address-pool=base={pool},size=28"))
                    .arg("--userland-proxy=true");
                command
            }
        };
        let daemon = command
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("sock").display()))
            .args(["--storage-driver", "vfs"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        let docker = Self {
            dir: dir.to_path_buf(),
            daemon,
        };
        let started = Instant::now();
        while !docker.docker().arg("info").output()?.status.success() {
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "dockerd did not answer within {READY_TIMEOUT:?}; its log:\n{}",
                    docker.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(docker)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.id()
    }

    /// The daemon's API socket, for `DOCKER_HOST=unix://...`.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The client, talking to this daemon.
    pub fn docker(&self) -> Command {
        let mut command = Command::new(DOCKER);
        command.env("DOCKER_HOST", format!("unix://{}", self.socket().display()));
        command
    }

    /// Runs the client with `args`; its stdout, trimmed, or an error with its stderr.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self
            .docker()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running docker")?;
        if !output.status.success() {
            bail!(
                "`docker {}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Imports an image holding exactly `files` (path in the image → file on the host) and
    /// nothing else: no shell, no C library (with no files: an empty root file system, for
    /// containers that bind-mount the host's binaries).
    pub fn import(&self, name: &str, files: &[(&str, &Path)]) -> anyhow::Result<()> {
        self.import_with(name, files, &[])
    }

    /// `import` with Dockerfile instructions applied to the image's configuration (`docker
    /// import --change`, e.g. `ENTRYPOINT ["/udptrace"]`).
    pub fn import_with(
        &self,
        name: &str,
        files: &[(&str, &Path)],
        changes: &[&str],
    ) -> anyhow::Result<()> {
        let layer = self.dir.join("layer");
        fs::create_dir_all(&layer)?;
        for (inside, outside) in files {
            fs::copy(outside, layer.join(inside))
                .with_context(|| format!("copying {}", outside.display()))?;
        }
        let tarball = self.dir.join("layer.tar");
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&layer)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .context("running tar")?;
        if !tar.success() {
            bail!("tar of the image layer failed ({tar})");
        }
        let mut args = vec!["import"];
        for change in changes {
            args.extend(["--change", change]);
        }
        let tarball = tarball.to_string_lossy();
        args.extend([&*tarball, name]);
        self.run(&args).map(drop)
    }
}

impl Drop for PrivateDocker {
    fn drop(&mut self) {
        // Containers first (`--rm` ones are gone already), then the daemon (SIGTERM: it
        // unmounts what it mounted and stops its containerd), then its state.
        if let Ok(listed) = self.run(&["ps", "-aq"]) {
            for id in listed.split_whitespace() {
                let _ = self.run(&["rm", "-f", id]);
            }
        }
        stop_daemon(&mut self.daemon);
        unmount_under(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Stops `daemon`, a child of this process: SIGTERM (a daemon unmounts what it mounted and
/// stops its children), SIGKILL when it has not ended within STOP_TIMEOUT; reaped.
pub fn stop_daemon(daemon: &mut Child) {
    // SAFETY: kill(2) on our child's pid (not yet reaped, so not reused).
    unsafe {
        libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && matches!(daemon.try_wait(), Ok(None)) {
        thread::sleep(Duration::from_millis(50));
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// Detaches what the daemon left mounted under `dir`: a container on the host's network makes
/// dockerd bind-mount the host's namespace at `exec/netns/default`, and it does not unmount it
/// when it stops (the directory could not be removed).
pub fn unmount_under(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for mount_point in mounts.lines().filter_map(|line| line.split(' ').nth(1)) {
        if Path::new(mount_point).starts_with(dir)
            && let Ok(path) = std::ffi::CString::new(mount_point)
        {
            // SAFETY: umount2 with a NUL-terminated path; failure leaves the mount, and the
            // removal below then fails as it would have.
            unsafe {
                libc::umount2(path.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}
