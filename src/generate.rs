//! The generation loop: evaluate a prompt, then sample, stream and append one
//! token at a time until EOS/EOT, a stop string, the token limit, a full
//! context, or the callback says stop.

use crate::error::{Error, Result};
use crate::backend::Logits;
use crate::engine::Session;
use crate::sampler::Sampler;
use crate::tokenizer::StreamDecoder;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced EOS or EOT (not included in the output text).
    EndOfGeneration,
    MaxTokens,
    StopString,
    /// The token callback returned false.
    Callback,
    /// The next token would not fit the context.
    ContextFull,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// Generation stops when the text contains any of these; the stop string
    /// and anything after it are not streamed.
    pub stop: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Generated {
    /// Sampled token ids (including an ending EOS/EOT, if any).
    pub tokens: Vec<u32>,
    /// The streamed text.
    pub text: String,
    pub reason: StopReason,
}

/// Length of the longest tail of `text` that is a proper prefix of one of
/// `stops` (text that may still become a stop string, so it is held back),
/// on a char boundary. The generation loop and the server both use it.
pub fn held_stop_prefix(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .map(|stop| {
            let max = stop.len().saturating_sub(1).min(text.len());
            (1..=max).rev().find(|&k| text.is_char_boundary(text.len() - k) && stop.starts_with(&text[text.len() - k..])).unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

/// Holds back text that might be the start of a stop string.
struct StopMatcher<'a> {
    stops: &'a [String],
    held: String,
}

impl StopMatcher<'_> {
    /// Feed text; returns (text safe to emit, whether a stop string was hit).
    fn push(&mut self, s: &str) -> (String, bool) {
        self.held.push_str(s);
        if let Some(at) = self.stops.iter().filter(|t| !t.is_empty()).filter_map(|t| self.held.find(t.as_str())).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        let cut = self.held.len() - held_stop_prefix(&self.held, self.stops);
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }
}

/// Evaluate `prompt` (appended at the session's position), then generate.
/// `on_token(id, text)` receives each token and the text it completes (may be
/// empty while a multi-byte char or a possible stop string is pending);
/// returning false stops generation. Text still held back at the end is
/// delivered in one last call with id `u32::MAX`.
pub fn generate(
    session: &mut Session,
    sampler: &mut Sampler,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32, &str) -> bool,
) -> Result<Generated> {
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("empty prompt: pass at least one token to continue from".into()));
    }
    let model = session.model.clone();
    let tok = &model.tokenizer;
    // evaluate first: a prompt that fails (context full) leaves the
    // sampler's penalty history as it was
    let mut logits = session.eval(prompt, Logits::Last)?;
    for &t in prompt {
        sampler.accept(t);
    }
    let mut out = Generated { tokens: Vec::new(), text: String::new(), reason: StopReason::MaxTokens };
    let mut dec = StreamDecoder::new();
    let mut stops = StopMatcher { stops: &opts.stop, held: String::new() };
    while out.tokens.len() < opts.max_tokens {
        let id = sampler.sample(&mut logits).map_err(|e| match e {
            // the logits came from the model, not from the caller
            Error::InvalidArgument(m) => Error::InvalidModel(format!("generated token {}: the model's {m}", out.tokens.len())),
            e => e,
        })?;
        sampler.accept(id);
        out.tokens.push(id);
        if tok.vocab.is_eog(id) {
            out.reason = StopReason::EndOfGeneration;
            break;
        }
        let piece = dec.push(tok, id, false)?;
        let (text, hit) = stops.push(&piece);
        out.text.push_str(&text);
        if !on_token(id, &text) {
            out.reason = StopReason::Callback;
            return Ok(out);
        }
        if hit {
            out.reason = StopReason::StopString;
            return Ok(out);
        }
        if session.pos() >= session.n_ctx() {
            out.reason = StopReason::ContextFull;
            break;
        }
        if out.tokens.len() < opts.max_tokens {
            session.eval_into(&[id], Logits::Last, &mut logits)?;
        }
    }
    // flush what was held back (incomplete chars, stop-string prefixes)
    let tail = dec.flush();
    let (mut text, _) = stops.push(&tail);
    text.push_str(&stops.held);
    if !text.is_empty() {
        out.text.push_str(&text);
        on_token(u32::MAX, &text);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::held_stop_prefix;

    #[test]
    fn held_tails_are_stop_prefixes() {
        let h = |t: &str, stop: &str| held_stop_prefix(t, &[stop.to_string()]);
        assert_eq!(h("hello wor", "world"), 3);
        assert_eq!(h("hello", "world"), 0);
        assert_eq!(h("abc\n", "\n\n"), 1);
        // never the whole stop string (that is a match, found before)
        assert_eq!(h("xa", "ab"), 1);
        assert_eq!(h("ab", "ab"), 0);
        assert_eq!(h("xé", "éa"), 2);
        // the longest over several stops; no stops, nothing held
        assert_eq!(held_stop_prefix("x wor", &["wo".to_string(), " world".to_string()]), 4);
        assert_eq!(held_stop_prefix("x wor", &[]), 0);
    }
}
