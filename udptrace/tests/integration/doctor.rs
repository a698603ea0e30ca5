//! `udptrace doctor`: every hook attached through the richest mechanism the kernel offers
//! (function probes where it allows them, else the tracepoint family), and why the better
//! mechanisms were not used. Runs on this machine (no kprobes, no fentry) and in the kernel
//! matrix VMs (both).

use std::{path::Path, process::Command};

use serde_json::Value;

use crate::common::{require_root, tracepoint_exists};

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

/// Hooks on kernel functions that have no tracepoint form (or, for `send`, a poorer one).
const FUNCTION_HOOKS: [&str; 4] = ["send", "connect", "lookup", "icmp6_error"];
/// Hooks that exist only as function probes: no mechanism where the kernel allows none.
const FUNCTION_ONLY_HOOKS: [&str; 5] =
    ["connect", "lookup", "icmp6_error", "enqueue", "route_input"];

fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

fn probe<'a>(report: &'a Value, hook: &str) -> &'a Value {
    report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["hook"] == hook)
        .unwrap_or_else(|| panic!("no hook {hook} in {report:#}"))
}

#[test]
fn every_hook_has_a_mechanism_and_refusals_are_explained() {
    let (ok, report) = doctor(&[]);
    assert!(ok, "{report:#}");
    assert_eq!(report["ok"], true);
    let probes = report["probes"].as_array().unwrap();
    assert!(probes.len() >= 14);
    for probe in probes {
        // Every attempt before the one that worked says why it was not used.
        for attempt in probe["attempts"].as_array().unwrap() {
            if attempt["ok"] == false {
                assert!(!attempt["error"].as_str().unwrap().is_empty(), "{probe}");
            }
        }
        let Some(mechanism) = probe["mechanism"].as_str() else {
            assert!(
                FUNCTION_ONLY_HOOKS.contains(&probe["hook"].as_str().unwrap()),
                "only function-probe hooks may be missing: {probe}"
            );
            assert_eq!(probe["core"], false, "{probe}");
            continue;
        };
        assert!(["fentry", "kprobe", "tp_btf", "raw_tp", "tracepoint"].contains(&mechanism));
    }
    let kprobes = report["kprobes"].as_str().unwrap();
    if kprobes_available() {
        assert_eq!(kprobes, "available");
    } else {
        assert!(kprobes.contains("CONFIG_KPROBES"), "{kprobes}");
    }
    let send = probe(&report, "send");
    let fentry = &send["attempts"][0];
    assert_eq!(fentry["mechanism"], "fentry");
    let fentry_works = fentry["ok"] == true;
    if !fentry_works {
        // This machine refuses trampolines: the reason must say so.
        assert!(
            fentry["error"].as_str().unwrap().contains("EPERM"),
            "{fentry}"
        );
    }
    for hook in FUNCTION_HOOKS {
        let probe = probe(&report, hook);
        let mechanism = probe["mechanism"].as_str();
        if fentry_works || kprobes_available() {
            // The richest mechanism the kernel offers is the one used.
            let expected = if fentry_works { "fentry" } else { "kprobe" };
            assert!(
                mechanism == Some(expected) || mechanism == Some("kprobe"),
                "{hook} should use {expected}: {probe:#}"
            );
        } else {
            // Neither: the tracepoint family takes over where it can; the rest is reported.
            assert!(
                mechanism.is_none_or(|m| ["tp_btf", "raw_tp", "tracepoint"].contains(&m)),
                "{probe:#}"
            );
            let kprobe = probe["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["mechanism"] == "kprobe")
                .unwrap_or_else(|| panic!("{hook} has no kprobe attempt: {probe:#}"));
            assert!(
                kprobe["error"].as_str().unwrap().contains("no kprobes"),
                "{kprobe}"
            );
        }
    }
}

#[test]
fn forcing_a_mechanism_uses_only_it() {
    let (ok, report) = doctor(&["--probes", "raw-tp"]);
    // Kernels without `icmp:icmp_send` (5.10) have no tracepoint form of the core ICMP hook:
    // forced to raw tracepoints, doctor leaves it out and says udptrace cannot trace.
    let icmp_tracepoint = tracepoint_exists("icmp", "icmp_send");
    assert_eq!(ok, icmp_tracepoint, "{report:#}");
    for probe in report["probes"].as_array().unwrap() {
        let mechanism = &probe["mechanism"];
        let hook = probe["hook"].as_str().unwrap();
        // The route hooks exist only as classic tracepoints, the function hooks only as
        // function probes (and icmp_error too where icmp:icmp_send is missing).
        if hook == "route4"
            || hook == "route6"
            || FUNCTION_ONLY_HOOKS.contains(&hook)
            || (hook == "icmp_error" && !icmp_tracepoint)
        {
            assert!(mechanism.is_null(), "{probe}");
        } else if probe["core"] == true {
            assert_eq!(mechanism, "raw_tp", "{probe}");
        } else {
            // A kernel without the tracepoint (sock:sk_data_ready before 6.7) leaves the hook
            // out rather than use another mechanism; the raw_tp attempt says why.
            let raw_tp = probe["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["mechanism"] == "raw_tp")
                .unwrap();
            assert!(
                mechanism == "raw_tp" || (mechanism.is_null() && raw_tp["error"].is_string()),
                "{probe}"
            );
        }
    }
}

/// Kernels that offer fentry use it, so the kprobe programs would go unverified there: force
/// them. (The drop hook has no kprobe form, so doctor reports a missing core hook.)
#[test]
fn forcing_kprobes_attaches_every_function_hook() {
    let (_, report) = doctor(&["--probes", "kprobe"]);
    for hook in FUNCTION_HOOKS.iter().chain(&["icmp_error"]) {
        let probe = probe(&report, hook);
        if kprobes_available() {
            assert_eq!(probe["mechanism"], "kprobe", "{probe:#}");
        } else {
            assert!(probe["mechanism"].is_null(), "{probe:#}");
        }
    }
    assert!(probe(&report, "drop")["mechanism"].is_null());
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
