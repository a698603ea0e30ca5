//! A small reader for the kernel's BTF (Documentation/bpf/btf.rst): enough to resolve struct
//! member offsets by path, enum values by name, and whether a function exists. Rust eBPF has
//! no CO-RE yet, so this is how udptrace learns the running kernel's layouts.
//!
//! Malformed input yields errors, never panics: every read is bounds-checked.

use std::collections::HashMap;

/// BTF kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

const MAGIC: u16 = 0xeb9f;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtfError(pub String);

impl std::fmt::Display for BtfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BtfError {}

fn error<T>(message: impl Into<String>) -> Result<T, BtfError> {
    Err(BtfError(message.into()))
}

#[derive(Clone, Copy, Debug)]
struct Type {
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    /// `size` for INT/STRUCT/UNION/ENUM/DATASEC/FLOAT, `type` for the others.
    size_or_type_id: u32,
    /// Byte offset of the kind-specific data that follows the common header.
    data: usize,
}

/// A struct member's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldInfo {
    /// Byte offset from the start of the outermost struct of the path.
    pub offset: u32,
    /// Size in bytes of the member's type (after typedefs and qualifiers).
    pub size: u32,
}

pub struct Btf {
    data: Vec<u8>,
    types_start: usize,
    strings_start: usize,
    strings_len: usize,
    /// Index 0 is BTF's `void`.
    types: Vec<Type>,
    /// First STRUCT/UNION/ENUM/ENUM64/FUNC of each name.
    by_name: HashMap<(u32, String), u32>,
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| BtfError(format!("reading /sys/kernel/btf/vmlinux: {e}")))?;
        Self::from_bytes(data)
    }

    pub fn from_bytes(data: Vec<u8>) -> Result<Self, BtfError> {
        let u16_at = |at: usize| -> Result<u16, BtfError> {
            data.get(at..at + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or_else(|| BtfError("truncated BTF header".into()))
        };
        let u32_at = |at: usize| -> Result<u32, BtfError> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| BtfError("truncated BTF header".into()))
        };
        if u16_at(0)? != MAGIC {
            return error("not BTF (bad magic; big-endian BTF is not supported)");
        }
        let header_len = u32_at(4)? as usize;
        let types_start = header_len + u32_at(8)? as usize;
        let types_len = u32_at(12)? as usize;
        let strings_start = header_len + u32_at(16)? as usize;
        let strings_len = u32_at(20)? as usize;
        if data.len() < types_start + types_len || data.len() < strings_start + strings_len {
            return error("BTF sections extend past the end of the data");
        }
        let mut btf = Self {
            data,
            types_start,
            strings_start,
            strings_len,
            types: vec![Type {
                kind: 0,
                kind_flag: false,
                vlen: 0,
                size_or_type_id: 0,
                data: 0,
            }],
            by_name: HashMap::new(),
        };
        btf.parse_types(types_len)?;
        Ok(btf)
    }

    fn u32_at(&self, at: usize) -> Result<u32, BtfError> {
        self.data
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| BtfError(format!("BTF read at {at} out of bounds")))
    }

    fn parse_types(&mut self, types_len: usize) -> Result<(), BtfError> {
        let end = self.types_start + types_len;
        let mut at = self.types_start;
        while at < end {
            let name_off = self.u32_at(at)?;
            let info = self.u32_at(at + 4)?;
            let size_or_type_id = self.u32_at(at + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let data = at + 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                other => return error(format!("unknown BTF kind {other} at byte {at}")),
            };
            let id = self.types.len() as u32;
            self.types.push(Type {
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                size_or_type_id,
                data,
            });
            if matches!(
                kind,
                KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FUNC
            ) && name_off != 0
            {
                let name = self.string(name_off)?.to_owned();
                let family = if kind == KIND_ENUM64 { KIND_ENUM } else { kind };
                let family = if family == KIND_UNION {
                    KIND_STRUCT
                } else {
                    family
                };
                self.by_name.entry((family, name)).or_insert(id);
            }
            at = data + extra;
        }
        if at != end {
            return error("BTF type section ends inside a type");
        }
        Ok(())
    }

    fn string(&self, offset: u32) -> Result<&str, BtfError> {
        let offset = offset as usize;
        if offset >= self.strings_len {
            return error(format!("BTF string offset {offset} out of bounds"));
        }
        let start = self.strings_start + offset;
        let bytes = &self.data[start..self.strings_start + self.strings_len];
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..len]).map_err(|_| BtfError("BTF string is not UTF-8".into()))
    }

    fn get(&self, id: u32) -> Result<Type, BtfError> {
        self.types
            .get(id as usize)
            .copied()
            .ok_or_else(|| BtfError(format!("BTF type id {id} out of range")))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<Type, BtfError> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type_id;
                }
                _ => return Ok(ty),
            }
        }
        error("BTF typedef chain too long")
    }

    fn size_of(&self, id: u32) -> Result<u32, BtfError> {
        let ty = self.resolve(id)?;
        match ty.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Ok(ty.size_or_type_id)
            }
            KIND_PTR => Ok(8),
            KIND_ARRAY => {
                let element = self.u32_at(ty.data)?;
                let count = self.u32_at(ty.data + 8)?;
                Ok(self.size_of(element)?.saturating_mul(count))
            }
            kind => error(format!("BTF kind {kind} has no size")),
        }
    }

    /// `(name, type id, bit offset, bitfield size)` of each member of a struct or union.
    fn members(&self, ty: Type) -> Result<Vec<(&str, u32, u32, u32)>, BtfError> {
        (0..ty.vlen)
            .map(|index| {
                let at = ty.data + index * 12;
                let name = self.string(self.u32_at(at)?)?;
                let member_type = self.u32_at(at + 4)?;
                let raw = self.u32_at(at + 8)?;
                let (bit_offset, bitfield) = if ty.kind_flag {
                    (raw & 0x00ff_ffff, raw >> 24)
                } else {
                    (raw, 0)
                };
                Ok((name, member_type, bit_offset, bitfield))
            })
            .collect()
    }

    /// Finds `name` among the members of `ty`, descending into anonymous struct/union members;
    /// returns (bit offset from `ty`, type id, bitfield size).
    fn find_member(
        &self,
        ty: Type,
        name: &str,
        depth: u32,
    ) -> Result<Option<(u32, u32, u32)>, BtfError> {
        if depth > 8 {
            return Ok(None);
        }
        for (member, member_type, bit_offset, bitfield) in self.members(ty)? {
            if member == name {
                return Ok(Some((bit_offset, member_type, bitfield)));
            }
            if member.is_empty() {
                let inner = self.resolve(member_type)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((offset, found, bits)) = self.find_member(inner, name, depth + 1)?
                {
                    return Ok(Some((bit_offset + offset, found, bits)));
                }
            }
        }
        Ok(None)
    }

    /// Offset and size of `path` (`"a.b.c"`) inside `struct_name`.
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<FieldInfo, BtfError> {
        let id = *self
            .by_name
            .get(&(KIND_STRUCT, struct_name.to_owned()))
            .ok_or_else(|| BtfError(format!("no struct {struct_name} in BTF")))?;
        let mut ty = self.resolve(id)?;
        let mut bits = 0u32;
        let mut size = 0;
        for part in path.split('.') {
            if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
                return error(format!(
                    "{struct_name}.{path}: `{part}` is not inside a struct"
                ));
            }
            let (offset, member_type, bitfield) = self
                .find_member(ty, part, 0)?
                .ok_or_else(|| BtfError(format!("{struct_name}.{path}: no member `{part}`")))?;
            if bitfield != 0 || offset % 8 != 0 {
                return error(format!("{struct_name}.{path}: `{part}` is a bitfield"));
            }
            bits += offset;
            size = self.size_of(member_type)?;
            ty = self.resolve(member_type)?;
        }
        Ok(FieldInfo {
            offset: bits / 8,
            size,
        })
    }

    /// Size of `struct_name`.
    pub fn struct_size(&self, struct_name: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(&(KIND_STRUCT, struct_name.to_owned()))
            .ok_or_else(|| BtfError(format!("no struct {struct_name} in BTF")))?;
        self.size_of(id)
    }

    /// Values of `enum name`, as (enumerator name, value).
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let id = *self
            .by_name
            .get(&(KIND_ENUM, name.to_owned()))
            .ok_or_else(|| BtfError(format!("no enum {name} in BTF")))?;
        let ty = self.get(id)?;
        let wide = ty.kind == KIND_ENUM64;
        (0..ty.vlen)
            .map(|index| {
                let at = ty.data + index * if wide { 12 } else { 8 };
                let name = self.string(self.u32_at(at)?)?.to_owned();
                let value = if wide {
                    i64::from(self.u32_at(at + 4)?) | (i64::from(self.u32_at(at + 8)?) << 32)
                } else {
                    i64::from(self.u32_at(at + 4)? as i32)
                };
                Ok((name, value))
            })
            .collect()
    }

    /// Whether the kernel has a function `name` (BTF FUNC), i.e. one fentry/kprobe can target.
    pub fn has_function(&self, name: &str) -> bool {
        self.by_name.contains_key(&(KIND_FUNC, name.to_owned()))
    }

    /// The first `len` bytes of the raw data (tests build truncated inputs from it).
    #[cfg(test)]
    pub fn data_prefix(&self, len: usize) -> Vec<u8> {
        self.data[..len.min(self.data.len())].to_vec()
    }

    /// Number of types (for `doctor`).
    pub fn type_count(&self) -> usize {
        self.types.len() - 1
    }
}
