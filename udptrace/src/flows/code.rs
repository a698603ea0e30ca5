//! The verdict codes: an interface (docs/verdicts.md), named in the flow records too.

use serde::Serialize;

/// The verdict codes (docs/verdicts.md); serialized as their snake_case names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictCode {
    ReplySourceMismatch,
    ConnectedSocketMismatch,
    PortUnreachable,
    FirewallDrop,
    RcvbufOverflow,
    NatReplyMismatch,
    RpFilterDrop,
    ChecksumError,
    NeighborUnreachable,
    NoReply,
    NoReplyFromPeer,
    NoRoute,
    TxDrop,
    FragmentLoss,
    ConntrackDrop,
}

impl VerdictCode {
    /// The code as docs/verdicts.md and the records name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReplySourceMismatch => "reply_source_mismatch",
            Self::ConnectedSocketMismatch => "connected_socket_mismatch",
            Self::PortUnreachable => "port_unreachable",
            Self::FirewallDrop => "firewall_drop",
            Self::RcvbufOverflow => "rcvbuf_overflow",
            Self::NatReplyMismatch => "nat_reply_mismatch",
            Self::RpFilterDrop => "rp_filter_drop",
            Self::ChecksumError => "checksum_error",
            Self::NeighborUnreachable => "neighbor_unreachable",
            Self::NoReply => "no_reply",
            Self::NoReplyFromPeer => "no_reply_from_peer",
            Self::NoRoute => "no_route",
            Self::TxDrop => "tx_drop",
            Self::FragmentLoss => "fragment_loss",
            Self::ConntrackDrop => "conntrack_drop",
        }
    }
}

/// Codes sort by name (the order a flow lists its verdicts in).
impl Ord for VerdictCode {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl PartialOrd for VerdictCode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
