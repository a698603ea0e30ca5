//! The text forms of the model's values, in one place: the JSON record's field formats (serde
//! impls, written and read back, docs/json-schema.md) and the same forms where the text output
//! shows them.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};
use udptrace_common::event::Mechanism;

use crate::{
    clock::WallTime,
    flows::table::FlowKey,
    model::{
        DropReason, Endpoints, Errno, Location, Probe, Process, RouteDevice, Skb, SocketErrno,
        SocketInfo,
    },
};

/// `comm[pid]` (`[pid]` when the kernel gave no comm).
pub fn process_text(process: &Process) -> String {
    format!("{}[{}]", process.comm, process.pid)
}

/// A flow's processes as `comm[pid]`, in the order of that text.
pub fn processes_text(processes: &[Process]) -> Vec<String> {
    let mut texts: Vec<String> = processes.iter().map(process_text).collect();
    texts.sort();
    texts
}

/// `192.0.2.1:40000 <> 192.0.2.2:4000`: a flow, both directions.
pub fn flow_key_text(key: &FlowKey) -> String {
    format!("{} <> {}", key.a, key.b)
}

/// `192.0.2.1:40000 > 192.0.2.2:4000`.
pub fn endpoints_text(endpoints: &Endpoints) -> String {
    format!("{} > {}", endpoints.src, endpoints.dst)
}

/// `symbol+0xoff`, or the hex address.
pub fn location_text(location: &Location) -> String {
    match location {
        Location::Symbol(symbol) => symbol.clone(),
        Location::Address(address) => format!("{address:#x}"),
    }
}

/// `0xffff888000001000`.
pub fn skb_text(skb: Skb) -> String {
    format!("{:#x}", skb.0)
}

/// The device a route lookup chose, `-` for none.
pub fn device_text(device: &RouteDevice) -> &str {
    device.0.as_deref().unwrap_or("-")
}

/// A number in `0x` hex.
fn parse_hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

/// The errno named `name` (the inverse of `Errno::name`, over the numbers errnos have).
fn errno_named(name: &str) -> Option<Errno> {
    (1..4096).map(Errno).find(|&errno| errno.name() == name)
}

/// Deserializes a string and converts it, naming `what` it should have been on failure.
fn from_text<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    what: &str,
    convert: impl FnOnce(&str) -> Option<T>,
) -> Result<T, D::Error> {
    let text = String::deserialize(deserializer)?;
    convert(&text).ok_or_else(|| D::Error::custom(format!("`{text}` is not {what}")))
}

impl Serialize for WallTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for WallTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, "an RFC 3339 time", WallTime::parse_rfc3339)
    }
}

impl Serialize for Probe {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.map_or("unknown", Mechanism::name))
    }
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, "a probe mechanism", |name| {
            Some(Self(Mechanism::ALL.into_iter().find(|m| m.name() == name)))
                .filter(|probe| probe.0.is_some() || name == "unknown")
        })
    }
}

impl Serialize for Skb {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&skb_text(*self))
    }
}

impl<'de> Deserialize<'de> for Skb {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, "a hex skb address", |text| {
            parse_hex(text).map(Skb)
        })
    }
}

impl Serialize for DropReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for DropReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, "a drop reason", |name| {
            Some(DropReason::named(name))
        })
    }
}

impl Serialize for Location {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&location_text(self))
    }
}

impl<'de> Deserialize<'de> for Location {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, "a kernel location", |text| {
            Some(
                parse_hex(text)
                    .map_or_else(|| Location::Symbol(text.to_owned()), Location::Address),
            )
        })
    }
}

impl Serialize for RouteDevice {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(device_text(self))
    }
}

impl<'de> Deserialize<'de> for RouteDevice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A device named `-` (a valid name) reads back as none.
        from_text(deserializer, "a device name", |name| {
            Some(Self((name != "-").then(|| name.to_owned())))
        })
    }
}

impl Serialize for Errno {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Errno {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, "an errno name", errno_named)
    }
}

/// A socket error's record fields.
#[derive(Serialize, Deserialize)]
struct SocketErrnoRecord {
    errno: String,
    code: u32,
}

impl Serialize for SocketErrno {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SocketErrnoRecord {
            errno: self.0.name().to_owned(),
            code: self.0.0,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SocketErrno {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        SocketErrnoRecord::deserialize(deserializer).map(|record| Self(Errno(record.code)))
    }
}

impl Serialize for Endpoints {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&endpoints_text(self))
    }
}

impl<'de> Deserialize<'de> for Endpoints {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_text(deserializer, "`address:port > address:port`", |text| {
            let (src, dst) = text.split_once(" > ")?;
            Some(Endpoints {
                src: src.parse().ok()?,
                dst: dst.parse().ok()?,
            })
        })
    }
}

/// A socket's record fields: the owner as `owner_pid` and `owner_comm`.
#[derive(Serialize, Deserialize)]
struct SocketRecord {
    local: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<SocketAddr>,
    inode: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner_comm: Option<String>,
}

impl Serialize for SocketInfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SocketRecord {
            local: self.local,
            peer: self.peer,
            inode: self.inode,
            owner_pid: self.owner.as_ref().map(|owner| owner.pid),
            owner_comm: self.owner.as_ref().map(|owner| owner.comm.clone()),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SocketInfo {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = SocketRecord::deserialize(deserializer)?;
        Ok(Self {
            local: record.local,
            peer: record.peer,
            inode: record.inode,
            owner: record.owner_pid.map(|pid| Process {
                pid,
                comm: record.owner_comm.unwrap_or_default(),
            }),
        })
    }
}
