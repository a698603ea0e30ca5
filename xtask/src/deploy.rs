//! The deployment files under deploy/ are checked by the tools that read them, offline: the
//! systemd unit by `systemd-analyze verify`, the Kubernetes manifest against the API's schema
//! (deploy/kubernetes/validate.py, through Debian's python3-kubernetes models; Debian has no
//! kubeconform, and `kubectl --dry-run` needs a cluster). Both are installed by setup.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Debian's interpreter, whatever python3 comes first on PATH (python3-kubernetes is
/// installed for it).
const PYTHON: &str = "/usr/bin/python3";

fn validate(manifest: &str) -> Output {
    let mut child = Command::new(PYTHON)
        .arg(deploy().join("kubernetes/validate.py"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running deploy/kubernetes/validate.py: install python3-kubernetes (`cargo xtask setup`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_daemonset_manifest_fits_the_kubernetes_schema() {
    let manifest = fs::read_to_string(deploy().join("kubernetes/udptrace.yaml")).unwrap();
    let checked = validate(&manifest);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&checked.stdout).trim(),
        "3 documents valid (Kubernetes API models of python3-kubernetes)"
    );
}

#[test]
fn the_schema_check_finds_a_misspelt_field_a_mistyped_value_and_a_missing_name() {
    let manifest = fs::read_to_string(deploy().join("kubernetes/udptrace.yaml")).unwrap();
    let broken = manifest
        .replace("hostPID: true", "hostPid: true")
        .replace(
            "prometheus.io/scrape: \"true\"",
            "prometheus.io/scrape: true",
        )
        .replace("- name: NODE_IP", "- value: x");
    let checked = validate(&broken);
    assert_eq!(checked.status.code(), Some(1));
    let said = String::from_utf8_lossy(&checked.stderr);
    for error in [
        "DaemonSet.spec.template.spec.hostPid: not a field of V1PodSpec",
        "DaemonSet.spec.template.metadata.annotations.prometheus.io/scrape: expected str, got True",
        "DaemonSet.spec.template.spec.containers[0].env[0]: Invalid value for `name`, must not be `None`",
    ] {
        assert!(said.contains(error), "{error} in {said}");
    }
}

/// The capabilities the manifest's container adds (its `add:` list).
fn manifest_capabilities(manifest: &str) -> Vec<&str> {
    manifest
        .lines()
        .skip_while(|line| line.trim() != "add:")
        .skip(1)
        .map_while(|line| line.trim().strip_prefix("- "))
        .collect()
}

#[test]
fn the_image_check_runs_with_the_manifests_capabilities() {
    let manifest = fs::read_to_string(deploy().join("kubernetes/udptrace.yaml")).unwrap();
    let mut checked = crate::image::CAPABILITIES.to_vec();
    checked.push("SYS_RESOURCE");
    assert_eq!(manifest_capabilities(&manifest), checked);
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = fs::read_to_string(deploy().join("systemd/udptrace-watch.service")).unwrap();
    // verify checks that ExecStart's program exists and that Documentation= man pages are
    // installed: point both at what this machine has.
    let executable = std::env::current_exe().unwrap();
    let unit = unit
        .replace("/usr/local/bin/udptrace", &executable.to_string_lossy())
        .replace("man:udptrace(8)", "man:systemd.service(5)");
    let dir = std::env::temp_dir().join(format!("udptrace-unit-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("udptrace-watch.service");
    fs::write(&path, unit).unwrap();
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("running systemd-analyze: install systemd (`cargo xtask setup`)");
    let _ = fs::remove_dir_all(&dir);
    assert!(
        verified.status.success() && verified.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

/// `cargo xtask image --check` runs the manifest's command line; the systemd unit runs the
/// same one (on the same loopback address and port), with its log file added.
#[test]
fn the_image_check_runs_the_command_the_manifest_and_the_unit_ship() {
    let manifest = fs::read_to_string(deploy().join("kubernetes/udptrace.yaml")).unwrap();
    let command = crate::image::manifest_command(&manifest).unwrap();
    assert_eq!(
        command,
        ["/udptrace", "watch", "--metrics", "127.0.0.1:9464"],
        "the DaemonSet's command, its $(NODE_IP) expanded as the check does"
    );
    let unit = fs::read_to_string(deploy().join("systemd/udptrace-watch.service")).unwrap();
    let exec_start: Vec<&str> = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(exec_start[1..command.len()], command[1..]);
    assert_eq!(exec_start[command.len()], "--log");
}

#[test]
fn the_image_check_refuses_a_command_line_it_cannot_read() {
    let manifest = fs::read_to_string(deploy().join("kubernetes/udptrace.yaml")).unwrap();
    let block_list = manifest.replace(
        r#"args: ["watch", "--metrics", "$(NODE_IP):9464"]"#,
        "args:\n            - watch",
    );
    let error = crate::image::manifest_command(&block_list).unwrap_err();
    assert!(
        format!("{error:#}").contains("is not a one-line list of quoted strings"),
        "{error:#}"
    );
    let unknown = manifest.replace("$(NODE_IP)", "$(POD_IP)");
    let error = crate::image::manifest_command(&unknown).unwrap_err();
    assert!(
        format!("{error:#}").contains("refers to a variable the image check does not set"),
        "{error:#}"
    );
}
