//! The GGUF header parser. Works on a byte slice that holds at least the
//! header; `file_len` bounds the tensor data. Every read is bounds-checked and
//! every count is checked against the bytes left before anything is allocated,
//! so a corrupt file yields a [`GgufError`], never a panic or a huge allocation.

use std::collections::HashMap;

use super::error::{GgufError, GgufErrorKind as K};
use super::value::{Array, Value, ValueType};
use crate::quant::GgmlType;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The deepest array nesting accepted (arrays of arrays of ...).
pub const MAX_ARRAY_DEPTH: u32 = 8;
pub const MAX_DIMS: u32 = 4;

/// One tensor's description from the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row length (dims[0]) and number of rows (product of the rest).
    pub fn rows(&self) -> (u64, u64) {
        (self.dims[0], self.dims[1..].iter().product())
    }
}

/// Everything in a GGUF file except the tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute offset where tensor data begins.
    pub data_offset: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    field: String,
}

impl<'a> Cursor<'a> {
    fn err(&self, kind: K) -> GgufError {
        GgufError::new(self.pos as u64, self.field.clone(), kind)
    }

    fn left(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(self.err(K::Truncated { need: n, have: self.left() }));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items each at least `min_size` bytes: refuse counts the rest
    /// of the buffer cannot hold, before allocating for them.
    fn count(&mut self, min_size: u64) -> Result<u64, GgufError> {
        let n = self.u64()?;
        let limit = self.left() / min_size.max(1);
        if n > limit {
            self.pos -= 8;
            return Err(self.err(K::CountTooLarge { count: n, limit }));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let start = self.pos;
        let n = self.count(1)?;
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => {
                self.pos = start;
                Err(self.err(K::InvalidUtf8))
            }
        }
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let id = self.u32()?;
        ValueType::from_id(id).ok_or_else(|| {
            self.pos -= 4;
            self.err(K::UnknownValueType(id))
        })
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>()?[0]),
            ValueType::I8 => Value::I8(self.array::<1>()?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            ValueType::Bool => Value::Bool(self.array::<1>()?[0] != 0),
            ValueType::String => Value::String(self.string()?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            ValueType::Array => Value::Array(self.array_value(depth + 1)?),
        })
    }

    fn array_value(&mut self, depth: u32) -> Result<Array, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.err(K::NestingTooDeep));
        }
        let ty = self.value_type()?;
        let n = self.count(ty.min_encoded_size())? as usize;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                const W: usize = std::mem::size_of::<$t>();
                let bytes = self.take((n * W) as u64)?;
                Array::$variant(
                    bytes.chunks_exact(W).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect(),
                )
            }};
        }
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(n as u64)?.to_vec()),
            ValueType::I8 => Array::I8(self.take(n as u64)?.iter().map(|&b| b as i8).collect()),
            ValueType::Bool => Array::Bool(self.take(n as u64)?.iter().map(|&b| b != 0).collect()),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::String => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.string()?);
                }
                Array::String(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.array_value(depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }
}

/// Parse a GGUF header from `buf` (which holds at least the header) for a file
/// of `file_len` bytes. Validates everything the header says about tensor data
/// against `file_len` without touching the data itself.
pub fn parse_header(buf: &[u8], file_len: u64) -> Result<GgufHeader, GgufError> {
    let mut c = Cursor { buf, pos: 0, field: "magic".into() };
    let magic: [u8; 4] = c.array()?;
    if magic != GGUF_MAGIC {
        c.pos = 0;
        return Err(c.err(K::BadMagic { found: magic }));
    }
    c.field = "version".into();
    let version = c.u32()?;
    if version != 2 && version != 3 {
        c.pos -= 4;
        return Err(c.err(K::UnsupportedVersion(version)));
    }
    // Each tensor info needs at least: name len (8) + n_dims (4) + one dim (8)
    // + type (4) + offset (8); each kv at least: key len (8) + type (4) + 1.
    c.field = "tensor_count".into();
    let n_tensors = c.u64()?;
    c.field = "metadata_kv_count".into();
    let n_kv = c.u64()?;
    let left = c.left();
    if n_kv > left / 13 {
        c.pos -= 8;
        return Err(c.err(K::CountTooLarge { count: n_kv, limit: left / 13 }));
    }
    if n_tensors > left / 32 {
        c.pos -= 16;
        c.field = "tensor_count".into();
        return Err(c.err(K::CountTooLarge { count: n_tensors, limit: left / 32 }));
    }

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut index = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        c.field = format!("metadata[{i}].key");
        let key_pos = c.pos;
        let key = c.string()?;
        c.field = format!("metadata['{key}'].type");
        let ty = c.value_type()?;
        c.field = format!("metadata['{key}']");
        let value = c.value(ty, 0)?;
        if index.insert(key.clone(), metadata.len()).is_some() {
            c.pos = key_pos;
            return Err(c.err(K::DuplicateKey(key)));
        }
        metadata.push((key, value));
    }

    let mut alignment = DEFAULT_ALIGNMENT;
    if let Some(&i) = index.get("general.alignment") {
        let v = &metadata[i].1;
        let a = match v.as_int() {
            Some(a) if a > 0 && (a as u128).is_power_of_two() && a <= u32::MAX as i128 => a as u64,
            Some(a) => {
                return Err(GgufError::new(c.pos as u64, "general.alignment", K::BadAlignment(a.max(0) as u64)))
            }
            None => {
                return Err(GgufError::new(c.pos as u64, "general.alignment", K::WrongType { expected: "integer" }))
            }
        };
        alignment = a;
    }

    // Tensor infos: offsets are relative to the data section until it is known.
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
    let mut info_pos = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        c.field = format!("tensor[{i}].name");
        let start = c.pos;
        let name = c.string()?;
        c.field = format!("tensor['{name}'].n_dims");
        let n_dims = c.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            c.pos -= 4;
            return Err(c.err(K::TooManyDims(n_dims)));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            c.field = format!("tensor['{name}'].dims[{d}]");
            let v = c.u64()?;
            if v == 0 {
                c.pos -= 8;
                return Err(c.err(K::ZeroDim));
            }
            dims.push(v);
        }
        c.field = format!("tensor['{name}'].type");
        let type_id = c.u32()?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| {
            GgufError::new(c.pos as u64 - 4, c.field.clone(), K::UnknownTensorType(type_id))
        })?;
        c.field = format!("tensor['{name}'].offset");
        let rel = c.u64()?;
        if rel % alignment != 0 {
            c.pos -= 8;
            return Err(c.err(K::OffsetMisaligned { offset: rel, alignment }));
        }
        let n_elem = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let n_bytes = n_elem.and_then(|_| {
            let rows = dims[1..].iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
            ty.row_bytes(dims[0])?.checked_mul(rows)
        });
        let n_bytes = match (n_elem, n_bytes) {
            (None, _) => return Err(GgufError::new(start as u64, format!("tensor['{name}'].dims"), K::SizeOverflow)),
            (Some(_), None) if dims[0] % ty.block_size() as u64 != 0 => {
                return Err(GgufError::new(
                    start as u64,
                    format!("tensor['{name}'].dims[0]"),
                    K::BlockMisaligned { ne0: dims[0], block: ty.block_size() as u64 },
                ))
            }
            (Some(_), None) => return Err(GgufError::new(start as u64, format!("tensor['{name}'].dims"), K::SizeOverflow)),
            (Some(_), Some(b)) => b,
        };
        if tensor_index.insert(name.clone(), tensors.len()).is_some() {
            return Err(GgufError::new(start as u64, format!("tensor[{i}].name"), K::DuplicateTensor(name)));
        }
        info_pos.push(start as u64);
        tensors.push(TensorInfo { name, dims, ty, offset: rel, n_bytes });
    }

    let header_end = c.pos as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;

    // Absolute offsets; bounds; overlaps (checked on the sorted ranges).
    for (t, &pos) in tensors.iter_mut().zip(&info_pos) {
        let field = || format!("tensor['{}'].offset", t.name);
        let abs = data_offset.checked_add(t.offset);
        let end = abs.and_then(|a| a.checked_add(t.n_bytes));
        match end {
            Some(end) if end <= file_len => t.offset = abs.unwrap(),
            Some(end) => return Err(GgufError::new(pos, field(), K::OutOfBounds { end, file_len })),
            None => return Err(GgufError::new(pos, field(), K::SizeOverflow)),
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.n_bytes > b.offset {
            return Err(GgufError::new(
                info_pos[w[1]],
                format!("tensor['{}'].offset", b.name),
                K::Overlap { other: a.name.clone() },
            ));
        }
    }

    Ok(GgufHeader { version, metadata, index, tensors, tensor_index, alignment, data_offset })
}
