//! The OpenAI-shaped request parsing and errors: every field a request may
//! carry is checked here, so a bad value is a 400 naming its parameter and
//! never reaches the engine.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rocmforge::sampler::SamplerParams;
use serde_json::{json, Map, Value};

/// An error as OpenAI shapes it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }
    /// 400 invalid_request_error about one parameter.
    pub fn param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError { param: Some(param.to_string()), ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }
    pub fn loading() -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "the model is loading").code("model_loading")
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// Generation settings common to chat and text completions.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_tokens: Option<usize>,
    pub sampling: SamplerParams,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub n: usize,
    /// Chat: `logprobs: true` with `top_logprobs`; text: `logprobs: k`.
    pub logprobs: Option<usize>,
    pub ignore_eos: bool,
    pub json_output: bool,
    /// Added to the logits of these tokens before sampling (OpenAI's
    /// `logit_bias`: token id → bias in [-100, 100]; ids checked against
    /// the vocabulary by the handler).
    pub logit_bias: Vec<(u32, f32)>,
}

/// The most choices (`n`) and alternatives (`top_logprobs`) a request may ask.
pub const MAX_N: usize = 16;
pub const MAX_TOP_LOGPROBS: usize = 20;
pub const MAX_STOPS: usize = 16;

fn num(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::param(key, format!("'{key}' must be a number"))),
    }
}

fn ranged(obj: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match num(obj, key)? {
        Some(v) if !(lo..=hi).contains(&v) => Err(ApiError::param(key, format!("'{key}' is {v}; it must be in [{lo}, {hi}]"))),
        v => Ok(v),
    }
}

fn int(obj: &Map<String, Value>, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if (lo..=hi).contains(&v) => Ok(Some(v)),
            _ => Err(ApiError::param(key, format!("'{key}' is {n}; it must be an integer in [{lo}, {hi}]"))),
        },
        Some(_) => Err(ApiError::param(key, format!("'{key}' must be an integer"))),
    }
}

fn boolean(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::param(key, format!("'{key}' must be true or false"))),
    }
}

/// Parse and check the generation fields of a request body.
pub fn gen_params(obj: &Map<String, Value>, chat: bool) -> Result<GenParams, ApiError> {
    let mut max_tokens = int(obj, "max_tokens", 1, i32::MAX as i64)?;
    if chat {
        if let Some(m) = int(obj, "max_completion_tokens", 1, i32::MAX as i64)? {
            max_tokens = Some(m);
        }
    }
    let mut sampling = SamplerParams {
        temperature: ranged(obj, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
        top_k: int(obj, "top_k", -1, 1 << 20)?.unwrap_or(0).max(0) as usize,
        top_p: ranged(obj, "top_p", 0.0, 1.0)?.unwrap_or(1.0) as f32,
        min_p: ranged(obj, "min_p", 0.0, 1.0)?.unwrap_or(0.0) as f32,
        repeat_penalty: ranged(obj, "repetition_penalty", 0.01, 10.0)?.or(ranged(obj, "repeat_penalty", 0.01, 10.0)?).unwrap_or(1.0) as f32,
        frequency_penalty: ranged(obj, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        presence_penalty: ranged(obj, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
        penalty_last_n: 64,
        seed: 0,
    };
    if sampling.top_p == 0.0 {
        return Err(ApiError::param("top_p", "'top_p' must be greater than 0"));
    }
    sampling.seed = match int(obj, "seed", i64::MIN, i64::MAX)? {
        Some(s) => s as u64,
        None => {
            // no seed: a different one each request
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            t ^ (std::process::id() as u64).rotate_left(32)
        }
    };
    let stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= MAX_STOPS => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| ApiError::param("stop", "'stop' must be a string or a list of strings")))
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => return Err(ApiError::param("stop", format!("'stop' may hold at most {MAX_STOPS} strings"))),
        Some(_) => return Err(ApiError::param("stop", "'stop' must be a string or a list of strings")),
    };
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    let stream = boolean(obj, "stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => boolean(o, "include_usage")?.unwrap_or(false),
        Some(_) => return Err(ApiError::param("stream_options", "'stream_options' must be an object")),
    };
    let n = int(obj, "n", 1, MAX_N as i64)?.unwrap_or(1) as usize;
    let logprobs = if chat {
        let on = boolean(obj, "logprobs")?.unwrap_or(false);
        let top = int(obj, "top_logprobs", 0, MAX_TOP_LOGPROBS as i64)?;
        if top.is_some() && !on {
            return Err(ApiError::param("top_logprobs", "'top_logprobs' needs 'logprobs': true"));
        }
        on.then_some(top.unwrap_or(0) as usize)
    } else {
        int(obj, "logprobs", 0, 5)?.map(|k| k as usize)
    };
    let ignore_eos = boolean(obj, "ignore_eos")?.unwrap_or(false);
    let json_output = match obj.get("response_format") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
            Some("text") => false,
            Some("json_object") => true,
            Some(t) => return Err(ApiError::param("response_format", format!("response_format type {t:?} is not supported (text or json_object)"))),
            None => return Err(ApiError::param("response_format", "'response_format' needs a 'type'")),
        },
        Some(_) => return Err(ApiError::param("response_format", "'response_format' must be an object")),
    };
    if !chat && boolean(obj, "echo")?.unwrap_or(false) {
        return Err(ApiError::param("echo", "'echo' is not supported"));
    }
    if !chat && obj.get("suffix").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::param("suffix", "'suffix' is not supported"));
    }
    if let Some(v) = obj.get("best_of").filter(|v| !v.is_null()) {
        if v.as_u64() != Some(n as u64) && v.as_u64() != Some(1) {
            return Err(ApiError::param("best_of", "'best_of' other than n is not supported"));
        }
    }
    let logit_bias = match obj.get("logit_bias") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let id = k.parse::<u32>().map_err(|_| ApiError::param("logit_bias", format!("logit_bias key {k:?} is not a token id")))?;
                match v.as_f64() {
                    Some(b) if (-100.0..=100.0).contains(&b) => Ok((id, b as f32)),
                    _ => Err(ApiError::param("logit_bias", format!("logit_bias[{k}] must be a number in [-100, 100]"))),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::param("logit_bias", "'logit_bias' must be an object of token id to bias")),
    };
    Ok(GenParams { max_tokens: max_tokens.map(|m| m as usize), sampling, stop, stream, include_usage, n, logprobs, ignore_eos, json_output, logit_bias })
}

/// A completion prompt: a string, a list of strings, a list of token ids or
/// a list of such lists.
#[derive(Debug)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

pub fn prompts(v: Option<&Value>, n_vocab: usize) -> Result<Vec<Prompt>, ApiError> {
    let bad = || ApiError::param("prompt", "'prompt' must be a string, a list of strings, a list of token ids, or a list of lists of token ids");
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|t| match t.as_u64() {
                Some(id) if (id as usize) < n_vocab => Ok(id as u32),
                Some(id) => Err(ApiError::param("prompt", format!("token id {id} is outside the vocabulary ({n_vocab} tokens)"))),
                None => Err(bad()),
            })
            .collect()
    };
    let out = match v {
        None | Some(Value::Null) => return Err(ApiError::param("prompt", "'prompt' is required")),
        Some(Value::String(s)) => vec![Prompt::Text(s.clone())],
        Some(Value::Array(a)) if a.is_empty() => return Err(ApiError::param("prompt", "'prompt' is empty")),
        Some(Value::Array(a)) if a.iter().all(Value::is_number) => vec![Prompt::Tokens(ids(a)?)],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => a.iter().map(|s| Prompt::Text(s.as_str().unwrap_or_default().to_string())).collect(),
        Some(Value::Array(a)) if a.iter().all(Value::is_array) => {
            a.iter().map(|x| ids(x.as_array().map(Vec::as_slice).unwrap_or(&[])).map(Prompt::Tokens)).collect::<Result<_, _>>()?
        }
        Some(_) => return Err(bad()),
    };
    if out.len() > MAX_N {
        return Err(ApiError::param("prompt", format!("at most {MAX_N} prompts per request")));
    }
    Ok(out)
}

/// Check chat messages and make each content a string (text parts joined
/// with newlines), the form every template reads.
pub fn messages(v: Option<&Value>) -> Result<Value, ApiError> {
    let Some(Value::Array(msgs)) = v else {
        return Err(ApiError::param("messages", "'messages' must be a non-empty list of messages"));
    };
    if msgs.is_empty() {
        return Err(ApiError::param("messages", "'messages' must be a non-empty list of messages"));
    }
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let Value::Object(m) = m else { return Err(ApiError::param(&format!("messages[{i}]"), "each message must be an object")) };
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| ApiError::param(&format!("messages[{i}].role"), "each message needs a 'role' string"))?;
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(ApiError::param(&format!("messages[{i}].role"), format!("unknown role {role:?}")));
        }
        let mut m = m.clone();
        let content = match m.get("content") {
            None | Some(Value::Null) if role == "assistant" => Value::Null,
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => texts.push(t.to_string()),
                        (Some(t), _) => return Err(ApiError::param(&format!("messages[{i}].content[{j}]"), format!("content parts of type {t:?} are not supported (text only)"))),
                        _ => return Err(ApiError::param(&format!("messages[{i}].content[{j}]"), "a content part needs 'type' and 'text'")),
                    }
                }
                Value::String(texts.join("\n"))
            }
            _ => return Err(ApiError::param(&format!("messages[{i}].content"), "'content' must be a string or a list of text parts")),
        };
        m.insert("content".into(), content);
        // tool-call arguments arrive as a JSON string; templates expect the
        // object (as Hugging Face and llama.cpp pass it)
        if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
            for c in calls.iter_mut() {
                if let Some(f) = c.get_mut("function").and_then(Value::as_object_mut) {
                    if let Some(Value::String(a)) = f.get("arguments") {
                        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(a) {
                            f.insert("arguments".into(), v);
                        }
                    }
                }
            }
        }
        out.push(Value::Object(m));
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn bad_values_name_their_parameter() {
        for (body, param) in [
            (json!({"temperature": -1}), "temperature"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": -3}), "max_tokens"),
            (json!({"n": 0}), "n"),
            (json!({"n": 100}), "n"),
            (json!({"stop": 5}), "stop"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"response_format": {"type": "xml"}}), "response_format"),
            (json!({"presence_penalty": 3}), "presence_penalty"),
            (json!({"logit_bias": {"12": 101}}), "logit_bias"),
            (json!({"logit_bias": {"x": 1}}), "logit_bias"),
            (json!({"logit_bias": [1]}), "logit_bias"),
        ] {
            let e = gen_params(&obj(body.clone()), true).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        let p = gen_params(&obj(json!({"max_completion_tokens": 7, "stop": ["a", ""], "seed": 3, "logprobs": true, "top_logprobs": 2})), true).unwrap();
        assert_eq!((p.max_tokens, p.stop.clone(), p.sampling.seed, p.logprobs), (Some(7), vec!["a".to_string()], 3, Some(2)));
    }

    #[test]
    fn prompts_take_every_form() {
        assert_eq!(prompts(Some(&json!("hi")), 10).unwrap().len(), 1);
        assert_eq!(prompts(Some(&json!(["a", "b"])), 10).unwrap().len(), 2);
        assert!(matches!(&prompts(Some(&json!([1, 2])), 10).unwrap()[0], Prompt::Tokens(t) if t == &[1, 2]));
        assert_eq!(prompts(Some(&json!([[1], [2, 3]])), 10).unwrap().len(), 2);
        assert_eq!(prompts(Some(&json!([11])), 10).unwrap_err().param.as_deref(), Some("prompt"));
        assert!(prompts(Some(&json!([1, "a"])), 10).is_err());
        assert!(prompts(None, 10).is_err());
    }

    #[test]
    fn content_parts_become_text() {
        let m = messages(Some(&json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]))).unwrap();
        assert_eq!(m[0]["content"], "a\nb");
        assert!(messages(Some(&json!([{"role": "wizard", "content": "x"}]))).is_err());
        assert!(messages(Some(&json!([]))).is_err());
        assert!(messages(Some(&json!([{"role": "user", "content": [{"type": "image_url"}]}]))).is_err());
        let m = messages(Some(&json!([{"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}]))).unwrap();
        assert_eq!(m[0]["tool_calls"][0]["function"]["arguments"], json!({"x": 1}));
    }
}
