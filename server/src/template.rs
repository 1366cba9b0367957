//! Chat templates: renders a GGUF's `tokenizer.chat_template` (Jinja) the way
//! Hugging Face transformers' `apply_chat_template(..., tokenize=False)` does,
//! byte for byte.
//!
//! transformers renders with jinja2's `ImmutableSandboxedEnvironment`
//! (`trim_blocks`, `lstrip_blocks`, loop controls, no trailing newline kept,
//! no autoescape), a `tojson` filter that is `json.dumps(ensure_ascii=False)`,
//! and the globals `raise_exception` and `strftime_now`. Before rendering it
//! drops message keys whose value is null and aliases reasoning fields. This
//! module does the same on minijinja (the divergences left are listed in the
//! NOTES that came with it). The tests compare against fixtures rendered by
//! transformers itself (`tests/fixtures/chat/`, `scripts/gen_chat_fixtures.py`).

use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value, ValueKind as Kind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};
use serde_json::{Map, Value as Json};

/// ChatML, the fallback for a GGUF without a chat template. A content given
/// as an array of parts renders as the concatenation of its text parts.
pub const CHATML: &str = "{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\\n' }}
{%- if message['content'] is string %}
{{- message['content'] }}
{%- else %}
{%- for part in message['content'] %}
{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}
";

/// The name the template is stored under (no extension: no autoescape).
const NAME: &str = "chat";

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error comes back as `Err` with minijinja's
    /// message (callers add their own context).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        // jinja2's default `Undefined`: prints as "", iterates as empty, is
        // false, a missing attribute of a defined value is undefined, but an
        // attribute of an undefined value is an error. That is `Lenient`.
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // Python's str and dict methods (strip, split, startswith, items, ...)
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // `{{ x }}` and `|string` give Python's str(x)
        env.set_formatter(|out, _, v| out.write_str(&py_str(v, false)).map_err(Error::from));
        env.add_filter("string", |v: &Value| py_str(v, false));
        env.add_filter("tojson", tojson);
        // jinja2's type tests: `iterable` means iter() works (not on None),
        // `sequence` means len() and [] work (strings and dicts too), and a
        // bool is a number (Python's bool is an int).
        env.add_test("iterable", |v: &Value| {
            v.is_undefined()
                || matches!(
                    v.kind(),
                    Kind::String | Kind::Seq | Kind::Map | Kind::Iterable
                )
        });
        env.add_test("sequence", |v: &Value| {
            v.is_undefined() || matches!(v.kind(), Kind::String | Kind::Seq | Kind::Map)
        });
        env.add_test("number", |v: &Value| {
            matches!(v.kind(), Kind::Number | Kind::Bool)
        });
        // jinja2 built-ins that minijinja keeps in minijinja-contrib
        env.add_filter("striptags", minijinja_contrib::filters::striptags);
        env.add_function("cycler", minijinja_contrib::globals::cycler);
        env.add_function("joiner", minijinja_contrib::globals::joiner);
        // transformers' globals
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
        });
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, rewrite_generation_tags(source))
            .map_err(|e| e.to_string())?;
        let (bos_token, eos_token) = (bos_token.to_owned(), eos_token.to_owned());
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
        })
    }

    /// Renders `messages` (a JSON array of OpenAI-style messages, passed on
    /// with their key order) and the optional `tools` array. `raise_exception`
    /// in the template gives `Err` with exactly its message, any other failure
    /// minijinja's message.
    pub fn render(
        &self,
        messages: &Json,
        tools: Option<&Json>,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let messages = normalize_messages(messages)?;
        let none = Value::from(());
        let ctx = Value::from_pairs([
            ("messages", Value::from(Serde(&messages))),
            (
                "tools",
                tools.map_or(none.clone(), |t| Value::from(Serde(t))),
            ),
            ("documents", none),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(self.bos_token.as_str())),
            ("eos_token", Value::from(self.eos_token.as_str())),
        ]);
        let template = self.env.get_template(NAME).map_err(|e| e.to_string())?;
        template.render(ctx).map_err(|e| {
            // raise_exception(msg) surfaces as msg alone
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(err) = cur {
                if let Some(Raised(msg)) = err.downcast_ref::<Raised>() {
                    return msg.clone();
                }
                cur = err.source();
            }
            e.to_string()
        })
    }
}

/// What transformers does to the messages before rendering: keys whose value
/// is null are dropped (`_normalize_chat_messages`); the first reasoning field
/// set is copied to `thinking` (first key) and `reasoning_content` (last key)
/// (`_alias_reasoning_fields`). An empty conversation is refused.
fn normalize_messages(messages: &Json) -> Result<Vec<Json>, String> {
    let list = messages.as_array().ok_or("messages must be a JSON array")?;
    if list.is_empty() {
        return Err("cannot apply a chat template to an empty conversation".into());
    }
    list.iter()
        .map(|message| {
            let fields = message
                .as_object()
                .ok_or("each message must be a JSON object")?;
            let reasoning = ["reasoning_content", "thinking", "reasoning"]
                .iter()
                .find_map(|k| fields.get(*k).filter(|v| !v.is_null()));
            let mut out = Map::new();
            if let Some(r) = reasoning {
                out.insert("thinking".into(), r.clone());
            }
            // insert() on a present key keeps its place, as in a Python dict
            for (k, v) in fields.iter().filter(|(_, v)| !v.is_null()) {
                out.insert(k.clone(), v.clone());
            }
            if let Some(r) = reasoning {
                out.insert("reasoning_content".into(), r.clone());
            }
            Ok(Json::Object(out))
        })
        .collect()
}

/// The error `raise_exception(msg)` raises, found again in the error chain.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// transformers' `{% generation %}...{% endgeneration %}` (an extension that
/// only records where assistant text is) renders its body unchanged; rewrite
/// the tags to `{% if true %}...{% endif %}`, keeping whitespace control.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let (head, tail) = rest.split_at(start + 2);
        out.push_str(head);
        rest = tail;
        // after "{%": an optional whitespace marker, spaces, then the tag name
        let word = tail.strip_prefix(['-', '+']).unwrap_or(tail).trim_start();
        let tag = ["endgeneration", "generation"].into_iter().find(|t| {
            let after = word
                .strip_prefix(t)
                .map(|a| a.trim_start().trim_start_matches(['-', '+']));
            after.is_some_and(|a| a.starts_with("%}"))
        });
        if let Some(tag) = tag {
            out.push_str(&tail[..tail.len() - word.len()]);
            out.push_str(if tag == "generation" {
                "if true"
            } else {
                "endif"
            });
            rest = &word[tag.len()..];
        }
    }
    out.push_str(rest);
    out
}

/// Python's `str(x)`, or `repr(x)` when `nested` in a container. minijinja's
/// Display already spells None, True and containers the Python way (strings
/// inside quoted and escaped as repr does); floats need Python's repr, also
/// inside containers, so those are walked here.
fn py_str(v: &Value, nested: bool) -> String {
    let items = || v.try_iter().into_iter().flatten();
    match v.kind() {
        Kind::Number if !v.is_integer() => py_float(f64::try_from(v.clone()).unwrap_or(0.0), false),
        Kind::String if nested => format!("{v:?}"),
        Kind::Map => {
            let pair = |k: Value| {
                let item = v.get_item(&k).unwrap_or_default();
                format!("{}: {}", py_str(&k, true), py_str(&item, true))
            };
            format!("{{{}}}", items().map(pair).collect::<Vec<_>>().join(", "))
        }
        Kind::Seq => {
            let items: Vec<String> = items().map(|x| py_str(&x, true)).collect();
            match (v.is_tuple(), items.len()) {
                (true, 1) => format!("({},)", items[0]),
                (true, _) => format!("({})", items.join(", ")),
                (false, _) => format!("[{}]", items.join(", ")),
            }
        }
        _ => v.to_string(),
    }
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form below
/// 1e-4 and from 1e16 on; `json` spells the non-finite values as JSON does.
fn py_float(f: f64, json: bool) -> String {
    if !f.is_finite() {
        let name = match (f.is_nan(), json) {
            (true, true) => "NaN",
            (true, false) => "nan",
            (false, true) => "Infinity",
            (false, false) => "inf",
        };
        return if f < 0.0 {
            format!("-{name}")
        } else {
            name.into()
        };
    }
    let sci = format!("{f:e}"); // the same shortest digits, e.g. "1.5e-7"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    match (-4..16).contains(&exp) {
        true if f.fract() == 0.0 => format!("{f:.1}"),
        true => f.to_string(),
        false => format!(
            "{mantissa}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ),
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, parameters in that order.
fn tojson(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    separators: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let arg = |pos: Option<Value>, name: &str| -> Result<Value, Error> {
        Ok(pos
            .or(kwargs.get::<Option<Value>>(name)?)
            .unwrap_or_default())
    };
    let (ensure_ascii, indent) = (arg(ensure_ascii, "ensure_ascii")?, arg(indent, "indent")?);
    let (separators, sort_keys) = (arg(separators, "separators")?, arg(None, "sort_keys")?);
    kwargs.assert_all_used()?;
    // an int indents by that many spaces, a string by itself
    let indent = match indent.kind() {
        Kind::None | Kind::Undefined => None,
        Kind::String => Some(indent.to_string()),
        _ => Some(" ".repeat(i64::try_from(indent).unwrap_or(0).max(0) as usize)),
    };
    // json.dumps puts ", " between items without indent, "," with it
    let (item_sep, key_sep) = match separators.kind() {
        Kind::None | Kind::Undefined => (
            if indent.is_some() { "," } else { ", " }.into(),
            ": ".into(),
        ),
        _ => (
            separators.get_item_by_index(0)?.to_string(),
            separators.get_item_by_index(1)?.to_string(),
        ),
    };
    let (ascii, sort) = (ensure_ascii.is_true(), sort_keys.is_true());
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        ascii,
        sort,
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ascii: bool,
    sort: bool,
}

/// Python's `json.dumps` encoder over template values.
fn write_json(out: &mut String, v: &Value, o: &JsonOpts, depth: usize) -> Result<(), Error> {
    let scalar = |v: &Value| -> Result<Option<String>, Error> {
        Ok(Some(match v.kind() {
            Kind::None => "null".into(),
            Kind::Bool => if v.is_true() { "true" } else { "false" }.into(),
            Kind::Number if v.is_integer() => v.to_string(),
            Kind::Number => py_float(f64::try_from(v.clone())?, true),
            _ => return Ok(None),
        }))
    };
    let newline = |out: &mut String, depth: usize| {
        if let Some(unit) = &o.indent {
            out.push('\n');
            out.push_str(&unit.repeat(depth));
        }
    };
    let kind = v.kind();
    if let Some(text) = scalar(v)? {
        out.push_str(&text);
    } else if let (Kind::String, Some(s)) = (kind, v.as_str()) {
        json_str(out, s, o.ascii);
    } else if matches!(kind, Kind::Seq | Kind::Iterable | Kind::Map) {
        // maps as (key, value) pairs with the key spelled as json.dumps does
        let mut items = Vec::new();
        for item in v.try_iter()? {
            items.push(match kind {
                Kind::Map => {
                    let key = scalar(&item)?.or_else(|| item.as_str().map(str::to_owned));
                    let msg = "keys must be str, int, float, bool or None";
                    let key = key.ok_or_else(|| Error::new(ErrorKind::InvalidOperation, msg))?;
                    (Some(key), v.get_item(&item)?)
                }
                _ => (None, item),
            });
        }
        if o.sort {
            items.sort_by(|a, b| a.0.cmp(&b.0));
        }
        let (open, close) = if kind == Kind::Map {
            ('{', '}')
        } else {
            ('[', ']')
        };
        out.push(open);
        for (i, (key, item)) in items.iter().enumerate() {
            out.push_str(if i > 0 { &o.item_sep } else { "" });
            newline(out, depth + 1);
            if let Some(key) = key {
                json_str(out, key, o.ascii);
                out.push_str(&o.key_sep);
            }
            write_json(out, item, o, depth + 1)?;
        }
        if !items.is_empty() {
            newline(out, depth);
        }
        out.push(close);
    } else {
        let msg = format!("Object of type {kind} is not JSON serializable");
        return Err(Error::new(ErrorKind::InvalidOperation, msg));
    }
    Ok(())
}

/// A JSON string the way Python escapes it (lowercase `\u00XX`; with
/// `ensure_ascii` every non-ASCII character too, as UTF-16 units).
fn json_str(out: &mut String, s: &str, ascii: bool) {
    out.push('"');
    for c in s.chars() {
        let _ = match c {
            '"' => write!(out, "\\\""),
            '\\' => write!(out, "\\\\"),
            '\n' => write!(out, "\\n"),
            '\r' => write!(out, "\\r"),
            '\t' => write!(out, "\\t"),
            '\u{8}' => write!(out, "\\b"),
            '\u{c}' => write!(out, "\\f"),
            c if c < ' ' || (ascii && !(' '..='~').contains(&c)) => c
                .encode_utf16(&mut [0; 2])
                .iter()
                .try_for_each(|u| write!(out, "\\u{u:04x}")),
            c => write!(out, "{c}"),
        };
    }
    out.push('"');
}

/// `strftime_now(fmt)`: Python's `datetime.now().strftime(fmt)`. Python itself
/// handles `%f` (microseconds) and, the datetime being naive, `%z`/`%Z`
/// (empty), then hands the format to the C library's strftime, as here.
fn strftime_now(fmt: &str) -> Result<String, Error> {
    let fail = |msg: &str| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {msg}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| fail("clock before 1970"))?;
    let mut c_fmt = String::with_capacity(fmt.len());
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        match (c, (c == '%').then(|| chars.next()).flatten()) {
            ('%', Some('f')) => write!(c_fmt, "{:06}", now.subsec_micros()).unwrap_or(()),
            ('%', Some('z' | 'Z')) => {}
            ('%', Some(n)) => c_fmt.extend(['%', n]),
            (c, _) => c_fmt.push(c),
        }
    }
    let c_fmt = std::ffi::CString::new(c_fmt).map_err(|_| fail("embedded null character"))?;
    let secs = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r fills the `tm` we own; strftime writes at most
    // `buf.len()` bytes into `buf` and returns how many. No conversion
    // produces more than 64 bytes, so the buffer always fits.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        return Err(fail("no local time"));
    }
    let mut buf = vec![0u8; 64 * (fmt.len() + 1)];
    let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c_fmt.as_ptr(), &tm) };
    buf.truncate(n);
    String::from_utf8(buf).map_err(|_| fail("not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixtures rendered by transformers (scripts/gen_chat_fixtures.py).
    fn fixture_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat")
    }

    fn check_file(name: &str) -> usize {
        let path = fixture_dir().join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let doc: Json = serde_json::from_str(&text).unwrap();
        if doc["template_source"] == "fallback:chatml" {
            assert_eq!(
                doc["template"].as_str(),
                Some(CHATML),
                "{name}: CHATML differs from the script's"
            );
        }
        let (bos, eos) = (
            doc["bos_token"].as_str().unwrap(),
            doc["eos_token"].as_str().unwrap(),
        );
        let mut failures = Vec::new();
        let cases = doc["cases"].as_array().unwrap();
        for case in cases {
            let label = format!("{name}/{}", case["name"].as_str().unwrap());
            let source = case
                .get("template")
                .unwrap_or(&doc["template"])
                .as_str()
                .unwrap();
            let tmpl =
                ChatTemplate::new(source, bos, eos).unwrap_or_else(|e| panic!("{label}: {e}"));
            let agp = case["add_generation_prompt"].as_bool().unwrap();
            let got = tmpl.render(&case["messages"], case.get("tools"), agp);
            match (case.get("expected").and_then(Json::as_str), got) {
                (Some(want), Ok(got)) if want == got => {}
                (Some(want), got) => {
                    failures.push(format!("{label}:\nwant {want:?}\ngot  {got:?}"))
                }
                (None, Ok(got)) => failures.push(format!("{label}: want an error, got {got:?}")),
                (None, Err(err)) => {
                    // raise_exception(msg) must surface exactly msg
                    if let Some(msg) = case.get("error_message").and_then(Json::as_str) {
                        if msg != err {
                            failures.push(format!("{label}: want error {msg:?}, got {err:?}"));
                        }
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases differ:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
        cases.len()
    }

    #[test]
    fn smollm2_fixtures() {
        assert!(check_file("SmolLM2-135M-Instruct.Q4_1.json") > 0);
    }

    #[test]
    fn qwen25_fixtures() {
        assert!(check_file("qwen2.5-coder-0.5b-instruct-q4_k_m.json") > 0);
    }

    #[test]
    fn gemma3_fixtures() {
        assert!(check_file("gemma-3-270m-q4_k_m.json") > 0);
    }

    #[test]
    fn feature_fixtures() {
        assert!(check_file("features.json") > 0);
    }

    #[test]
    fn shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn compile_error_is_reported() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "")
            .err()
            .unwrap();
        assert!(err.contains("syntax error"), "{err}");
    }

    #[test]
    fn raise_exception_message() {
        let t =
            ChatTemplate::new("{{ raise_exception('no ' ~ messages[0].role) }}", "", "").unwrap();
        let msgs = serde_json::json!([{"role": "system", "content": "x"}]);
        assert_eq!(t.render(&msgs, None, false), Err("no system".to_string()));
    }

    #[test]
    fn generation_tags_are_rewritten() {
        let src =
            "{%- generation -%} x {% endgeneration %}{% if a %}{%generation%}{%+ endgeneration +%}";
        assert_eq!(
            rewrite_generation_tags(src),
            "{%- if true -%} x {% endif %}{% if a %}{%if true%}{%+ endif +%}"
        );
        assert_eq!(
            rewrite_generation_tags("{% set generational = 1 %}"),
            "{% set generational = 1 %}"
        );
    }

    #[test]
    fn strftime_now_formats_local_time() {
        let year = strftime_now("%Y").unwrap();
        assert_eq!(year.len(), 4);
        assert!(year.parse::<u32>().unwrap() >= 2024);
        assert_eq!(strftime_now("%%|%z|%Z|").unwrap(), "%|||");
        assert_eq!(strftime_now("%f").unwrap().len(), 6);
        assert_eq!(strftime_now("").unwrap(), "");
    }

    #[test]
    fn python_float_spelling() {
        assert_eq!(py_float(1e16, false), "1e+16");
        assert_eq!(py_float(1e15, false), "1000000000000000.0");
        assert_eq!(py_float(1.5e-5, false), "1.5e-05");
        assert_eq!(py_float(-0.0, false), "-0.0");
        assert_eq!(py_float(f64::INFINITY, true), "Infinity");
    }
}
