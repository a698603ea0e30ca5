//! A small reader for the kernel's BTF, enough to resolve struct member offsets by path, enum
//! values by name, and whether a function exists.
//!
//! Why: Rust eBPF cannot emit CO-RE relocations (../shared/notes/aya-and-style.md, B.1), so
//! udptrace learns the running kernel's layouts here, in userspace, and hands them to the
//! programs as a global. `aya::Btf` keeps member offsets private, hence this reader.
//!
//! Format: Documentation/bpf/btf.rst, "2. BTF Type and String Encoding", and
//! include/uapi/linux/btf.h. A blob is a `struct btf_header` followed by a type section (a
//! sequence of `struct btf_type`, each followed by kind-specific data whose length depends on
//! the kind and `vlen`) and a string section of NUL-terminated names. Type ids count from 1 in
//! section order; id 0 is `void`.
//!
//! Only little-endian BTF is read (every architecture udptrace runs on). Malformed input yields
//! a [`BtfError`], never a panic: the header and every type's extent are checked while parsing,
//! type ids and string offsets when they are used, and walks through anonymous members and
//! typedef chains are bounded so a cyclic blob cannot hang or overflow the stack.

use std::{cmp::Ordering, fmt, path::Path};

/// `BTF_MAGIC` (include/uapi/linux/btf.h). Read little-endian; big-endian BTF reads 0x9feb.
const MAGIC: u16 = 0xeb9f;
/// `BTF_VERSION`.
const VERSION: u8 = 1;
/// `sizeof(struct btf_header)` for version 1; longer headers are allowed (newer fields).
const MIN_HEADER_LEN: usize = 24;
/// `struct btf_type` is `name_off`, `info`, `size`/`type`.
const TYPE_HEADER_WORDS: usize = 3;

/// Hops through typedefs and qualifiers before giving up (real chains are a handful).
const MAX_CHAIN: usize = 64;
/// Nesting of arrays in arrays before giving up on a size.
const MAX_ARRAY_NESTING: u32 = 32;
/// Anonymous struct/union levels searched for a member name (sk_buff needs 3).
const MAX_ANONYMOUS_NESTING: u32 = 16;
/// Members looked at while searching one path component, anonymous members included.
/// `struct task_struct` has ~250 in all; the budget only stops blobs whose anonymous members
/// fan out exponentially (each level holding many copies of the next).
const MEMBER_BUDGET: u32 = 100_000;

/// BTF kinds, `BTF_KIND_*` in include/uapi/linux/btf.h (`Void` is type id 0 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Void,
    Int,
    Ptr,
    Array,
    Struct,
    Union,
    Enum,
    Fwd,
    Typedef,
    Volatile,
    Const,
    Restrict,
    Func,
    FuncProto,
    Var,
    Datasec,
    Float,
    DeclTag,
    TypeTag,
    Enum64,
}

impl Kind {
    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Int,
            2 => Self::Ptr,
            3 => Self::Array,
            4 => Self::Struct,
            5 => Self::Union,
            6 => Self::Enum,
            7 => Self::Fwd,
            8 => Self::Typedef,
            9 => Self::Volatile,
            10 => Self::Const,
            11 => Self::Restrict,
            12 => Self::Func,
            13 => Self::FuncProto,
            14 => Self::Var,
            15 => Self::Datasec,
            16 => Self::Float,
            17 => Self::DeclTag,
            18 => Self::TypeTag,
            19 => Self::Enum64,
            _ => return None,
        })
    }

    /// 32-bit words of kind-specific data after `struct btf_type` (btf.rst, 2.2).
    fn trailing_words(self, vlen: usize) -> usize {
        match self {
            // INT: a u32 encoding. VAR: `struct btf_var` (linkage). DECL_TAG:
            // `struct btf_decl_tag` (component_idx).
            Self::Int | Self::Var | Self::DeclTag => 1,
            // `struct btf_array`: type, index_type, nelems.
            Self::Array => 3,
            // `struct btf_member` (name_off, type, offset), `struct btf_var_secinfo` (type,
            // offset, size), `struct btf_enum64` (name_off, val_lo32, val_hi32).
            Self::Struct | Self::Union | Self::Datasec | Self::Enum64 => 3 * vlen,
            // `struct btf_enum` (name_off, val), `struct btf_param` (name_off, type).
            Self::Enum | Self::FuncProto => 2 * vlen,
            Self::Void
            | Self::Ptr
            | Self::Fwd
            | Self::Typedef
            | Self::Volatile
            | Self::Const
            | Self::Restrict
            | Self::Func
            | Self::Float
            | Self::TypeTag => 0,
        }
    }

    /// Kinds that only qualify or rename another type (followed to reach a member's type).
    fn is_alias(self) -> bool {
        matches!(
            self,
            Self::Typedef | Self::Volatile | Self::Const | Self::Restrict | Self::TypeTag
        )
    }

    fn is_composite(self) -> bool {
        matches!(self, Self::Struct | Self::Union)
    }

    /// How this kind is named in error messages.
    fn describe(self) -> &'static str {
        match self {
            Self::Void => "void",
            Self::Int => "an integer",
            Self::Ptr => "a pointer",
            Self::Array => "an array",
            Self::Struct => "a struct",
            Self::Union => "a union",
            Self::Enum | Self::Enum64 => "an enum",
            Self::Fwd => "a forward declaration",
            Self::Typedef => "a typedef",
            Self::Volatile | Self::Const | Self::Restrict | Self::TypeTag => "a qualifier",
            Self::Func => "a function",
            Self::FuncProto => "a function prototype",
            Self::Var => "a variable",
            Self::Datasec => "a data section",
            Self::Float => "a float",
            Self::DeclTag => "a declaration tag",
        }
    }
}

/// What went wrong reading BTF or resolving a name in it; the message names the input (byte
/// offset, type id, or `struct.member.path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtfError(pub String);

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BtfError {}

fn error<T>(message: impl Into<String>) -> Result<T, BtfError> {
    Err(BtfError(message.into()))
}

/// One `struct btf_type`, with where its trailing data starts.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    kind: Kind,
    /// `info` bit 31. Struct/union: members encode bitfield sizes. Enum: values are signed.
    kind_flag: bool,
    /// `info` bits 0-15: members, enumerators, parameters, ...
    vlen: u16,
    /// `size` for INT/STRUCT/UNION/ENUM/ENUM64/DATASEC/FLOAT, `type` for the others.
    size_or_id: u32,
    /// Index of the first trailing word in `Btf::words` (the type section's length is a u32
    /// of bytes, so a word index fits).
    extra: u32,
}

impl Type {
    const VOID: Self = Self {
        name_off: 0,
        kind: Kind::Void,
        kind_flag: false,
        vlen: 0,
        size_or_id: 0,
        extra: 0,
    };
}

/// Names are looked up per family: `struct sock` and a function `sock` are different things.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    /// STRUCT and UNION.
    Composite,
    /// ENUM and ENUM64.
    Enum,
    Func,
    /// The `btf_trace_<tracepoint>` typedefs only (the raw tracepoints' prototypes; tp_btf
    /// programs attach to them).
    TraceTypedef,
}

/// One entry of [`Btf::by_name`].
#[derive(Clone, Copy, Debug)]
struct Named {
    family: Family,
    name_off: u32,
    id: u32,
}

/// Prefix of the typedefs that give each raw tracepoint's prototype (include/linux/tracepoint.h
/// `DEFINE_EVENT` via `__DEFINE_BTF_TRACE`... `typedef void (*btf_trace_##call)(void *__data,
/// proto)`, kernel/bpf/btf.c `BTF_TRACE_PREFIX`).
const TRACE_TYPEDEF_PREFIX: &str = "btf_trace_";

/// The section of per-CPU variables (include/asm-generic/vmlinux.lds.h, `PERCPU_INPUT`).
const PERCPU_SECTION: &str = ".data..percpu";

/// Where a struct member lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldInfo {
    /// Byte offset from the start of the outermost struct of the path.
    pub offset: u32,
    /// Size in bytes of the member's type (after typedefs and qualifiers), or of the bitfield
    /// for a byte-aligned whole-byte bitfield.
    pub size: u32,
}

/// A member found by name, possibly inside anonymous members.
#[derive(Clone, Copy, Debug)]
struct Found {
    /// From the start of the struct or union searched.
    bit_offset: u64,
    type_id: u32,
    /// Width in bits when the member is a bitfield.
    bitfield: Option<u32>,
}

/// A parsed BTF blob.
pub struct Btf {
    /// The whole type section as little-endian words; each [`Type`] points at its trailing
    /// data in here. Every type's extent was checked to lie inside while parsing.
    words: Vec<u32>,
    /// The string section; checked to end in NUL, so every offset below its length names a
    /// terminated string.
    strings: Vec<u8>,
    /// Index 0 is `void`.
    types: Vec<Type>,
    /// Every STRUCT/UNION, ENUM/ENUM64, FUNC and TYPEDEF, sorted by family, then name, then
    /// id. vmlinux holds a few distinct structs under one name (`struct console`, `struct
    /// workspace`), so lookups try each. 12 bytes a name, against about 100 for a map of owned
    /// names (vmlinux names some 100 000 such types).
    by_name: Vec<Named>,
    /// `sizeof(void *)` of the kernel the BTF describes: the size of `long`, which the kernel
    /// assumes equal to a pointer's; BTF records no pointer size (btf.rst: PTR has `size` 0).
    pointer_size: u32,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.type_count())
            .field("strings_bytes", &self.strings.len())
            .finish_non_exhaustive()
    }
}

impl Btf {
    /// Where the running kernel exposes its own BTF (CONFIG_DEBUG_INFO_BTF=y, Linux 5.4+).
    pub const SYS_FS_PATH: &'static str = "/sys/kernel/btf/vmlinux";

    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(Self::SYS_FS_PATH))
    }

    /// A raw BTF file (as `/sys/kernel/btf/vmlinux`, or a `.BTF` section extracted with
    /// `objcopy -O binary --only-section=.BTF`).
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path)
            .map_err(|e| BtfError(format!("reading {}: {e}", path.display())))?;
        Self::from_bytes(&data).map_err(|e| BtfError(format!("{}: {e}", path.display())))
    }

    /// Parses a raw BTF blob.
    pub fn from_bytes(data: &[u8]) -> Result<Self, BtfError> {
        let header = Header::parse(data)?;
        let type_section = section(data, header.len, header.type_off, header.type_len, "type")?;
        let strings = section(data, header.len, header.str_off, header.str_len, "string")?;
        // btf.rst 2.1: the first string is the empty name (offset 0). The kernel also refuses
        // a section that does not end in NUL (kernel/bpf/btf.c, btf_parse_str_sec), which is
        // what makes every string lookup below terminate.
        if strings.first() != Some(&0) || strings.last() != Some(&0) {
            return error("BTF string section does not start and end with NUL");
        }
        if type_section.len() % 4 != 0 {
            return error(format!(
                "BTF type section length {} is not a multiple of 4",
                type_section.len()
            ));
        }
        let words: Vec<u32> = type_section
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut btf = Self {
            types: parse_types(&words)?,
            words,
            strings: strings.to_vec(),
            by_name: Vec::new(),
            pointer_size: 8,
        };
        btf.index();
        Ok(btf)
    }

    /// Fills `by_name` and `pointer_size`.
    fn index(&mut self) {
        let mut by_name = Vec::new();
        let mut long_size = None;
        for (id, ty) in self.types.iter().enumerate().skip(1) {
            let family = match ty.kind {
                Kind::Struct | Kind::Union => Family::Composite,
                Kind::Enum | Kind::Enum64 => Family::Enum,
                Kind::Func => Family::Func,
                Kind::Typedef => Family::TraceTypedef,
                Kind::Int => {
                    if long_size.is_none() && self.string(ty.name_off) == Ok("long int") {
                        long_size = Some(ty.size_or_id);
                    }
                    continue;
                }
                _ => continue,
            };
            // A name that cannot be read (bad offset, not UTF-8) only makes its type
            // unfindable by name; the rest of the blob stays usable.
            let Ok(name) = self.string(ty.name_off) else {
                continue;
            };
            if name.is_empty()
                || (family == Family::TraceTypedef && !name.starts_with(TRACE_TYPEDEF_PREFIX))
            {
                continue;
            }
            // `types` has at most u32::MAX entries: each takes 12 bytes of a section whose
            // length is a u32.
            by_name.push(Named {
                family,
                name_off: ty.name_off,
                id: id as u32,
            });
        }
        // Stable, and pushed in id order: entries sharing a name stay in id order.
        by_name.sort_by(|a, b| self.compare(a, b.family, self.name(b)));
        self.by_name = by_name;
        self.pointer_size = long_size
            .filter(|&size| size == 4 || size == 8)
            .unwrap_or(8);
    }

    /// The name of an indexed type (checked readable when indexed).
    fn name(&self, entry: &Named) -> &str {
        self.string(entry.name_off).unwrap_or_default()
    }

    /// Orders an index entry against a (family, name) key.
    fn compare(&self, entry: &Named, family: Family, name: &str) -> Ordering {
        entry
            .family
            .cmp(&family)
            .then_with(|| self.name(entry).cmp(name))
    }

    /// Number of types, `void` not counted (for `doctor`).
    pub fn type_count(&self) -> usize {
        self.types.len() - 1
    }

    /// Offset and size of `path` (`"a.b.c"`) inside `struct_name` (a struct or union).
    ///
    /// Each component names a member of the previous one's struct/union type, after typedefs
    /// and qualifiers; members of anonymous structs and unions are found as if they were the
    /// parent's, as in C (`sk_buff.dev` sits in an anonymous union inside an anonymous struct
    /// inside an anonymous union). A path cannot cross a pointer (that would be a read).
    /// Bitfields are refused unless they start on a byte and span whole bytes.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<FieldInfo, BtfError> {
        let mut candidates = self.named(Family::Composite, struct_name).peekable();
        if candidates.peek().is_none() {
            return error(format!(
                "{struct_name}.{path}: no struct {struct_name} in BTF"
            ));
        }
        // Distinct structs sharing a name: the first one that has the path wins.
        let mut first_error = None;
        for id in candidates {
            match self.walk(id, path) {
                Ok(field) => return Ok(field),
                Err(message) => {
                    first_error.get_or_insert(message);
                }
            }
        }
        let message = first_error.map(|error| error.0).unwrap_or_default();
        error(format!("{struct_name}.{path}: {message}"))
    }

    /// [`Self::member_offset`] for one candidate struct; errors are bare messages the caller
    /// prefixes with the path.
    fn walk(&self, struct_id: u32, path: &str) -> Result<FieldInfo, BtfError> {
        let parts: Vec<&str> = path.split('.').collect();
        let mut container = self.resolve(struct_id)?;
        let mut bits = 0u64;
        for (index, part) in parts.iter().enumerate() {
            let walked = parts[..index].join(".");
            if part.is_empty() {
                return error(format!("empty component in path `{path}`"));
            }
            if !container.kind.is_composite() {
                return error(format!(
                    "`{walked}` is {}, not a struct or union",
                    container.kind.describe()
                ));
            }
            let mut budget = MEMBER_BUDGET;
            let found = self
                .find_member(container, part, 0, &mut budget)?
                .ok_or_else(|| match self.string(container.name_off) {
                    Ok(name) if !name.is_empty() => {
                        BtfError(format!("no member `{part}` in {name}"))
                    }
                    _ => BtfError(format!("no member `{part}`")),
                })?;
            bits += found.bit_offset;
            let last = index + 1 == parts.len();
            if let Some(width) = found.bitfield {
                if !last {
                    return error(format!("`{part}` is a bitfield, not a struct or union"));
                }
                // A bitfield that happens to be whole, aligned bytes reads like an integer of
                // that size (sk_protocol was `unsigned int sk_protocol:8` before Linux 5.6).
                if !bits.is_multiple_of(8) || !width.is_multiple_of(8) || width == 0 {
                    return error(format!(
                        "`{part}` is a {width}-bit bitfield at bit {bits}: not byte aligned"
                    ));
                }
                return Ok(FieldInfo {
                    offset: byte_offset(bits)?,
                    size: width / 8,
                });
            }
            if !bits.is_multiple_of(8) {
                return error(format!("`{part}` starts at bit {bits}: not byte aligned"));
            }
            if last {
                let size = self.size_of(found.type_id, 0)?;
                return Ok(FieldInfo {
                    offset: byte_offset(bits)?,
                    size,
                });
            }
            container = self.resolve(found.type_id)?;
        }
        error(format!("empty path `{path}`"))
    }

    /// Finds member `name` of `container`, looking inside anonymous struct/union members;
    /// `nesting` and `budget` bound the search so cyclic anonymous members end in an error.
    fn find_member(
        &self,
        container: Type,
        name: &str,
        nesting: u32,
        budget: &mut u32,
    ) -> Result<Option<Found>, BtfError> {
        if nesting > MAX_ANONYMOUS_NESTING {
            return error("anonymous members nest too deeply (cyclic BTF?)");
        }
        for index in 0..usize::from(container.vlen) {
            *budget = budget.checked_sub(1).ok_or_else(|| {
                BtfError("anonymous members nest too deeply (cyclic BTF?)".into())
            })?;
            let [name_off, type_id, raw_offset] = self.member(container, index);
            // btf.rst 2.2.4: with kind_flag set, `offset` holds the bitfield size in bits
            // 24-31 and the bit offset in bits 0-23; without it, all 32 bits are the offset
            // and a bitfield's size is in its INT type's encoding.
            let (bit_offset, bitfield_size) = if container.kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            let member_name = self.string(name_off)?;
            if member_name == name {
                let (extra_bits, bitfield) = if container.kind_flag {
                    (0, (bitfield_size != 0).then_some(bitfield_size))
                } else {
                    self.int_bitfield(type_id)?
                };
                return Ok(Some(Found {
                    bit_offset: u64::from(bit_offset) + extra_bits,
                    type_id,
                    bitfield,
                }));
            }
            if member_name.is_empty() {
                let inner = self.resolve(type_id)?;
                if inner.kind.is_composite()
                    && let Some(found) = self.find_member(inner, name, nesting + 1, budget)?
                {
                    return Ok(Some(Found {
                        bit_offset: u64::from(bit_offset) + found.bit_offset,
                        ..found
                    }));
                }
            }
        }
        Ok(None)
    }

    /// For a member of a struct without kind_flag: whether its INT type describes a bitfield
    /// (btf.rst 2.2.1: `BTF_INT_OFFSET` is added to the member's offset, `BTF_INT_BITS` is the
    /// width), as (extra bit offset, width).
    fn int_bitfield(&self, type_id: u32) -> Result<(u64, Option<u32>), BtfError> {
        let ty = self.resolve(type_id)?;
        if ty.kind != Kind::Int {
            return Ok((0, None));
        }
        let encoding = self.trailing(ty).first().copied().unwrap_or(0);
        let offset = (encoding >> 16) & 0xff;
        let bits = encoding & 0xff;
        if offset == 0 && u64::from(bits) == u64::from(ty.size_or_id) * 8 {
            Ok((0, None))
        } else {
            Ok((u64::from(offset), Some(bits)))
        }
    }

    /// `[name_off, type, offset]` of member `index` of a struct/union (`index < vlen`).
    fn member(&self, container: Type, index: usize) -> [u32; 3] {
        let trailing = self.trailing(container);
        let at = index * 3;
        match trailing.get(at..at + 3) {
            Some(&[name_off, type_id, offset]) => [name_off, type_id, offset],
            // Unreachable: parse_types checked every type's trailing data fits.
            _ => [0, 0, 0],
        }
    }

    /// Size of `struct_name` (a struct or union).
    pub fn struct_size(&self, struct_name: &str) -> Result<u32, BtfError> {
        let id = self
            .named(Family::Composite, struct_name)
            .next()
            .ok_or_else(|| BtfError(format!("no struct {struct_name} in BTF")))?;
        self.size_of(id, 0)
    }

    /// The offset of per-CPU variable `name` in the per-CPU section: its entry (`struct
    /// btf_var_secinfo`: type, offset, size) in the DATASEC `.data..percpu`, the one section
    /// whose variables pahole encodes in vmlinux BTF (btf.rst 2.2.15).
    pub fn percpu_offset(&self, name: &str) -> Result<u32, BtfError> {
        let section = self
            .types
            .iter()
            .find(|ty| ty.kind == Kind::Datasec && self.string(ty.name_off) == Ok(PERCPU_SECTION))
            .ok_or_else(|| BtfError(format!("no {PERCPU_SECTION} section in BTF")))?;
        self.trailing(*section)
            .chunks_exact(3)
            .find_map(|entry| {
                let var = self.get(entry[0]).ok()?;
                (var.kind == Kind::Var && self.string(var.name_off) == Ok(name)).then_some(entry[1])
            })
            .ok_or_else(|| BtfError(format!("no per-CPU variable {name} in BTF")))
    }

    /// Enumerators of `enum name` as (name, value), in declaration order.
    ///
    /// ENUM values are signed when the type's kind_flag is set and unsigned otherwise
    /// (btf.rst 2.2.6; BTF from before Linux 6.0 had no flag and meant signed, which only
    /// differs for values above `i32::MAX`). ENUM64 values above `i64::MAX` keep their bit
    /// pattern.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        // `enum foo;` forward declarations are ENUMs without enumerators.
        let id = self
            .named(Family::Enum, name)
            .find(|&id| self.types.get(id as usize).is_some_and(|ty| ty.vlen > 0))
            .or_else(|| self.named(Family::Enum, name).next())
            .ok_or_else(|| BtfError(format!("no enum {name} in BTF")))?;
        let ty = self.get(id)?;
        let trailing = self.trailing(ty);
        let stride = if ty.kind == Kind::Enum64 { 3 } else { 2 };
        trailing
            .chunks_exact(stride)
            .map(|entry| {
                let value = match *entry {
                    [_, low, high] => ((u64::from(high) << 32) | u64::from(low)) as i64,
                    [_, value] if ty.kind_flag => i64::from(value as i32),
                    [_, value] => i64::from(value),
                    _ => 0,
                };
                Ok((self.string(entry[0])?.to_owned(), value))
            })
            .collect()
    }

    /// A raw BTF blob in which each of `typedefs` and `functions` this BTF has sits at the
    /// id this BTF gives it, every other id below the highest being an anonymous pointer to
    /// void: all that aya needs to load tp_btf programs (`btf_trace_<tracepoint>` typedefs)
    /// and fentry/fexit ones (functions), which it finds by name and kind and passes to the
    /// kernel by id (aya/src/programs/tp_btf.rs and fexit.rs, `load`). aya then never holds
    /// the ~150 000 types of vmlinux next to ours (its loader's own parse is dropped before
    /// ours starts: `Tracer::start`).
    pub fn attach_targets(&self, typedefs: &[&str], functions: &[&str]) -> Vec<u8> {
        let mut wanted: Vec<(u32, u32, &str)> = typedefs
            .iter()
            .filter_map(|&name| {
                let id = self.named(Family::TraceTypedef, name).next()?;
                Some((id, BlobWriter::TYPEDEF, name))
            })
            .chain(functions.iter().filter_map(|&name| {
                let id = self.named(Family::Func, name).next()?;
                Some((id, BlobWriter::FUNC, name))
            }))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut blob = BlobWriter::new();
        for (id, kind, name) in wanted {
            while blob.count + 1 < id {
                blob.add(BlobWriter::PTR, false, "", 0, 0, &[]);
            }
            // A FUNC's vlen is its linkage (btf.rst 2.2.12); aya reads only name and kind.
            blob.add(kind, false, name, 0, 0, &[]);
        }
        blob.bytes()
    }

    /// Whether the kernel has a function `name` (a BTF FUNC: a function fentry and kprobes can
    /// target, not inlined away).
    pub fn has_function(&self, name: &str) -> bool {
        self.named(Family::Func, name).next().is_some()
    }

    /// How many arguments raw tracepoint `name` passes (its `btf_trace_<name>` prototype
    /// without the leading `void *__data`); `None` when the BTF lacks it.
    pub fn tracepoint_arguments(&self, name: &str) -> Option<usize> {
        let typedef_name = format!("{TRACE_TYPEDEF_PREFIX}{name}");
        let typedef = self.named(Family::TraceTypedef, &typedef_name).next()?;
        let pointer = self.resolve(typedef).ok()?;
        let prototype = self.resolve(pointer.size_or_id).ok()?;
        (pointer.kind == Kind::Ptr && prototype.kind == Kind::FuncProto)
            .then(|| usize::from(prototype.vlen).saturating_sub(1))
    }

    /// Ids of the types of `family` called `name`, in id order.
    fn named<'a>(&'a self, family: Family, name: &'a str) -> impl Iterator<Item = u32> + 'a {
        let start = self
            .by_name
            .partition_point(|entry| self.compare(entry, family, name) == Ordering::Less);
        self.by_name[start..]
            .iter()
            .take_while(move |entry| self.compare(entry, family, name) == Ordering::Equal)
            .map(|entry| entry.id)
    }

    fn get(&self, id: u32) -> Result<Type, BtfError> {
        self.types
            .get(id as usize)
            .copied()
            .ok_or_else(|| BtfError(format!("BTF type id {id} out of range")))
    }

    /// The kind-specific data of `ty`.
    fn trailing(&self, ty: Type) -> &[u32] {
        let start = ty.extra as usize;
        let len = ty.kind.trailing_words(usize::from(ty.vlen));
        self.words.get(start..start + len).unwrap_or(&[])
    }

    fn string(&self, offset: u32) -> Result<&str, BtfError> {
        let rest = self
            .strings
            .get(offset as usize..)
            .filter(|rest| !rest.is_empty())
            .ok_or_else(|| BtfError(format!("BTF string offset {offset} out of bounds")))?;
        let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..len])
            .map_err(|_| BtfError(format!("BTF string at {offset} is not UTF-8")))
    }

    /// Follows typedefs and qualifiers from `id` to the type they stand for.
    fn resolve(&self, id: u32) -> Result<Type, BtfError> {
        let mut current = id;
        for _ in 0..MAX_CHAIN {
            let ty = self.get(current)?;
            if !ty.kind.is_alias() {
                return Ok(ty);
            }
            current = ty.size_or_id;
        }
        error(format!(
            "BTF typedef/qualifier chain from type {id} is too long"
        ))
    }

    /// `sizeof` the type `id`.
    fn size_of(&self, id: u32, nesting: u32) -> Result<u32, BtfError> {
        if nesting > MAX_ARRAY_NESTING {
            return error("BTF arrays nest too deeply (cyclic BTF?)");
        }
        let ty = self.resolve(id)?;
        match ty.kind {
            Kind::Int
            | Kind::Struct
            | Kind::Union
            | Kind::Enum
            | Kind::Enum64
            | Kind::Float
            | Kind::Datasec => Ok(ty.size_or_id),
            Kind::Ptr => Ok(self.pointer_size),
            Kind::Array => {
                let (element, count) = match *self.trailing(ty) {
                    [element, _index, count] => (element, count),
                    _ => (0, 0),
                };
                self.size_of(element, nesting + 1)?
                    .checked_mul(count)
                    .ok_or_else(|| BtfError(format!("BTF array type {id} is too large")))
            }
            kind => error(format!(
                "BTF type {id} is {} and has no size",
                kind.describe()
            )),
        }
    }
}

/// Writes raw BTF blobs type by type (the layout [`Btf::from_bytes`] reads): for aya's view
/// of the attach targets ([`Btf::attach_targets`]) and for the tests' hand-made layouts.
pub(crate) struct BlobWriter {
    types: Vec<u32>,
    strings: Vec<u8>,
    count: u32,
}

impl BlobWriter {
    /// `BTF_KIND_PTR`, `BTF_KIND_TYPEDEF`, `BTF_KIND_FUNC` (include/uapi/linux/btf.h).
    const PTR: u32 = 2;
    const TYPEDEF: u32 = 8;
    const FUNC: u32 = 12;

    pub(crate) fn new() -> Self {
        Self {
            types: Vec::new(),
            // btf.rst 2.1: the first string is the empty name.
            strings: vec![0],
            count: 0,
        }
    }

    /// Adds a string; returns its offset (0, the empty name, for "").
    pub(crate) fn name(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let offset = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        offset
    }

    /// Adds a type with its kind-specific `data`; returns its id.
    pub(crate) fn add(
        &mut self,
        kind: u32,
        flag: bool,
        name: &str,
        vlen: u32,
        size: u32,
        data: &[u32],
    ) -> u32 {
        let name = self.name(name);
        let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
        self.types.extend([name, info, size]);
        self.types.extend_from_slice(data);
        self.count += 1;
        self.count
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let types: Vec<u8> = self.types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut out = Vec::with_capacity(MIN_HEADER_LEN + types.len() + self.strings.len());
        out.extend(MAGIC.to_le_bytes());
        out.extend([VERSION, 0]);
        for word in [
            MIN_HEADER_LEN as u32,
            0,
            types.len() as u32,
            types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend(word.to_le_bytes());
        }
        out.extend(types);
        out.extend(&self.strings);
        out
    }
}

fn byte_offset(bits: u64) -> Result<u32, BtfError> {
    u32::try_from(bits / 8).map_err(|_| BtfError(format!("offset of {bits} bits is too large")))
}

/// `struct btf_header` (include/uapi/linux/btf.h).
struct Header {
    /// `hdr_len`: the sections' offsets count from here.
    len: usize,
    type_off: u32,
    type_len: u32,
    str_off: u32,
    str_len: u32,
}

impl Header {
    fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let u32_at = |at: usize| {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| {
                    BtfError(format!(
                        "BTF header truncated ({} bytes of data)",
                        data.len()
                    ))
                })
        };
        let magic = data
            .get(..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| BtfError(format!("not BTF: only {} bytes", data.len())))?;
        if magic == MAGIC.swap_bytes() {
            return error("big-endian BTF is not supported");
        }
        if magic != MAGIC {
            return error(format!(
                "not BTF: magic {magic:#06x}, expected {MAGIC:#06x}"
            ));
        }
        let version = data.get(2).copied().unwrap_or(0);
        if version != VERSION {
            return error(format!("unsupported BTF version {version}"));
        }
        let len = u32_at(4)? as usize;
        if len < MIN_HEADER_LEN || len > data.len() {
            return error(format!(
                "bad BTF header length {len} ({} bytes of data)",
                data.len()
            ));
        }
        Ok(Self {
            len,
            type_off: u32_at(8)?,
            type_len: u32_at(12)?,
            str_off: u32_at(16)?,
            str_len: u32_at(20)?,
        })
    }
}

/// The bytes of a section `len` long at `offset` after the header.
fn section<'a>(
    data: &'a [u8],
    header_len: usize,
    offset: u32,
    len: u32,
    what: &str,
) -> Result<&'a [u8], BtfError> {
    let start = header_len.checked_add(offset as usize);
    let end = start.and_then(|start| start.checked_add(len as usize));
    match (start, end) {
        (Some(start), Some(end)) if end <= data.len() => Ok(&data[start..end]),
        _ => error(format!(
            "BTF {what} section ({len} bytes at {offset} after the header) extends past the \
             end of the data ({} bytes)",
            data.len()
        )),
    }
}

/// Walks the type section: the kinds and extents of every type, checking that each one's
/// trailing data lies inside the section.
fn parse_types(words: &[u32]) -> Result<Vec<Type>, BtfError> {
    let mut types = vec![Type::VOID];
    let mut at = 0;
    while at < words.len() {
        let id = types.len();
        let &[name_off, info, size_or_id] = words.get(at..at + TYPE_HEADER_WORDS).unwrap_or(&[])
        else {
            return error(format!(
                "BTF type {id} at byte {}: header runs past the end of the type section",
                at * 4
            ));
        };
        // btf.rst 2.2: bits 0-15 vlen, 24-28 kind, 31 kind_flag.
        let raw_kind = (info >> 24) & 0x1f;
        let kind = Kind::from_raw(raw_kind).ok_or_else(|| {
            BtfError(format!(
                "BTF type {id} at byte {}: unknown kind {raw_kind}",
                at * 4
            ))
        })?;
        let vlen = (info & 0xffff) as u16;
        let extra = at + TYPE_HEADER_WORDS;
        let end = extra + kind.trailing_words(usize::from(vlen));
        if end > words.len() {
            return error(format!(
                "BTF type {id} at byte {}: its data runs past the end of the type section",
                at * 4
            ));
        }
        types.push(Type {
            name_off,
            kind,
            kind_flag: info >> 31 == 1,
            vlen,
            size_or_id,
            // `words` came from a section whose byte length is a u32.
            extra: extra as u32,
        });
        at = end;
    }
    Ok(types)
}

/// The BTF fixture saved from the machine the offsets tests were written on, and its parse,
/// shared by the tests of every `kernel` module (parsed once: a debug build takes a while).
#[cfg(test)]
pub(crate) mod fixture {
    use std::{io::Read as _, sync::OnceLock};

    use super::Btf;

    /// `gzip -9 < /sys/kernel/btf/vmlinux` on Linux 6.18.44 (x86_64, the development VM).
    pub const PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/btf/vmlinux-6.18.gz"
    );

    pub fn bytes() -> &'static [u8] {
        static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
        BYTES.get_or_init(|| {
            let file = std::fs::File::open(PATH).expect("BTF fixture");
            let mut data = Vec::new();
            flate2::read::GzDecoder::new(file)
                .read_to_end(&mut data)
                .expect("gunzip BTF fixture");
            data
        })
    }

    pub fn btf() -> &'static Btf {
        static BTF: OnceLock<Btf> = OnceLock::new();
        BTF.get_or_init(|| Btf::from_bytes(bytes()).expect("parse BTF fixture"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds small BTF blobs type by type, for layouts the fixture does not have and for
    /// malformed input.
    type Builder = BlobWriter;

    const INT: u32 = 1;
    const PTR: u32 = 2;
    const ARRAY: u32 = 3;
    const STRUCT: u32 = 4;
    const UNION: u32 = 5;
    const ENUM: u32 = 6;
    const TYPEDEF: u32 = 8;
    const CONST: u32 = 10;
    const FUNC: u32 = 12;
    const FUNC_PROTO: u32 = 13;
    const ENUM64: u32 = 19;
    const FLAG: bool = true;

    impl BlobWriter {
        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.add(INT, false, name, 0, size, &[size * 8])
        }

        /// A struct from (name, type, offset word) members.
        fn composite(
            &mut self,
            kind: u32,
            flag: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let data: Vec<u32> = members
                .iter()
                .flat_map(|&(member, ty, offset)| {
                    let member = self.name(member);
                    [member, ty, offset]
                })
                .collect();
            self.add(kind, flag, name, members.len() as u32, size, &data)
        }
    }

    /// A `struct sample` with the shapes vmlinux has: anonymous unions and structs, typedefs,
    /// qualifiers, arrays, pointers, kind_flag bitfields; plus a struct using the older
    /// INT-encoded bitfields, enums of every flavour, and a function.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let u8_ = b.int("unsigned char", 1);
        let u16_ = b.int("short unsigned int", 2);
        let u32_ = b.int("unsigned int", 4);
        let long = b.int("long int", 8);
        let be16 = b.add(TYPEDEF, false, "__be16", 0, u16_, &[]);
        let const_be16 = b.add(CONST, false, "", 0, be16, &[]);
        let ptr = b.add(PTR, false, "", 0, u8_, &[]);
        let name = b.add(ARRAY, false, "", 0, 0, &[u8_, u32_, 16]);
        let names = b.add(ARRAY, false, "", 0, 0, &[name, u32_, 2]);
        // union { u32 pair; struct { const __be16 port; u16 num; }; }
        let ports = b.composite(
            STRUCT,
            false,
            "",
            4,
            &[("port", const_be16, 0), ("num", u16_, 16)],
        );
        let pair = b.composite(UNION, false, "", 4, &[("pair", u32_, 0), ("", ports, 0)]);
        let inner = b.composite(
            STRUCT,
            false,
            "inner",
            16,
            &[("a", u32_, 0), ("b", ptr, 64)],
        );
        let inner_t = b.add(TYPEDEF, false, "inner_t", 0, inner, &[]);
        // With kind_flag, a member's offset word is (bitfield size << 24) | bit offset: here
        // bits 96 (byte 12), 104 (byte 13) and 108.
        b.composite(
            STRUCT,
            FLAG,
            "sample",
            64,
            &[
                ("head", long, 0),
                ("", pair, 64),
                ("kind", u8_, (3 << 24) | 0x60),
                ("whole", u8_, (8 << 24) | 0x68),
                ("odd", u16_, (8 << 24) | 0x6c),
                ("in", inner_t, 128),
                ("names", names, 256),
            ],
        );
        // Without kind_flag, a bitfield member points at an INT whose encoding carries
        // BTF_INT_OFFSET (bits 16-23) and BTF_INT_BITS (bits 0-7).
        let bits3 = b.add(INT, false, "unsigned int", 0, 4, &[(2 << 16) | 3]);
        let bits8 = b.add(INT, false, "unsigned int", 0, 4, &[8]);
        b.composite(
            STRUCT,
            false,
            "old",
            8,
            &[("flags", bits3, 0), ("proto", bits8, 8), ("x", u32_, 32)],
        );
        let [red, mask, neg, big] = ["RED", "MASK", "NEG", "BIG"].map(|n| b.name(n));
        b.add(ENUM, false, "flags_u", 2, 4, &[red, 1, mask, 0xffff_0000]);
        b.add(ENUM, FLAG, "flags_s", 1, 4, &[neg, (-2i32) as u32]);
        b.add(ENUM64, false, "wide", 1, 8, &[big, 5, 1]);
        let proto = b.add(FUNC_PROTO, false, "", 0, u32_, &[]);
        b.add(FUNC, false, "do_thing", 0, proto, &[]);
        b.bytes()
    }

    fn field(offset: u32, size: u32) -> FieldInfo {
        FieldInfo { offset, size }
    }

    #[test]
    fn paths_through_anonymous_members_typedefs_and_qualifiers() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        assert_eq!(btf.member_offset("sample", "head").unwrap(), field(0, 8));
        assert_eq!(btf.member_offset("sample", "pair").unwrap(), field(8, 4));
        // Two anonymous levels; the member type is const __be16 → 2 bytes.
        assert_eq!(btf.member_offset("sample", "port").unwrap(), field(8, 2));
        assert_eq!(btf.member_offset("sample", "num").unwrap(), field(10, 2));
        // Through a typedef'd struct.
        assert_eq!(btf.member_offset("sample", "in.b").unwrap(), field(24, 8));
        assert_eq!(btf.member_offset("inner", "b").unwrap(), field(8, 8));
        // char names[2][16].
        assert_eq!(btf.member_offset("sample", "names").unwrap(), field(32, 32));
        assert_eq!(btf.struct_size("sample").unwrap(), 64);
        assert_eq!(btf.struct_size("inner").unwrap(), 16);
        assert!(btf.has_function("do_thing"));
        assert!(!btf.has_function("sample"));
    }

    #[test]
    fn bitfields_only_when_whole_aligned_bytes() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        let error = btf.member_offset("sample", "kind").unwrap_err().0;
        assert!(
            error.contains("sample.kind") && error.contains("3-bit bitfield"),
            "{error}"
        );
        assert_eq!(btf.member_offset("sample", "whole").unwrap(), field(13, 1));
        let error = btf.member_offset("sample", "odd").unwrap_err().0;
        assert!(error.contains("at bit 108"), "{error}");
        // INT-encoded bitfields (kind_flag clear).
        let error = btf.member_offset("old", "flags").unwrap_err().0;
        assert!(error.contains("3-bit bitfield at bit 2"), "{error}");
        assert_eq!(btf.member_offset("old", "proto").unwrap(), field(1, 1));
        assert_eq!(btf.member_offset("old", "x").unwrap(), field(4, 4));
    }

    #[test]
    fn path_errors_name_the_path() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        for (path, expected) in [
            ("nope", "sample.nope: no member `nope` in sample"),
            (
                "head.x",
                "sample.head.x: `head` is an integer, not a struct or union",
            ),
            (
                "in.b.x",
                "sample.in.b.x: `in.b` is a pointer, not a struct or union",
            ),
            ("in..a", "sample.in..a: empty component in path `in..a`"),
        ] {
            assert_eq!(btf.member_offset("sample", path).unwrap_err().0, expected);
        }
        assert_eq!(
            btf.member_offset("absent", "x").unwrap_err().0,
            "absent.x: no struct absent in BTF"
        );
    }

    #[test]
    fn enums_signed_unsigned_and_64_bit() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        assert_eq!(
            btf.enum_values("flags_u").unwrap(),
            [("RED".to_owned(), 1), ("MASK".to_owned(), 0xffff_0000)]
        );
        assert_eq!(
            btf.enum_values("flags_s").unwrap(),
            [("NEG".to_owned(), -2)]
        );
        assert_eq!(
            btf.enum_values("wide").unwrap(),
            [("BIG".to_owned(), (1 << 32) + 5)]
        );
        assert!(btf.enum_values("sample").is_err());
    }

    #[test]
    fn cycles_end_in_errors() {
        let mut b = Builder::new();
        let u32_ = b.int("unsigned int", 4);
        // Type 2 is a struct whose anonymous member is itself; type 3 an array of itself;
        // type 4 a typedef of itself.
        b.composite(STRUCT, false, "loop", 4, &[("", 2, 0), ("", 2, 0)]);
        b.add(ARRAY, false, "", 0, 0, &[3, u32_, 2]);
        b.add(TYPEDEF, false, "self", 0, 4, &[]);
        b.composite(STRUCT, false, "holder", 8, &[("arr", 3, 0), ("t", 4, 32)]);
        let btf = Btf::from_bytes(&b.bytes()).unwrap();
        assert!(
            btf.member_offset("loop", "x")
                .unwrap_err()
                .0
                .contains("nest too deeply")
        );
        assert!(
            btf.member_offset("holder", "arr")
                .unwrap_err()
                .0
                .contains("nest too deeply")
        );
        assert!(
            btf.member_offset("holder", "t")
                .unwrap_err()
                .0
                .contains("too long")
        );
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_not_a_panic() {
        let sample = sample();
        // Every prefix of a valid blob: a shorter string section loses its final NUL, a shorter
        // type section cuts a type.
        for len in 0..sample.len() {
            assert!(
                Btf::from_bytes(&sample[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        // Every single-byte corruption, with a few values: may parse or fail, must not panic;
        // lookups on whatever parsed must not panic either.
        for at in 0..sample.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut data = sample.clone();
                data[at] = value;
                if let Ok(btf) = Btf::from_bytes(&data) {
                    for path in ["head", "port", "in.b", "names", "kind", "whole"] {
                        let _ = btf.member_offset("sample", path);
                    }
                    let _ = btf.member_offset("old", "proto");
                    let _ = btf.struct_size("sample");
                    let _ = btf.enum_values("flags_u");
                    let _ = btf.enum_values("wide");
                }
            }
        }
        // Pseudo-random garbage behind a valid header.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for round in 0..200 {
            let mut data = sample[..24].to_vec();
            for _ in 0..(round * 7) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                data.push(state as u8);
            }
            let _ = Btf::from_bytes(&data);
        }
        // Header fields pointing anywhere.
        for (at, value) in [
            (4, u32::MAX),
            (8, u32::MAX),
            (12, u32::MAX),
            (16, u32::MAX),
            (20, u32::MAX),
            (4, 0),
        ] {
            let mut data = sample.clone();
            data[at..at + 4].copy_from_slice(&u32::to_le_bytes(value));
            assert!(
                Btf::from_bytes(&data).is_err(),
                "header word at {at} = {value:#x}"
            );
        }
        assert_eq!(
            Btf::from_bytes(&[0xeb, 0x9f, 1, 0]).unwrap_err().0,
            "big-endian BTF is not supported"
        );
    }

    #[test]
    fn the_fixture_truncated_or_corrupted() {
        let bytes = fixture::bytes();
        for len in [0, 1, 3, 23, 24, 100, 4096, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                Btf::from_bytes(&bytes[..len]).is_err(),
                "truncated to {len}"
            );
        }
        // An unknown kind in the first type.
        let mut data = bytes[..64 * 1024].to_vec();
        data[24 + 7] = 0x1f;
        assert!(Btf::from_bytes(&data).is_err());
    }

    /// Values read with `bpftool btf dump file /sys/kernel/btf/vmlinux format raw` on the
    /// machine the fixture comes from (bits_offset / 8, anonymous members summed by hand).
    #[test]
    fn the_fixture_matches_bpftool() {
        let btf = fixture::btf();
        assert_eq!(btf.type_count(), 126_572);
        assert_eq!(btf.struct_size("sk_buff").unwrap(), 224);
        assert_eq!(btf.struct_size("sock").unwrap(), 784);
        // [873] sk_buff: anon union @0 → anon struct @0 → anon union @128 bits → dev.
        assert_eq!(btf.member_offset("sk_buff", "dev").unwrap(), field(16, 8));
        // Anon union @1024 bits → anon struct (the `headers` struct_group) → network_header
        // @416 bits: 128 + 52.
        assert_eq!(
            btf.member_offset("sk_buff", "network_header").unwrap(),
            field(180, 2)
        );
        // [3777] sock_common: anon union @96 bits → anon struct → skc_num @16 bits.
        assert_eq!(
            btf.member_offset("sock", "__sk_common.skc_num").unwrap(),
            field(14, 2)
        );
        // net_device.name is `char name[16]` @2240 bits.
        assert_eq!(
            btf.member_offset("net_device", "name").unwrap(),
            field(280, 16)
        );
        // sk_buff.pkt_type is `__u8 pkt_type:3`.
        let error = btf.member_offset("sk_buff", "pkt_type").unwrap_err().0;
        assert!(
            error.contains("sk_buff.pkt_type") && error.contains("bitfield"),
            "{error}"
        );
        assert!(btf.has_function("udp_sendmsg"));
        assert!(btf.has_function("__udp4_lib_rcv"));
        assert!(!btf.has_function("udp_sendmsg_but_not_really"));
        // `btf_trace_kfree_skb`: (void *, skb, location, reason, rx_sk) on 6.18; 5.10 has
        // only (void *, skb, location), which is how drop programs are chosen.
        assert_eq!(btf.tracepoint_arguments("kfree_skb"), Some(4));
        assert_eq!(btf.tracepoint_arguments("icmp_send"), Some(3));
        assert_eq!(btf.tracepoint_arguments("no_such_tracepoint"), None);
        // `struct console` exists twice in this vmlinux; lookups still work.
        assert!(btf.struct_size("console").is_ok());
    }

    /// aya's view of the attach targets gives each the id the kernel's BTF gives it (what the
    /// kernel checks `attach_btf_id` against), and lists nothing else by name.
    #[test]
    fn attach_targets_keep_the_kernel_ids() {
        use aya::Btf as AyaBtf;
        use aya_obj::btf::BtfKind;

        let btf = fixture::btf();
        let (typedefs, functions) = crate::probes::plan::btf_attach_names();
        let typedefs: Vec<&str> = typedefs.iter().map(String::as_str).collect();
        let view = AyaBtf::parse(
            &btf.attach_targets(&typedefs, &functions),
            aya::Endianness::default(),
        )
        .unwrap();
        let mut checked = 0;
        for (names, family, kind) in [
            (&typedefs, Family::TraceTypedef, BtfKind::Typedef),
            (&functions, Family::Func, BtfKind::Func),
        ] {
            for name in names {
                match btf.named(family, name).next() {
                    Some(id) => {
                        assert_eq!(view.id_by_type_name_kind(name, kind).unwrap(), id, "{name}");
                        checked += 1;
                    }
                    None => assert!(view.id_by_type_name_kind(name, kind).is_err(), "{name}"),
                }
            }
        }
        // The fixture (Linux 6.18) has every tp_btf tracepoint and fexit function udptrace
        // uses; `bpftool btf dump file` of it prints `[38122] TYPEDEF 'btf_trace_kfree_skb'`.
        assert!(checked >= typedefs.len(), "{checked} of {typedefs:?}");
        assert_eq!(
            view.id_by_type_name_kind("btf_trace_kfree_skb", BtfKind::Typedef)
                .unwrap(),
            38122
        );
        assert!(
            view.id_by_type_name_kind("udp_sendmsg_but_not_really", BtfKind::Func)
                .is_err()
        );
        // Nothing else is named: a struct the kernel has is not in the view.
        assert!(
            view.id_by_type_name_kind("sk_buff", BtfKind::Struct)
                .is_err()
        );
    }
}
