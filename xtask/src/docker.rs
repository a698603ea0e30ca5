//! A private Docker daemon (Debian's docker.io) for checks that must run udptrace the way a
//! Docker user would: its own socket, data and exec roots in a scratch directory, no bridge
//! and no iptables rules (it must not touch the host's network), stopped and removed when
//! dropped, also when the check fails. See ../shared/notes/real-components.md.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// dockerd is ready in about 2 s here; under load, give it more.
const READY_TIMEOUT: Duration = Duration::from_mins(1);
/// Debian's client, not another one earlier on PATH, so that client and daemon match.
const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";

pub struct PrivateDocker {
    dir: PathBuf,
    daemon: Child,
}

impl PrivateDocker {
    /// Starts dockerd with its state under `dir` (created; removed again on drop).
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        for program in [DOCKER, DOCKERD] {
            if !Path::new(program).exists() {
                bail!(
                    "{program} is missing: install Debian's docker.io (`cargo xtask setup` does)"
                );
            }
        }
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir)?;
        let log = fs::File::create(dir.join("dockerd.log"))?;
        let daemon = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("sock").display()))
            .args([
                "--storage-driver",
                "vfs",
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
            ])
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
                let log = fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
                bail!("dockerd did not answer within {READY_TIMEOUT:?}; its log:\n{log}");
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(docker)
    }

    /// The client, talking to this daemon.
    pub fn docker(&self) -> Command {
        let mut command = Command::new(DOCKER);
        command.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.join("sock").display()),
        );
        command
    }

    /// Imports an image holding exactly `files` (path in the image → file on the host) and
    /// nothing else: no shell, no C library.
    pub fn import(&self, name: &str, files: &[(&str, &Path)]) -> anyhow::Result<()> {
        let layer = self.dir.join("layer");
        fs::create_dir_all(&layer)?;
        for (inside, outside) in files {
            fs::copy(outside, layer.join(inside))
                .with_context(|| format!("copying {}", outside.display()))?;
        }
        let tarball = self.dir.join("layer.tar");
        crate::process::run(
            Command::new("tar")
                .arg("-C")
                .arg(&layer)
                .arg("-cf")
                .arg(&tarball)
                .arg("."),
        )?;
        crate::process::run(self.docker().arg("import").arg(&tarball).arg(name))
    }
}

impl Drop for PrivateDocker {
    fn drop(&mut self) {
        // Containers first (`--rm` ones are gone already), then the daemon (SIGTERM: it
        // unmounts what it mounted), then its state.
        if let Ok(listed) = self.docker().args(["ps", "-aq"]).output() {
            for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                let _ = self.docker().args(["rm", "-f", id]).output();
            }
        }
        // SAFETY: kill(2) on the daemon's pid, our child (not yet reaped, so not reused).
        unsafe {
            libc::kill(self.daemon.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.daemon.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
