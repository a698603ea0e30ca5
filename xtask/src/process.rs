//! Running commands with errors that say which command failed and how, and running as root.

use std::{
    ffi::OsStr,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// `program arg ...` as a shell would need it typed (for messages); cargo, run by the path in
/// `$CARGO` (the toolchain's own binary), is shown as `cargo`.
pub fn describe(command: &Command) -> String {
    let program = command.get_program();
    let program = match Path::new(program).file_name() {
        Some(name) if name == "cargo" => name,
        _ => program,
    };
    std::iter::once(program)
        .chain(command.get_args())
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+^,@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `command` with stdin closed (CI has none; nothing here may prompt) and its output shown.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let line = describe(command);
    let status = command
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `command` and returns its stdout; stderr is shown.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
    let line = describe(command);
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !output.status.success() {
        bail!("`{line}` failed ({})", output.status);
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{line}` printed non-UTF-8"))
}

/// Whether `command` runs and exits with status 0 (all its output discarded).
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The effective user id is 0 (read from /proc: no libc dependency, no subprocess).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// `name` found in a PATH directory.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// How to get root for what needs it: nothing when root, else `sudo`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    Root,
    Sudo,
}

impl Privilege {
    /// Root, or a sudo that works without further questions: validated now (asking for a
    /// password once if there is a terminal), so nothing fails on it after a long build.
    /// `why` completes "... needs root to ...".
    pub fn acquire(why: &str) -> anyhow::Result<Self> {
        if is_root() {
            return Ok(Self::Root);
        }
        let ci = if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
            " (CI is set: nothing is skipped)"
        } else {
            ""
        };
        if find_in_path("sudo").is_none() {
            bail!(
                "this needs root to {why}, this process is not root and sudo is not installed{ci}: \
                 run it as root"
            );
        }
        if succeeds(Command::new("sudo").args(["-n", "true"])) {
            return Ok(Self::Sudo);
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "this needs root to {why}; sudo wants a password and there is no terminal to \
                 ask it on{ci}: run it as root or allow passwordless sudo"
            );
        }
        eprintln!("xtask: sudo is needed to {why}");
        let status = Command::new("sudo")
            .arg("-v")
            .status()
            .context("could not start `sudo -v`")?;
        if !status.success() {
            bail!("`sudo -v` failed ({status}): cannot get root to {why}");
        }
        Ok(Self::Sudo)
    }

    /// `program` to be run with root's rights (`sudo -E program` when not root).
    pub fn command(self, program: impl AsRef<OsStr>) -> Command {
        match self {
            Self::Root => Command::new(program),
            Self::Sudo => {
                let mut command = Command::new("sudo");
                command.arg("-E").arg(program);
                command
            }
        }
    }
}
