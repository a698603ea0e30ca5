//! `udptrace doctor` on this machine: every hook attached through the tracepoint family, and
//! why kprobes and fentry are not used.

use std::{path::Path, process::Command};

use serde_json::Value;

use crate::common::require_root;

fn doctor(args: &[&str]) -> (bool, Value) {
    require_root();
    let output = Command::new(env!("CARGO_BIN_EXE_udptrace"))
        .arg("doctor")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    (output.status.success(), report)
}

#[test]
fn every_hook_has_a_mechanism_and_refusals_are_explained() {
    let (ok, report) = doctor(&[]);
    assert!(ok, "{report:#}");
    assert_eq!(report["ok"], true);
    let probes = report["probes"].as_array().unwrap();
    assert!(probes.len() >= 10);
    for probe in probes {
        let mechanism = probe["mechanism"]
            .as_str()
            .unwrap_or_else(|| panic!("no mechanism: {probe}"));
        assert!(["fentry", "kprobe", "tp_btf", "raw_tp", "tracepoint"].contains(&mechanism));
        // Every attempt before the one that worked says why it was not used.
        for attempt in probe["attempts"].as_array().unwrap() {
            if attempt["ok"] == false {
                assert!(!attempt["error"].as_str().unwrap().is_empty(), "{probe}");
            }
        }
    }
    let kprobes = report["kprobes"].as_str().unwrap();
    if Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        assert_eq!(kprobes, "available");
    } else {
        assert!(kprobes.contains("CONFIG_KPROBES"), "{kprobes}");
    }
    let send = probes.iter().find(|p| p["hook"] == "send").unwrap();
    let fentry = &send["attempts"][0];
    assert_eq!(fentry["mechanism"], "fentry");
    if fentry["ok"] == false {
        // This machine refuses trampolines: the reason must say so, and the tracepoint family
        // takes over.
        assert!(
            fentry["error"].as_str().unwrap().contains("EPERM"),
            "{fentry}"
        );
        assert!(["tp_btf", "raw_tp", "tracepoint"].contains(&send["mechanism"].as_str().unwrap()));
    }
}

#[test]
fn forcing_a_mechanism_uses_only_it() {
    let (ok, report) = doctor(&["--probes", "raw-tp"]);
    assert!(ok, "{report:#}");
    for probe in report["probes"].as_array().unwrap() {
        let mechanism = &probe["mechanism"];
        // The route hooks exist only as classic tracepoints.
        if probe["hook"] == "route4" || probe["hook"] == "route6" {
            assert!(mechanism.is_null(), "{probe}");
        } else {
            assert_eq!(mechanism, "raw_tp", "{probe}");
        }
    }
}

#[test]
fn bad_filters_exit_2_with_a_caret() {
    for (expression, message) in [
        ("port 99999", "0-65535"),
        ("host 300.1.1.1", "not an IPv4 or IPv6 address"),
        ("portrange 9-1", "after its end"),
        ("port", "after 'port'"),
        ("( port 53", "unbalanced '('"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_udptrace"))
            .args(expression.split(' '))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{expression}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains(message), "{expression}: {stderr}");
        assert!(
            stderr
                .lines()
                .nth(2)
                .is_some_and(|l| l.trim_start().starts_with('^')),
            "{stderr}"
        );
    }
}
