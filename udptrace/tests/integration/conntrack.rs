//! Issue 17, conntrack_drop: a full conntrack table drops a new flow at netfilter's hook
//! (NETFILTER_DROP at `nf_hook_slow`, like a rule's drop), and udptrace says that conntrack,
//! not a rule, dropped it, from the namespace's conntrack counters.

use serde_json::Value;
use udptrace::lab::{self, scenarios::CONNTRACK_ENTRIES};

use crate::{
    common::{events, verdicts},
    drops::traced,
    recordings::TempFile,
};

/// Runs only in the QEMU guests of `cargo xtask vm-test` (xtask/src/vm.rs `GUEST_ONLY`, which
/// runs it in every guest in a pass with `--ignored`): the lab's `conntrack-full` lowers
/// `net.netfilter.nf_conntrack_max`, one limit shared by every namespace of the machine and
/// read-only inside a child namespace, so the table cannot be filled in a test's namespace
/// alone and a test must not lower the host's. On the host `cargo test` lists it as ignored
/// with that reason, CI included; its healthy control below runs everywhere.
///
/// The run's recording is printed between `@@recording conntrack-full@@` lines (shown with
/// `--nocapture`): udptrace/tests/recordings/conntrack-full.ndjson is made that way in a guest,
/// `cargo xtask vm-test --kernel debian-6.1 -- conntrack:: --nocapture`.
#[test]
#[ignore = "guests only: lab conntrack-full lowers the machine-wide nf_conntrack_max; `cargo xtask vm-test` runs it in every guest"]
fn a_full_conntrack_table_is_conntrack_drop() {
    assert!(
        lab::in_test_guest(),
        "runs only in a `cargo xtask vm-test` guest: it lowers the machine-wide nf_conntrack_max"
    );
    let file = TempFile(std::env::temp_dir().join(format!(
        "udptrace-recording-{}-conntrack-full.ndjson",
        std::process::id()
    )));
    let path = file.0.to_str().unwrap();
    let (lab, outcome, records) = traced("conntrack-full", &["-o", path]);
    let client = outcome.client.local.unwrap();
    assert_eq!(outcome.client.sent, 2, "{}", outcome.describe());
    assert!(outcome.client.replies.is_empty(), "{}", outcome.describe());
    let drops: Vec<&Value> = events(&records, "drop")
        .into_iter()
        .filter(|d| d["sport"] == client.port())
        .collect();
    assert_eq!(drops.len(), 2, "{records:#?}");
    for drop in &drops {
        assert_eq!(drop["reason"], "NETFILTER_DROP", "{drop}");
        assert_eq!(drop["netns"], lab.server.inode, "{drop}");
        assert!(
            drop["location"]
                .as_str()
                .unwrap()
                .starts_with("nf_hook_slow+"),
            "{drop}"
        );
    }
    let found = verdicts(&records);
    let finals: Vec<&&Value> = found.iter().filter(|v| v["final"] == true).collect();
    assert_eq!(finals.len(), 1, "{found:#?}");
    let verdict = finals[0];
    assert_eq!(verdict["code"], "conntrack_drop", "{verdict:#}");
    assert_eq!(verdict["count"], 2, "{verdict:#}");
    let facts = &verdict["facts"];
    assert_eq!(facts["cause"], "table_full", "{facts:#}");
    assert_eq!(facts["stats"]["count"], CONNTRACK_ENTRIES, "{facts:#}");
    assert_eq!(facts["stats"]["max"], CONNTRACK_ENTRIES, "{facts:#}");
    assert!(facts["stats"]["drop"].as_u64().unwrap() >= 1, "{facts:#}");
    assert_eq!(facts["source"], client.to_string());
    let summary = verdict["summary"].as_str().unwrap();
    assert!(summary.contains("not a rule"), "{summary}");
    assert!(summary.contains(&lab.server.name), "{summary}");
    assert!(
        verdict["fix"]
            .as_str()
            .unwrap()
            .contains("nf_conntrack_max"),
        "{verdict:#}"
    );
    drop(lab);
    let recording = std::fs::read_to_string(path).unwrap();
    println!("@@recording conntrack-full@@\n{recording}@@recording conntrack-full@@");
}

/// The healthy control, on the host and in every guest: the same conversations in a
/// namespace that tracks connections, with room in its table.
#[test]
fn a_conntrack_table_with_room_drops_nothing() {
    let (_lab, outcome, records) = traced("conntrack-fits", &[]);
    assert_eq!(outcome.client.replies.len(), 2, "{}", outcome.describe());
    assert!(events(&records, "drop").is_empty(), "{records:#?}");
    assert!(verdicts(&records).is_empty(), "{records:#?}");
}
