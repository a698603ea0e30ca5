//! A pcapng writer (draft-ietf-opsawg-pcapng): the Section Header, Interface Description and
//! Enhanced Packet blocks `-w` needs, in the host's byte order (readers detect it from the
//! byte-order magic), with `if_name` and `opt_comment` options. Timestamps use the default
//! resolution, microseconds (no `if_tsresol`), as `WallTime` is kept.

use std::io::{self, Write};

/// `LINKTYPE_RAW` (tcpdump.org link-layer header types): the packet starts at its IPv4 or
/// IPv6 header, the version nibble tells which.
pub const LINKTYPE_RAW: u16 = 101;

const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const INTERFACE_DESCRIPTION: u32 = 1;
const ENHANCED_PACKET: u32 = 6;
const OPT_ENDOFOPT: u16 = 0;
const OPT_COMMENT: u16 = 1;
const OPT_SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
/// An option's value is at most this long (its length is a u16).
const MAX_OPTION: usize = u16::MAX as usize;

/// A block being assembled: its body, then written with its type and both length fields.
struct Block {
    kind: u32,
    body: Vec<u8>,
    options: bool,
}

impl Block {
    fn new(kind: u32) -> Self {
        Self {
            kind,
            body: Vec::new(),
            options: false,
        }
    }

    fn u16(&mut self, value: u16) -> &mut Self {
        self.body.extend_from_slice(&value.to_ne_bytes());
        self
    }

    fn u32(&mut self, value: u32) -> &mut Self {
        self.body.extend_from_slice(&value.to_ne_bytes());
        self
    }

    /// Bytes padded to 32 bits, as every field of variable length is.
    fn padded(&mut self, bytes: &[u8]) -> &mut Self {
        self.body.extend_from_slice(bytes);
        self.body
            .resize(self.body.len() + (4 - bytes.len() % 4) % 4, 0);
        self
    }

    /// A text option (UTF-8, not NUL-terminated), cut at a character boundary when longer than
    /// an option can be.
    fn text(&mut self, code: u16, text: &str) -> &mut Self {
        let mut end = text.len().min(MAX_OPTION);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.options = true;
        self.u16(code)
            .u16(end as u16)
            .padded(&text.as_bytes()[..end])
    }

    fn write(mut self, out: &mut impl Write) -> io::Result<()> {
        if self.options {
            self.u16(OPT_ENDOFOPT).u16(0);
        }
        // Type, two lengths, body: the total is a multiple of 4 (every field is padded).
        let total = u32::try_from(self.body.len() + 12)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pcapng block too long"))?;
        out.write_all(&self.kind.to_ne_bytes())?;
        out.write_all(&total.to_ne_bytes())?;
        out.write_all(&self.body)?;
        out.write_all(&total.to_ne_bytes())
    }
}

/// Writes the Section Header Block that starts a file: one section of unknown length.
pub fn section_header(out: &mut impl Write, application: &str) -> io::Result<()> {
    let mut block = Block::new(SECTION_HEADER);
    block.u32(BYTE_ORDER_MAGIC).u16(1).u16(0);
    // Section length -1: not given (a stream does not know it).
    block.body.extend_from_slice(&(-1_i64).to_ne_bytes());
    block.text(OPT_SHB_USERAPPL, application);
    block.write(out)
}

/// Writes an Interface Description Block; packets name it by its position among the section's
/// interfaces (0, 1, ...).
pub fn interface(out: &mut impl Write, link_type: u16, snaplen: u32, name: &str) -> io::Result<()> {
    let mut block = Block::new(INTERFACE_DESCRIPTION);
    block.u16(link_type).u16(0).u32(snaplen);
    block.text(IF_NAME, name);
    block.write(out)
}

/// A packet as an Enhanced Packet Block writes it.
pub struct Packet<'a> {
    pub interface: u32,
    /// Microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// The packet's length on the wire; `data` may be shorter (snaplen).
    pub original_len: u32,
    pub data: &'a [u8],
    pub comment: &'a str,
}

/// Writes an Enhanced Packet Block.
pub fn packet(out: &mut impl Write, packet: &Packet<'_>) -> io::Result<()> {
    let mut block = Block::new(ENHANCED_PACKET);
    let captured = u32::try_from(packet.data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet too long"))?;
    block
        .u32(packet.interface)
        .u32((packet.timestamp_us >> 32) as u32)
        .u32(packet.timestamp_us as u32)
        .u32(captured)
        .u32(packet.original_len.max(captured))
        .padded(packet.data);
    if !packet.comment.is_empty() {
        block.text(OPT_COMMENT, packet.comment);
    }
    block.write(out)
}

/// Enhanced Packet Blocks in a pcapng stream of one section in this host's byte order (what
/// `-w` writes); `None` when the blocks do not chain up to the end (a cut or foreign file).
pub fn packet_count(mut bytes: &[u8]) -> Option<u64> {
    let word = |b: &[u8], at: usize| Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let mut packets = 0;
    while !bytes.is_empty() {
        let total = word(bytes, 4)? as usize;
        if total < 12
            || !total.is_multiple_of(4)
            || word(bytes, total.checked_sub(4)?)? != total as u32
        {
            return None;
        }
        packets += u64::from(word(bytes, 0)? == ENHANCED_PACKET);
        bytes = &bytes[total..];
    }
    Some(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a pcapng stream into (type, body) blocks, checking both lengths and alignment.
    fn blocks(mut bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let word = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let total = word(bytes, 4) as usize;
            assert_eq!(total % 4, 0, "block length {total} not a multiple of 4");
            assert_eq!(word(bytes, total - 4), total as u32, "trailing length");
            out.push((word(bytes, 0), bytes[8..total - 4].to_vec()));
            bytes = &bytes[total..];
        }
        out
    }

    /// (code, value) options of a body from `at`, up to opt_endofopt.
    fn options(body: &[u8], mut at: usize) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let code = u16::from_ne_bytes(body[at..at + 2].try_into().unwrap());
            let len = u16::from_ne_bytes(body[at + 2..at + 4].try_into().unwrap()) as usize;
            if code == OPT_ENDOFOPT {
                assert_eq!(at + 4, body.len(), "bytes after opt_endofopt");
                return out;
            }
            out.push((code, body[at + 4..at + 4 + len].to_vec()));
            at += 4 + len.div_ceil(4) * 4;
        }
    }

    #[test]
    fn section_interface_and_packet_blocks_follow_the_layout() {
        let mut out = Vec::new();
        section_header(&mut out, "udptrace").unwrap();
        interface(&mut out, LINKTYPE_RAW, 256, "srv/veth-s").unwrap();
        packet(
            &mut out,
            &Packet {
                interface: 0,
                timestamp_us: 0x1_0000_0002,
                original_len: 33,
                data: &[0x45, 1, 2, 3, 4],
                comment: "drop NO_SOCKET",
            },
        )
        .unwrap();
        let blocks = blocks(&out);
        assert_eq!(
            blocks.iter().map(|b| b.0).collect::<Vec<_>>(),
            [SECTION_HEADER, INTERFACE_DESCRIPTION, ENHANCED_PACKET]
        );
        let shb = &blocks[0].1;
        assert_eq!(&shb[..4], &BYTE_ORDER_MAGIC.to_ne_bytes());
        assert_eq!(&shb[8..16], &(-1_i64).to_ne_bytes());
        assert_eq!(options(shb, 16), [(OPT_SHB_USERAPPL, b"udptrace".to_vec())]);
        let idb = &blocks[1].1;
        assert_eq!(&idb[..2], &LINKTYPE_RAW.to_ne_bytes());
        assert_eq!(&idb[4..8], &256_u32.to_ne_bytes());
        assert_eq!(options(idb, 8), [(IF_NAME, b"srv/veth-s".to_vec())]);
        let epb = &blocks[2].1;
        let field = |i: usize| u32::from_ne_bytes(epb[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!((field(0), field(1), field(2)), (0, 1, 2));
        assert_eq!((field(3), field(4)), (5, 33));
        assert_eq!(&epb[20..25], &[0x45, 1, 2, 3, 4]);
        assert_eq!(&epb[25..28], &[0, 0, 0], "data padded to 32 bits");
        assert_eq!(
            options(epb, 28),
            [(OPT_COMMENT, b"drop NO_SOCKET".to_vec())]
        );
        assert_eq!(packet_count(&out), Some(1));
        assert_eq!(packet_count(&out[..out.len() - 1]), None, "a cut file");
    }

    #[test]
    fn a_packet_without_comment_has_no_options_and_original_len_covers_the_data() {
        let mut out = Vec::new();
        packet(
            &mut out,
            &Packet {
                interface: 3,
                timestamp_us: 7,
                original_len: 0,
                data: &[1, 2, 3, 4],
                comment: "",
            },
        )
        .unwrap();
        let blocks = blocks(&out);
        assert_eq!(blocks[0].1.len(), 24, "no options after the data");
        assert_eq!(&blocks[0].1[16..20], &4_u32.to_ne_bytes());
    }

    #[test]
    fn an_overlong_comment_is_cut_at_a_character_boundary() {
        let comment = "é".repeat(MAX_OPTION);
        let mut out = Vec::new();
        packet(
            &mut out,
            &Packet {
                interface: 0,
                timestamp_us: 0,
                original_len: 1,
                data: &[0x60],
                comment: &comment,
            },
        )
        .unwrap();
        let blocks = blocks(&out);
        let options = options(&blocks[0].1, 24);
        assert_eq!(options[0].1.len(), MAX_OPTION - 1);
        assert!(std::str::from_utf8(&options[0].1).is_ok());
    }
}
