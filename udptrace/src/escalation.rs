//! `udptrace watch`'s escalations, as bookkeeping: which ports the path hooks are narrowed to,
//! until when, and which may not be escalated again yet. The session applies it to the kernel
//! (the `ESCALATED` map) and attaches or detaches the path hooks.
//!
//! An escalated port stays until its time is over (later anomalies do not extend it), then
//! rests for `REST_FACTOR` times that long before an anomaly may escalate it again: a flow
//! that keeps failing keeps the path hooks attached at most `1 / (1 + REST_FACTOR)` of the
//! time, instead of for good.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// How many escalation lengths a port rests after its escalation.
pub const REST_FACTOR: u32 = 5;

pub struct Ports {
    duration: Duration,
    /// Escalated port → when its escalation ends.
    escalated: HashMap<u16, Instant>,
    /// Resting port → when it may be escalated again. At most 65,536 entries (one per port).
    resting: HashMap<u16, Instant>,
}

impl Ports {
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            escalated: HashMap::new(),
            resting: HashMap::new(),
        }
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Whether an anomaly at `now` escalates `port`: not 0, not escalated already, not
    /// resting.
    pub fn wanted(&self, port: u16, now: Instant) -> bool {
        port != 0
            && !self.escalated.contains_key(&port)
            && self.resting.get(&port).is_none_or(|until| *until <= now)
    }

    /// `port` is escalated from `now` (once the kernel took it).
    pub fn escalate(&mut self, port: u16, now: Instant) {
        self.resting.remove(&port);
        self.escalated.insert(port, now + self.duration);
    }

    /// Ends the escalations whose time is over by `now`, which start their rest; returns
    /// their ports (to take out of the kernel's map).
    pub fn expire(&mut self, now: Instant) -> Vec<u16> {
        let rest = self.duration * REST_FACTOR;
        let mut ended = Vec::new();
        self.escalated.retain(|port, until| {
            let over = *until <= now;
            if over {
                ended.push(*port);
            }
            !over
        });
        for port in &ended {
            self.resting.insert(*port, now + rest);
        }
        self.resting.retain(|_, until| *until > now);
        ended
    }

    /// Whether any port is escalated.
    pub fn any(&self) -> bool {
        !self.escalated.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_escalated_once_for_its_time_then_rests() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut ports = Ports::new(Duration::from_secs(10));
        assert!(!ports.wanted(0, start), "port 0 names no flow");
        assert!(ports.wanted(53, start));
        ports.escalate(53, start);
        assert!(ports.any());
        // Later anomalies on the flow neither extend nor repeat it.
        assert!(!ports.wanted(53, at(5)));
        assert_eq!(ports.expire(at(9)), Vec::<u16>::new());
        assert_eq!(ports.expire(at(10)), [53]);
        assert!(!ports.any());
        // Resting: 5 escalation lengths.
        assert!(!ports.wanted(53, at(11)));
        assert!(!ports.wanted(53, at(59)));
        assert!(ports.wanted(53, at(60)));
        assert!(ports.wanted(5353, at(11)), "other ports are not held back");
        ports.expire(at(60));
        assert!(ports.resting.is_empty(), "rests end");
    }
}
