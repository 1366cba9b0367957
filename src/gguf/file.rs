//! A GGUF file mapped into memory, with typed metadata accessors and
//! zero-copy tensor data views.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::error::{GgufError, GgufErrorKind};
use super::reader::{parse_header, GgufHeader, TensorInfo};
use super::value::{Array, Value};
use crate::error::{Error, Result};

const HEADER_ONLY_MAGIC: &[u8; 8] = b"GGUFHEAD";
/// Magic, version and the two counts: no GGUF file is shorter.
const MIN_GGUF_LEN: u64 = 24;

/// Open `path` for reading only if it is a regular file. A directory, a FIFO
/// (whose open would block until a writer comes), a socket or a device is an
/// error that says what the path is, not the errno of a later mmap.
fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::io::{Error as IoError, ErrorKind};
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Never block in open(2) on a FIFO; a regular file ignores the flag.
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path)?;
    let ft = file.metadata()?.file_type();
    if ft.is_file() {
        return Ok(file);
    }
    let what = if ft.is_dir() { "a directory" } else { "not a regular file (a device, FIFO or socket)" };
    Err(IoError::new(ErrorKind::InvalidInput, format!("{what}, not a GGUF model file")))
}

enum Bytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

/// A parsed, validated GGUF file. Tensor data stays in the mapping.
pub struct GgufFile {
    bytes: Bytes,
    pub header: GgufHeader,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.header.version)
            .field("n_kv", &self.header.metadata.len())
            .field("n_tensors", &self.header.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Open and validate a GGUF file. The file is memory-mapped read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| Error::Io { path: path.display().to_string(), source };
        let file = open_regular(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < MIN_GGUF_LEN {
            return Err(Error::Gguf(GgufError::new(0, "magic", GgufErrorKind::Truncated { need: MIN_GGUF_LEN, have: len })));
        }
        // SAFETY: the mapping is read-only; we never hand out references that
        // outlive `self`. Truncating the file under a live mapping is the
        // caller's responsibility, as with every mmap-based loader.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::WillNeed);
        let header = parse_header(&map, map.len() as u64)?;
        Ok(GgufFile { bytes: Bytes::Map(map), header })
    }

    /// Parse a GGUF image held in memory (tests, fuzzing, embedded models).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        let header = parse_header(&bytes, bytes.len() as u64)?;
        Ok(GgufFile { bytes: Bytes::Owned(bytes), header })
    }

    /// A header-only image (see [`GgufFile::header_only_image`]): metadata
    /// and tensor descriptions of a file whose tensor data is not here.
    /// For tools that need shapes only (shape twins); `tensor_data` must not
    /// be called on the result.
    pub fn from_header_only(image: Vec<u8>) -> Result<GgufFile, GgufError> {
        let n = image.len();
        let bad = || GgufError::new(n as u64, "header-only trailer", GgufErrorKind::Truncated { need: 16, have: n as u64 });
        if n < 16 || &image[n - 8..] != HEADER_ONLY_MAGIC {
            return Err(bad());
        }
        let file_len = u64::from_le_bytes(image[n - 16..n - 8].try_into().unwrap());
        let mut head = image;
        head.truncate(n - 16);
        let header = parse_header(&head, file_len)?;
        Ok(GgufFile { bytes: Bytes::Owned(head), header })
    }

    /// This file up to its tensor data, then its length (u64 LE) and the
    /// magic `GGUFHEAD`: a few MiB that stand for the whole file's shapes.
    pub fn header_only_image(&self) -> Vec<u8> {
        let b = self.as_bytes();
        let mut out = b[..(self.header.data_offset as usize).min(b.len())].to_vec();
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(HEADER_ONLY_MAGIC);
        out
    }

    /// True for an image made by [`GgufFile::header_only_image`].
    pub fn is_header_only_image(bytes: &[u8]) -> bool {
        bytes.len() >= 16 && &bytes[bytes.len() - 8..] == HEADER_ONLY_MAGIC
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }

    // ---- metadata ---------------------------------------------------------

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header.index.get(key).map(|&i| &self.header.metadata[i].1)
    }

    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.header.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn wrong_type(key: &str, expected: &'static str) -> Error {
        Error::Gguf(GgufError::new(0, key, GgufErrorKind::WrongType { expected }))
    }

    /// A string value; `Ok(None)` if absent, `Err` if present with another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| Self::wrong_type(key, "string")),
        }
    }

    /// Any integer value that fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_int() {
                Some(x) if (0..=u64::MAX as i128).contains(&x) => Ok(Some(x as u64)),
                _ => Err(Self::wrong_type(key, "non-negative integer")),
            },
        }
    }

    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| Self::wrong_type(key, "number")),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| Self::wrong_type(key, "bool")),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<Option<&Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| Self::wrong_type(key, "array")),
        }
    }

    /// `general.architecture`, required by every model file.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")?.ok_or_else(|| {
            Error::Gguf(GgufError::new(0, "general.architecture", GgufErrorKind::WrongType { expected: "string (missing)" }))
        })
    }

    /// The arch-prefixed key, e.g. `hparam_key("block_count")` → `"llama.block_count"`.
    pub fn hparam_key(&self, suffix: &str) -> Result<String> {
        Ok(format!("{}.{}", self.architecture()?, suffix))
    }

    /// An arch-prefixed integer hyperparameter, e.g. `hparam_u64("embedding_length")`.
    pub fn hparam_u64(&self, suffix: &str) -> Result<Option<u64>> {
        self.get_u64(&self.hparam_key(suffix)?)
    }

    /// An arch-prefixed float hyperparameter, e.g. `hparam_f32("rope.freq_base")`.
    pub fn hparam_f32(&self, suffix: &str) -> Result<Option<f32>> {
        self.get_f32(&self.hparam_key(suffix)?)
    }

    /// `tokenizer.ggml.tokens`.
    pub fn tokenizer_tokens(&self) -> Result<Option<&[String]>> {
        self.string_array("tokenizer.ggml.tokens")
    }

    /// `tokenizer.ggml.merges` (BPE merges, "left right").
    pub fn tokenizer_merges(&self) -> Result<Option<&[String]>> {
        self.string_array("tokenizer.ggml.merges")
    }

    /// `tokenizer.ggml.scores`.
    pub fn tokenizer_scores(&self) -> Result<Option<&[f32]>> {
        match self.get_array("tokenizer.ggml.scores")? {
            None => Ok(None),
            Some(Array::F32(v)) => Ok(Some(v)),
            Some(_) => Err(Self::wrong_type("tokenizer.ggml.scores", "array of f32")),
        }
    }

    /// `tokenizer.ggml.token_type`, widened to i64.
    pub fn tokenizer_token_types(&self) -> Result<Option<Vec<i64>>> {
        match self.get_array("tokenizer.ggml.token_type")? {
            None => Ok(None),
            Some(a) => a
                .to_i64_vec()
                .map(Some)
                .ok_or_else(|| Self::wrong_type("tokenizer.ggml.token_type", "array of integers")),
        }
    }

    /// `tokenizer.chat_template`.
    pub fn chat_template(&self) -> Result<Option<&str>> {
        self.get_str("tokenizer.chat_template")
    }

    fn string_array(&self, key: &str) -> Result<Option<&[String]>> {
        match self.get_array(key)? {
            None => Ok(None),
            Some(Array::String(v)) => Ok(Some(v)),
            Some(_) => Err(Self::wrong_type(key, "array of strings")),
        }
    }

    // ---- tensors ----------------------------------------------------------

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensor_index.get(name).map(|&i| &self.header.tensors[i])
    }

    /// The tensor's bytes, borrowed from the mapping (never copied). The range
    /// was validated against the file length when the header was parsed.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.as_bytes()[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }
}
