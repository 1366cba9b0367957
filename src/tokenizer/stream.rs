//! Streaming detokenization: feed ids one at a time, get text back only once
//! it is complete UTF-8. A multi-byte char split across tokens (byte-fallback
//! pieces, byte-level BPE fragments of emoji) is held until it is whole.

use super::Tokenizer;
use crate::error::{Error, Result};

#[derive(Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

/// Length of the longest prefix of `b` that is valid UTF-8 or invalid beyond
/// repair (so it can be emitted); a trailing incomplete sequence is kept.
fn emit_len(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) => match e.error_len() {
            // incomplete sequence at the end: hold it back
            None => e.valid_up_to(),
            // invalid bytes in the middle: emit through them (as U+FFFD)
            Some(n) => e.valid_up_to() + n + emit_len(&b[e.valid_up_to() + n..]),
        },
    }
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one token; returns the text that is now complete (maybe empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32, special: bool) -> Result<String> {
        let p = tok
            .token_to_piece(id, special)
            .ok_or_else(|| Error::InvalidArgument(format!("token id {id} is outside the vocab")))?;
        self.pending.extend_from_slice(p);
        let n = emit_len(&self.pending);
        let out = String::from_utf8_lossy(&self.pending[..n]).into_owned();
        self.pending.drain(..n);
        Ok(out)
    }

    /// Whatever is still held (an incomplete char at the end of the stream),
    /// as U+FFFD replacement text.
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
