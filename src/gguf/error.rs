//! Typed GGUF parse errors: every one names the field and the byte offset.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufErrorKind {
    /// The file ends before the field does.
    Truncated { need: u64, have: u64 },
    BadMagic { found: [u8; 4] },
    UnsupportedVersion(u32),
    /// A count or length is larger than the remaining bytes could hold.
    CountTooLarge { count: u64, limit: u64 },
    UnknownValueType(u32),
    InvalidUtf8,
    NestingTooDeep,
    /// A metadata key appears twice.
    DuplicateKey(String),
    DuplicateTensor(String),
    BadAlignment(u64),
    TooManyDims(u32),
    ZeroDim,
    UnknownTensorType(u32),
    /// Element count or byte size overflows u64.
    SizeOverflow,
    /// Row length is not a multiple of the type's block size.
    BlockMisaligned { ne0: u64, block: u64 },
    /// Tensor data offset not a multiple of `general.alignment`.
    OffsetMisaligned { offset: u64, alignment: u64 },
    /// Tensor data runs past the end of the file.
    OutOfBounds { end: u64, file_len: u64 },
    /// Two tensors' data ranges intersect.
    Overlap { other: String },
    /// A metadata key has the wrong type for its documented meaning.
    WrongType { expected: &'static str },
}

/// A malformed GGUF file: what is wrong, in which field, at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufError {
    pub offset: u64,
    pub field: String,
    pub kind: GgufErrorKind,
}

impl GgufError {
    pub(crate) fn new(offset: u64, field: impl Into<String>, kind: GgufErrorKind) -> Self {
        GgufError { offset, field: field.into(), kind }
    }
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufErrorKind::*;
        write!(f, "corrupt GGUF at byte {} ({}): ", self.offset, self.field)?;
        match &self.kind {
            Truncated { need, have } => write!(f, "file ends early: need {need} bytes, {have} left"),
            BadMagic { found } => write!(f, "bad magic {found:?}, expected \"GGUF\""),
            UnsupportedVersion(v) => write!(f, "unsupported GGUF version {v} (supported: 2, 3)"),
            CountTooLarge { count, limit } => {
                write!(f, "count {count} exceeds what the remaining bytes can hold ({limit})")
            }
            UnknownValueType(t) => write!(f, "unknown metadata value type {t}"),
            InvalidUtf8 => write!(f, "string is not valid UTF-8"),
            NestingTooDeep => write!(f, "arrays nested too deeply"),
            DuplicateKey(k) => write!(f, "duplicate metadata key '{k}'"),
            DuplicateTensor(n) => write!(f, "duplicate tensor name '{n}'"),
            BadAlignment(a) => write!(f, "general.alignment {a} is not a non-zero power of two"),
            TooManyDims(n) => write!(f, "{n} dimensions (at most 4 supported)"),
            ZeroDim => write!(f, "a dimension is zero"),
            UnknownTensorType(t) => write!(f, "unknown tensor type id {t}"),
            SizeOverflow => write!(f, "element count or byte size overflows"),
            BlockMisaligned { ne0, block } => {
                write!(f, "row length {ne0} is not a multiple of the block size {block}")
            }
            OffsetMisaligned { offset, alignment } => {
                write!(f, "data offset {offset} is not a multiple of the alignment {alignment}")
            }
            OutOfBounds { end, file_len } => {
                write!(f, "tensor data ends at byte {end}, past the end of the file ({file_len})")
            }
            Overlap { other } => write!(f, "tensor data overlaps tensor '{other}'"),
            WrongType { expected } => write!(f, "wrong value type, expected {expected}"),
        }
    }
}

impl std::error::Error for GgufError {}
