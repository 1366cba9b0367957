//! Write a shape twin: a real model's metadata with random weights of the
//! same shapes and types, or a llama-shaped model with a real tokenizer.
//!
//! usage:
//!   make_twin --from MODEL.gguf --out TWIN.gguf [--type F16] [--seed N]
//!   make_twin --llama7b --from MODEL.gguf --out TWIN.gguf [--type Q4_0]
//!       (4096 hidden, 32 layers, 32 heads, FFN 11008; vocab = MODEL's tokenizer)
//!   make_twin --llama-small --from MODEL.gguf --out TWIN.gguf [--type Q4_0]
//!       (1024 hidden, 4 layers, 16 heads, 4 KV heads, FFN 2816: every width a
//!       multiple of 256, small enough for the CPU engine to check it)
//!   make_twin --arch qwen3|llama3|phi3|mistral --out TWIN.gguf
//!       (issue 18's architecture twins: rocmforge::twin::arch, vocabulary
//!       from the llama.cpp sources under vendor/, the fixtures' seed)
//!   make_twin --header-only --from MODEL.gguf --out MODEL.head
//!       (the metadata and tensor table alone, a few MiB: carry it to a
//!       machine without the model and make the twin there with --from MODEL.head)

use rocmforge::gguf::GgufFile;
use rocmforge::quant::GgmlType;
use rocmforge::twin::{write_llama_shaped, write_twin, LlamaShape};

fn main() {
    let (mut from, mut out, mut ty, mut seed, mut shape, mut head_only) = (None, None, None, 42u64, None, false);
    let mut arch: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--from" => from = args.next(),
            "--out" => out = args.next(),
            "--type" => {
                let name = args.next().unwrap_or_default();
                ty = Some(GgmlType::ALL.iter().copied().find(|t| t.name() == name).unwrap_or_else(|| {
                    eprintln!("unknown type '{name}'");
                    std::process::exit(2)
                }));
            }
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).expect("--seed N"),
            "--llama7b" => shape = Some(LlamaShape { n_embd: 4096, n_layer: 32, n_head: 32, n_head_kv: 32, n_ff: 11008, n_ctx: 4096 }),
            "--llama-small" => shape = Some(LlamaShape { n_embd: 1024, n_layer: 4, n_head: 16, n_head_kv: 4, n_ff: 2816, n_ctx: 4096 }),
            "--header-only" => head_only = true,
            "--arch" => arch = args.next(),
            other => {
                eprintln!("unknown argument '{other}'");
                std::process::exit(2)
            }
        }
    }
    if let (Some(key), Some(out)) = (&arch, &out) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bytes = rocmforge::twin::arch::make(root, key).unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
        std::fs::write(out, &bytes).unwrap_or_else(|e| {
            eprintln!("{out}: {e}");
            std::process::exit(1)
        });
        println!("wrote {out}: {} MiB", bytes.len() >> 20);
        return;
    }
    let (Some(from), Some(out)) = (from, out) else {
        eprintln!("usage: make_twin --from MODEL.gguf --out TWIN.gguf [--type T] [--seed N] [--llama7b | --llama-small] | --arch KEY --out TWIN.gguf");
        std::process::exit(2)
    };
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("{from}: {e}");
        std::process::exit(1)
    };
    let raw = std::fs::read(&from).unwrap_or_else(|e| fail(&e));
    let src = if GgufFile::is_header_only_image(&raw) {
        GgufFile::from_header_only(raw).unwrap_or_else(|e| fail(&e))
    } else {
        GgufFile::from_bytes(raw).unwrap_or_else(|e| fail(&e))
    };
    let bytes = if head_only {
        Ok(src.header_only_image())
    } else if let Some(shape) = &shape {
        write_llama_shaped(&src, shape, ty.unwrap_or(GgmlType::Q4_0), seed)
    } else {
        write_twin(&src, ty, seed)
    }
    .unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    std::fs::write(&out, &bytes).unwrap_or_else(|e| {
        eprintln!("{out}: {e}");
        std::process::exit(1)
    });
    println!("wrote {out}: {} MiB", bytes.len() >> 20);
}
