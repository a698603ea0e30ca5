//! Issue 5: every lab scenario, traced, yields exactly its expected verdicts.

use std::collections::BTreeSet;

use udptrace::lab::scenarios::SCENARIOS;

use crate::{
    common::{events, function_probe, verdicts},
    drops::traced,
};

#[test]
fn every_scenario_yields_exactly_its_verdicts() {
    for scenario in SCENARIOS {
        let (lab, outcome, records) = traced(scenario.name, &[]);
        let found: BTreeSet<&str> = verdicts(&records)
            .iter()
            .map(|v| v["code"].as_str().unwrap())
            .collect();
        let expected: BTreeSet<&str> = scenario.expected.iter().copied().collect();
        assert_eq!(
            found,
            expected,
            "{}: {}\n{records:#?}",
            scenario.name,
            outcome.describe()
        );
        if expected.is_empty() {
            let no_socket = events(&records, "drop");
            assert!(
                no_socket.is_empty(),
                "{}: healthy control has drops {no_socket:#?}",
                scenario.name
            );
        }
        if scenario.name == "wrong-source-reply" {
            let verdict = &verdicts(&records)[0];
            let summary = verdict["summary"].as_str().unwrap();
            assert!(
                summary.contains(&format!("sent to {}", lab.target)),
                "{summary}"
            );
            assert!(summary.contains("came from 198.51.100.1:"), "{summary}");
            assert!(verdict["fix"].as_str().unwrap().contains("IP_PKTINFO"));
            assert_eq!(
                verdict["count"], 3,
                "three requests, three wrong-source replies"
            );
            if function_probe(&records, "send") {
                assert!(
                    summary.contains("replying with sendto() without IP_PKTINFO"),
                    "{summary}"
                );
            }
        }
        if scenario.name == "firewalled-port" {
            let summary = verdicts(&records)[0]["summary"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                summary.contains("(hook input): udp dport 5003 drop"),
                "names the rule: {summary}"
            );
        }
        if scenario.name == "rcvbuf-overflow" {
            let verdict = &verdicts(&records)[0];
            assert_eq!(
                verdict["count"],
                outcome.rcvbuf_errors.unwrap(),
                "counts match the kernel's"
            );
            let summary = verdict["summary"].as_str().unwrap();
            // SO_RCVBUF 4096 is doubled by the kernel for its bookkeeping (socket(7)).
            assert!(
                summary.contains("in a 8192-byte receive buffer"),
                "{summary}"
            );
            assert!(
                summary.contains(&format!("[{}], ", std::process::id())),
                "names the owner: {summary}"
            );
        }
    }
}
