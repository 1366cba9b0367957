//! The `rocmforge` binary, run as a user runs it: help, generation, chat
//! through stdin (history, commands, Ctrl-C), `info --json` against the
//! file's own metadata, and the documented exit codes.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocmforge::engine::Session;
use rocmforge::generate::{generate, GenerateOptions};
use rocmforge::gguf::{GgufFile, Value as Meta};
use rocmforge::sampler::{Sampler, SamplerParams};
use rocmforge::{LoadOptions, Model};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_rocmforge");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn smollm2() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} not found: run `make models` first (tests never skip a missing model)", p.display());
    p
}

fn rf(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("the binary runs")
}

fn rf_stdin(args: &[&str], input: &str) -> Output {
    let mut c = Command::new(BIN).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Greedy text of the library itself for `prompt` (the C example's path).
fn library_greedy(model: &Arc<Model>, ids: &[u32], n: usize) -> String {
    let mut s = Session::new(model.clone(), 512).unwrap();
    let mut sm = Sampler::new(SamplerParams::greedy());
    generate(&mut s, &mut sm, ids, &GenerateOptions { max_tokens: n, stop: vec![] }, |_, _| true).unwrap().text
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["run", "chat", "serve", "bench", "perplexity", "tokenize", "info", "completions"] {
        for args in [vec![sub, "--help"], vec!["help", sub]] {
            let o = rf(&args);
            let out = text(&o.stdout);
            assert!(o.status.success(), "{args:?}: {}", text(&o.stderr));
            assert!(out.contains("Usage: rocmforge") && out.contains(sub), "{args:?}: {out}");
        }
    }
    let o = rf(&["--help"]);
    assert!(text(&o.stdout).contains("Exit codes:"));
    let o = rf(&["completions", "bash"]);
    assert!(o.status.success() && text(&o.stdout).contains("rocmforge"));
}

#[test]
fn run_is_the_library_greedy_text() {
    let path = smollm2();
    let p = path.to_str().unwrap();
    let prompt = "The capital of France is";
    let o = rf(&["run", p, prompt, "--temp", "0", "--seed", "42", "-n", "32", "-t", "2", "--backend", "cpu"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let model = Model::load(&path, LoadOptions { n_threads: 2, backend: rocmforge::BackendChoice::Cpu, ..Default::default() }).unwrap();
    let ids = model.tokenizer.encode(prompt, true, false);
    let want = library_greedy(&model, &ids, 32);
    assert_eq!(text(&o.stdout), format!("{prompt}{want}\n"));
    assert!(text(&o.stderr).contains("tok/s"), "the summary line: {}", text(&o.stderr));
    // the prompt from stdin, JSON out
    let o = rf_stdin(&["run", p, "--temp", "0", "-n", "32", "-t", "2", "--json"], prompt);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["text"], want.as_str());
    assert_eq!(v["prompt_tokens"], ids.len());
}

#[test]
fn chat_keeps_the_history_and_its_commands_work() {
    let path = smollm2();
    let p = path.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("rf-cli-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let save = dir.join("conv.json");
    let first = "My name is Alice and I have a red bicycle.";
    let second = "What colour is my bicycle?";
    let args = ["chat", p, "--temp", "0", "-n", "40", "-t", "2", "--backend", "cpu"];
    let o = rf_stdin(&args, &format!("{first}\n{second}\n/save {}\n", save.display()));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    let msgs = saved["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4, "{saved}");
    assert_eq!((msgs[0]["content"].as_str(), msgs[2]["content"].as_str()), (Some(first), Some(second)));
    let answer2 = msgs[3]["content"].as_str().unwrap().to_string();
    assert_eq!(text(&o.stdout), format!("{}\n{}\n", msgs[1]["content"].as_str().unwrap(), answer2));

    // the second answer is the greedy answer to the whole conversation,
    // computed from nothing (the cache reuse is exact) ...
    let model = Model::load(&path, LoadOptions { n_threads: 2, backend: rocmforge::BackendChoice::Cpu, ..Default::default() }).unwrap();
    let tpl = rocmforge_server::ChatTemplate::new(model.file.chat_template().unwrap().unwrap(), "<|im_start|>", "<|im_end|>").unwrap();
    let ids = rocmforge_server::prompt_tokens(&model.tokenizer, &tpl, &json!(msgs[..3]), None, true).unwrap();
    assert_eq!(library_greedy(&model, &ids, 40), answer2);
    // ... and depends on the first turn: alone, the question gets another answer
    let o = rf_stdin(&args, &format!("{second}\n"));
    assert_ne!(text(&o.stdout).trim_end(), answer2, "the second turn did not see the first");

    // /reset forgets, /system sets a system turn, unknown commands are refused
    let o = rf_stdin(&args, &format!("{first}\n/reset\n/system You are terse.\n/nope\n{second}\n/save {}\n", save.display()));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("cleared") && err.contains("system prompt set") && err.contains("unknown command /nope"), "{err}");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    let roles: Vec<&str> = saved["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn ctrl_c_ends_the_answer_and_keeps_the_session() {
    let path = smollm2();
    let dir = std::env::temp_dir().join(format!("rf-cli-sigint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let save = dir.join("conv.json");
    let mut c = Command::new(BIN)
        .args(["chat", path.to_str().unwrap(), "--temp", "0", "-n", "4000", "-t", "2", "--backend", "cpu", "--repeat-penalty", "1.0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    stdin.write_all(b"Count from 1 to 2000, one number per line.\n").unwrap();
    stdin.flush().unwrap();
    // wait for the answer to stream, then Ctrl-C
    let mut stdout = c.stdout.take().unwrap();
    let mut got = Vec::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    while got.len() < 40 && t0.elapsed() < Duration::from_secs(60) {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the answer ended before Ctrl-C: {}", text(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // SAFETY: signalling our own child
    assert_eq!(unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) }, 0);
    // the chat goes on: another question (answered on top of the cut
    // answer kept in the cache), then end of input
    writeln!(stdin, "What is the capital of France?\n/save {}", save.display()).unwrap();
    drop(stdin);
    // a watchdog: the child must end within two minutes
    let pid = c.id() as libc::pid_t;
    let watchdog = std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: probing (signal 0) our own child
            if unsafe { libc::kill(pid, 0) } != 0 {
                return;
            }
        }
        // SAFETY: killing our own child
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let status = c.wait().unwrap();
    watchdog.join().unwrap();
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(err.contains("(interrupted)"), "{err}");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&save).unwrap()).unwrap();
    let msgs = saved["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4, "the cut answer stays in the conversation: {saved}");
    let answer = msgs[1]["content"].as_str().unwrap();
    assert!(answer.len() >= 10, "{answer:?}");
    // the next answer is the greedy answer to the whole conversation computed
    // from nothing: the cache after the interruption held exactly what it says
    let model = Model::load(&path, LoadOptions { n_threads: 2, backend: rocmforge::BackendChoice::Cpu, ..Default::default() }).unwrap();
    let tpl = rocmforge_server::ChatTemplate::new(model.file.chat_template().unwrap().unwrap(), "<|im_start|>", "<|im_end|>").unwrap();
    let ids = rocmforge_server::prompt_tokens(&model.tokenizer, &tpl, &json!(msgs[..3]), None, true).unwrap();
    let mut s = Session::new(model.clone(), 0).unwrap();
    let mut sm = Sampler::new(SamplerParams { temperature: 0.0, repeat_penalty: 1.0, ..SamplerParams::default() });
    let want = generate(&mut s, &mut sm, &ids, &GenerateOptions { max_tokens: 4000, stop: vec![] }, |_, _| true).unwrap().text;
    assert_eq!(msgs[3]["content"].as_str().unwrap(), want);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn info_json_matches_the_gguf_metadata() {
    let path = smollm2();
    let o = rf(&["info", path.to_str().unwrap(), "--json", "--ctx", "1024"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(v["architecture"], f.architecture().unwrap());
    assert_eq!(v["supported"], true);
    assert_eq!(v["parameters"], f.tensors().iter().map(|t| t.n_elements()).sum::<u64>());
    assert_eq!(v["chat_template"], f.chat_template().unwrap().unwrap());
    let mut n_scalar = 0;
    for (k, m) in f.metadata() {
        let want = match m {
            Meta::String(s) => json!(s),
            Meta::U32(x) => json!(x),
            Meta::F32(x) => json!(x),
            Meta::Bool(x) => json!(x),
            Meta::Array(_) => {
                assert!(v["metadata"].get(k).is_none(), "arrays are left out: {k}");
                continue;
            }
            _ => continue,
        };
        assert_eq!(v["metadata"][k], want, "{k}");
        n_scalar += 1;
    }
    assert!(n_scalar > 10);
    assert_eq!(v["context_length"], f.get_u64("llama.context_length").unwrap().unwrap());
    assert_eq!(v["model"]["n_layer"], f.get_u64("llama.block_count").unwrap().unwrap());
    assert_eq!(v["memory"]["ctx"], 1024);
    assert_eq!(v["tokenizer"]["special"]["eos"]["id"], f.get_u64("tokenizer.ggml.eos_token_id").unwrap().unwrap());
    let types: u64 = v["tensor_types"].as_array().unwrap().iter().map(|t| t["tensors"].as_u64().unwrap()).sum();
    assert_eq!(types as usize, f.tensors().len());
    assert_eq!(v["backends"]["cpu"]["available"], true);
    assert_eq!(v["model"]["encoder"], false);
    assert!(v["memory"]["kv_cache_bytes"].as_u64().unwrap() > 0);
}

/// An embedding encoder keeps no KV cache and runs on the CPU: `info`
/// says so instead of sizing a decoder's cache.
#[test]
fn info_of_an_encoder_has_no_kv_cache() {
    let path = smollm2().with_file_name("nomic-embed-text-v1.5.f16.gguf");
    assert!(path.is_file(), "{} missing: run `make models`", path.display());
    let o = rf(&["info", path.to_str().unwrap(), "--json", "--ctx", "512"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["architecture"], "nomic-bert");
    assert_eq!(v["model"]["encoder"], true);
    assert_eq!(v["memory"]["kv_cache_bytes"], 0);
    assert_eq!(v["memory"]["gpu_bytes"], 0);
    // weights plus one input's hidden states (512 x 768 f32)
    assert_eq!(v["memory"]["cpu_bytes"].as_u64().unwrap(), v["weight_bytes"].as_u64().unwrap() + 512 * 768 * 4);
    let o = rf(&["info", path.to_str().unwrap()]);
    let out = text(&o.stdout);
    assert!(out.contains("embeddings only (mean pooling): no KV cache") && !out.contains("KV cache 0.0 MiB") && out.contains("encoders run on the CPU"), "{out}");
}

#[test]
fn failures_have_their_exit_codes() {
    let dir = std::env::temp_dir().join(format!("rf-cli-codes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.gguf");
    std::fs::write(&corrupt, b"this is not a GGUF file at all, only text").unwrap();
    // a truncated copy of a real model: a valid header, tensors past the end
    let truncated = dir.join("truncated.gguf");
    let real = std::fs::read(smollm2()).unwrap();
    std::fs::write(&truncated, &real[..real.len() / 2]).unwrap();
    let missing = dir.join("missing.gguf");
    let model = smollm2();
    let m = model.to_str().unwrap();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["run", "--bogus"], 2, "unexpected argument"),
        (vec!["run", m, "hi", "--backend", "tpu"], 2, "invalid value"),
        (vec!["run", m, "hi", "-n", "many"], 2, "invalid value"),
        (vec!["run", missing.to_str().unwrap(), "hi"], 3, "hint: check the path"),
        (vec!["info", missing.to_str().unwrap()], 3, "No such file"),
        (vec!["run", corrupt.to_str().unwrap(), "hi"], 4, "hint: the file is damaged"),
        (vec!["info", corrupt.to_str().unwrap()], 4, "bad magic"),
        (vec!["run", truncated.to_str().unwrap(), "hi", "--backend", "cpu"], 4, "rocmforge:"),
        (vec!["run", m, "hi", "--backend", "cuda"], 6, "hint:"),
        (vec!["run", m, "", "--backend", "cpu"], 2, "the prompt is empty"),
        (vec!["run", m, "a b c d e f g h i j k l m n o p", "--ctx", "8", "--backend", "cpu"], 8, "context"),
        (vec!["bench", "--reps", "0", m], 2, "at least 1"),
        (vec!["bench", "--pp", "0", m], 2, "at least 1"),
        (vec!["bench", "--backend", "tpu", m], 2, "unknown backend"),
        (vec!["bench", "--batched", "--npl", "1,0", m], 2, "batch sizes"),
        (vec!["bench", "--backend", "cpu,cuda", m], 6, "hint:"),
        (vec!["bench", missing.to_str().unwrap()], 3, "No such file"),
        (vec!["bench", corrupt.to_str().unwrap()], 4, "bad magic"),
        (vec!["perplexity", "-c", "1", m], 2, "at least 2"),
        (vec!["perplexity", "-c", "100000", m], 2, "no position was scored"),
        (vec!["perplexity", "-f", missing.to_str().unwrap(), m], 3, "UTF-8 text"),
        (vec!["serve", m, "--backend", "tpu"], 2, "unknown backend"),
        (vec!["serve", corrupt.to_str().unwrap()], 4, "bad magic"),
        (vec!["serve", m, "--backend", "cuda"], 6, "hint:"),
        (vec!["info", m, "--ctx", "999999999"], 2, "more than"),
    ];
    for (args, code, needle) in cases {
        let o = rf(&args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        // one line (plus a hint), never a panic
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_and_perplexity_print_the_examples_tables() {
    let m = smollm2();
    let m = m.to_str().unwrap();
    let o = rf(&["bench", "--pp", "16", "--tg", "4", "--reps", "1", m]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.contains("pp16 t/s") && out.contains("tg4 t/s") && out.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{out}");
    let o = rf(&["bench", "--batched", "--pp", "8", "--tg", "4", "--npl", "1,2", "--reps", "1", m]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.contains("S_TG t/s"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("|     8 |      4 |")).count(), 2, "{out}");
    let o = rf(&["perplexity", "-c", "64", m]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let ppl: f64 = out.split("PPL = ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    assert!(ppl > 1.0 && ppl < 1000.0, "{out}");
}
