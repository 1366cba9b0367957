//! `llama_chat_apply_template` for llama.cpp's common built-in templates,
//! chosen by name or recognised in a Jinja template's text the way
//! llama.cpp's `llm_chat_detect_template` does: ChatML, Llama 2 (and its
//! system-message variants), Llama 3, Gemma, Phi-3, Phi-4, Zephyr, Monarch,
//! Falcon 3. Any other template answers -1 (llama.cpp's "not supported");
//! frontends that render Jinja themselves (llama-cpp-python does) need
//! nothing here.

use std::ffi::CStr;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum T {
    ChatMl,
    Llama2 { sys: bool, bos_inside: bool, strip: bool },
    Llama3,
    Gemma,
    Phi3,
    Phi4,
    Zephyr,
    Monarch,
    Falcon3,
}

const NAMES: [(&CStr, T); 11] = [
    (c"chatml", T::ChatMl),
    (c"llama2", T::Llama2 { sys: false, bos_inside: false, strip: false }),
    (c"llama2-sys", T::Llama2 { sys: true, bos_inside: false, strip: false }),
    (c"llama2-sys-bos", T::Llama2 { sys: true, bos_inside: true, strip: false }),
    (c"llama2-sys-strip", T::Llama2 { sys: true, bos_inside: false, strip: true }),
    (c"llama3", T::Llama3),
    (c"gemma", T::Gemma),
    (c"phi3", T::Phi3),
    (c"phi4", T::Phi4),
    (c"zephyr", T::Zephyr),
    (c"monarch", T::Monarch),
];

/// The names `llama_chat_builtin_templates` lists.
pub fn builtin_names() -> Vec<&'static CStr> {
    let mut v: Vec<&'static CStr> = NAMES.iter().map(|(n, _)| *n).collect();
    v.push(c"falcon3");
    v
}

fn detect(t: &str) -> Option<T> {
    if let Some((_, k)) = NAMES.iter().find(|(n, _)| n.to_bytes() == t.as_bytes()) {
        return Some(*k);
    }
    if t == "falcon3" {
        return Some(T::Falcon3);
    }
    let has = |s: &str| t.contains(s);
    if has("<|im_start|>") {
        return if has("<|im_sep|>") {
            Some(T::Phi4)
        } else if has("<end_of_utterance>") {
            None
        } else {
            Some(T::ChatMl)
        };
    }
    if t.starts_with("mistral") || has("[INST]") {
        if has("[SYSTEM_PROMPT]") || has("' [INST] ' + system_message") || has("[AVAILABLE_TOOLS]") {
            return None; // the Mistral templates: not built in here
        }
        return Some(T::Llama2 { sys: has("<<SYS>>"), bos_inside: has("bos_token + '[INST]"), strip: has("content.strip()") });
    }
    if has("<|assistant|>") && has("<|end|>") {
        return Some(T::Phi3);
    }
    if has("<|assistant|>") && has("<|user|>") && has("</s>") && !has("[gMASK]") {
        return Some(T::Falcon3);
    }
    if has("<|user|>") && has("<|endoftext|>") {
        return Some(T::Zephyr);
    }
    if has("bos_token + message['role']") {
        return Some(T::Monarch);
    }
    if has("<start_of_turn>") {
        return Some(T::Gemma);
    }
    if has("<|start_header_id|>") && has("<|end_header_id|>") {
        return Some(T::Llama3);
    }
    None
}

/// The prompt of `msgs` (role, content) under template `tmpl` (a name or a
/// Jinja template's text), with the assistant's opening when `add_ass`;
/// None when the template is not one of the built-in ones.
pub fn apply(tmpl: &str, msgs: &[(String, String)], add_ass: bool) -> Option<String> {
    let mut s = String::new();
    match detect(tmpl)? {
        T::ChatMl => {
            for (r, c) in msgs {
                s += &format!("<|im_start|>{r}\n{c}<|im_end|>\n");
            }
            if add_ass {
                s += "<|im_start|>assistant\n";
            }
        }
        T::Llama2 { sys, bos_inside, strip } => {
            let mut inside = true;
            s += "[INST] ";
            for (r, c) in msgs {
                let c = if strip { c.trim() } else { c.as_str() };
                if !inside {
                    inside = true;
                    s += if bos_inside { "<s>[INST] " } else { "[INST] " };
                }
                match r.as_str() {
                    "system" if sys => s += &format!("<<SYS>>\n{c}\n<</SYS>>\n\n"),
                    "system" => s += &format!("{c}\n"),
                    "user" => s += &format!("{c} [/INST]"),
                    _ => {
                        s += &format!("{c}</s>");
                        inside = false;
                    }
                }
            }
        }
        T::Llama3 => {
            for (r, c) in msgs {
                s += &format!("<|start_header_id|>{r}<|end_header_id|>\n\n{}<|eot_id|>", c.trim());
            }
            if add_ass {
                s += "<|start_header_id|>assistant<|end_header_id|>\n\n";
            }
        }
        T::Gemma => {
            let mut system = String::new();
            for (r, c) in msgs {
                if r == "system" {
                    system += c.trim();
                    continue;
                }
                let role = if r == "assistant" { "model" } else { r.as_str() };
                s += &format!("<start_of_turn>{role}\n");
                if !system.is_empty() && role != "model" {
                    s += &format!("{system}\n\n");
                    system.clear();
                }
                s += &format!("{}<end_of_turn>\n", c.trim());
            }
            if add_ass {
                s += "<start_of_turn>model\n";
            }
        }
        T::Phi3 => {
            for (r, c) in msgs {
                s += &format!("<|{r}|>\n{c}<|end|>\n");
            }
            if add_ass {
                s += "<|assistant|>\n";
            }
        }
        T::Phi4 => {
            for (r, c) in msgs {
                s += &format!("<|im_start|>{r}<|im_sep|>{c}<|im_end|>");
            }
            if add_ass {
                s += "<|im_start|>assistant<|im_sep|>";
            }
        }
        T::Zephyr => {
            for (r, c) in msgs {
                s += &format!("<|{r}|>\n{c}<|endoftext|>\n");
            }
            if add_ass {
                s += "<|assistant|>\n";
            }
        }
        T::Monarch => {
            for (i, (r, c)) in msgs.iter().enumerate() {
                s += &format!("{}{r}\n{c}</s>\n", if i == 0 { "" } else { "<s>" });
            }
            if add_ass {
                s += "<s>assistant\n";
            }
        }
        T::Falcon3 => {
            for (r, c) in msgs {
                s += &format!("<|{r}|>\n{c}\n");
            }
            if add_ass {
                s += "<|assistant|>\n";
            }
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> Vec<(String, String)> {
        [("system", "You are a helpful assistant"), ("user", "Hello"), ("assistant", "Hi there"), ("user", "Who are you")]
            .iter()
            .map(|(r, c)| (r.to_string(), c.to_string()))
            .collect()
    }

    /// The expected outputs of llama.cpp's tests/test-chat-template.cpp
    /// for the same conversation.
    #[test]
    fn builtin_templates_render_as_llama_cpp_does() {
        let c = conv();
        assert_eq!(
            apply("chatml", &c, true).unwrap(),
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            apply("llama3", &c, true).unwrap(),
            "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            apply("gemma", &c, true).unwrap(),
            "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(apply("llama2-sys", &c, false).unwrap(), "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you [/INST]");
        assert_eq!(
            apply("phi3", &c, true).unwrap(),
            "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n"
        );
        // recognised in a Jinja template's text
        assert_eq!(detect("{% for m in messages %}<|im_start|>{{ m.role }}"), Some(T::ChatMl));
        assert_eq!(detect("{{ '<start_of_turn>' + role }}"), Some(T::Gemma));
        assert_eq!(detect("not a template"), None);
        assert!(apply("unknown", &c, true).is_none());
    }
}
