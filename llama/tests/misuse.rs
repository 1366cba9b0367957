//! Misuse of libllama: NULL handles, out-of-range indices, bad batches and
//! parameters get llama.cpp's error returns (NULL, 0, -1, false, a
//! negative code) and never crash; after each refused call the context
//! still works.

use std::ffi::CString;
use std::ptr::{null, null_mut};

use llama::sampler::*;
use llama::*;
use llama::types::*;

fn model_path() -> CString {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} missing: run `make models`", p.display());
    CString::new(p.to_str().unwrap()).unwrap()
}

#[test]
fn null_handles_are_refused() {
    unsafe {
        llama_model_free(null_mut());
        llama_free(null_mut());
        llama_sampler_free(null_mut());
        assert!(llama_model_load_from_file(null(), llama_model_default_params()).is_null());
        let missing = CString::new("/nonexistent/model.gguf").unwrap();
        assert!(llama_model_load_from_file(missing.as_ptr(), llama_model_default_params()).is_null());
        assert!(llama_init_from_model(null_mut(), llama_context_default_params()).is_null());
        assert!(llama_model_get_vocab(null()).is_null());
        assert_eq!(llama_vocab_n_tokens(null()), 0);
        assert_eq!(llama_vocab_bos(null()), LLAMA_TOKEN_NULL);
        assert!(llama_vocab_get_text(null(), 0).is_null());
        assert!(llama_tokenize(null(), c"x".as_ptr(), 1, null_mut(), 0, false, false) < 0);
        assert_eq!(llama_token_to_piece(null(), 0, null_mut(), 0, 0, false), 0);
        assert_eq!(llama_decode(null_mut(), llama_batch_get_one(null_mut(), 0)), -1);
        assert!(llama_get_logits(null_mut()).is_null());
        assert!(llama_get_logits_ith(null_mut(), 0).is_null());
        assert!(llama_get_memory(null()).is_null());
        llama_memory_clear(null_mut(), true);
        assert!(!llama_memory_seq_rm(null_mut(), 0, 0, -1));
        assert_eq!(llama_memory_seq_pos_max(null_mut(), 0), -1);
        assert_eq!(llama_n_ctx(null()), 0);
        let mut buf = [1 as std::ffi::c_char; 8];
        assert_eq!(llama_model_meta_val_str(null(), c"general.name".as_ptr(), buf.as_mut_ptr(), 8), -1);
        assert_eq!(buf[0], 0, "cleared on failure");
        assert_eq!(llama_state_get_size(null_mut()), 0);
        assert_eq!(llama_sampler_chain_n(null()), 0);
        assert!(llama_sampler_chain_get(null_mut(), 0).is_null());
        assert_eq!(llama_sampler_sample(null_mut(), null_mut(), 0), LLAMA_TOKEN_NULL);
        assert!(llama_sampler_init_grammar(null(), c"root ::= \"a\"".as_ptr(), c"root".as_ptr()).is_null());
        assert_eq!(llama_process(null_mut(), 1, null_mut()), -1);
        llama_batch_free(llama_batch_get_one(null_mut(), 0));
    }
}

#[test]
fn bad_indices_batches_and_grammars_are_refused() {
    unsafe {
        let mut mp = llama_model_default_params();
        mp.n_gpu_layers = 0;
        let path = model_path();
        let m = llama_model_load_from_file(path.as_ptr(), mp);
        assert!(!m.is_null());
        let v = llama_model_get_vocab(m);
        let nv = llama_vocab_n_tokens(v);
        let mut cp = llama_context_default_params();
        cp.n_ctx = 64;
        cp.n_batch = 32;
        let c = llama_init_from_model(m, cp);
        assert!(!c.is_null());
        // vocabulary: out-of-range ids
        assert!(llama_vocab_get_text(v, nv).is_null());
        assert!(llama_vocab_get_text(v, -1).is_null());
        assert_eq!(llama_token_to_piece(v, nv + 5, null_mut(), 0, 0, true), 0);
        assert!(!llama_vocab_is_eog(v, -3));
        let mut buf = [0 as std::ffi::c_char; 4];
        assert_eq!(llama_model_meta_key_by_index(m, 100_000, buf.as_mut_ptr(), 4), -1);
        assert_eq!(llama_model_meta_key_by_index(m, -1, buf.as_mut_ptr(), 4), -1);
        // a too-small buffer: the negative length needed
        let text = c"The capital of France is";
        let need = llama_tokenize(v, text.as_ptr(), 24, null_mut(), 0, true, false);
        assert!(need < -1, "{need}");
        let mut toks = vec![0; (-need) as usize];
        assert_eq!(llama_tokenize(v, text.as_ptr(), 24, toks.as_mut_ptr(), toks.len() as i32, true, false), -need);
        // before any decode: no logits
        assert!(llama_get_logits_ith(c, 0).is_null());
        assert!(llama_get_logits_ith(c, -1).is_null());
        // bad batches: each refused, the context unchanged
        let mut bad = vec![nv + 10];
        assert_eq!(llama_decode(c, llama_batch_get_one(bad.as_mut_ptr(), 1)), -1, "token id out of range");
        let mut big = vec![1; 33];
        assert_eq!(llama_decode(c, llama_batch_get_one(big.as_mut_ptr(), 33)), -1, "more than n_batch");
        let mut b = llama_batch_init(2, 0, 1);
        b.n_tokens = 2;
        for (i, &t) in toks.iter().take(2).enumerate() {
            *b.token.add(i) = t;
            *b.pos.add(i) = 5 + i as i32; // not the sequence's next positions
            *b.n_seq_id.add(i) = 1;
            **b.seq_id.add(i) = 0;
            *b.logits.add(i) = 1;
        }
        assert_eq!(llama_decode(c, b), -1, "positions after a gap");
        *b.pos = 0;
        *b.pos.add(1) = 1;
        **b.seq_id.add(1) = 7;
        assert_eq!(llama_decode(c, b), -1, "seq_id >= n_seq_max");
        llama_batch_free(b);
        let mem = llama_get_memory(c);
        assert_eq!(llama_memory_seq_pos_max(mem, 0), -1, "nothing was written");
        // a good batch now works, with outputs for the right indices only
        let n = toks.len() as i32;
        assert_eq!(llama_decode(c, llama_batch_get_one(toks.as_mut_ptr(), n)), 0);
        assert!(!llama_get_logits_ith(c, -1).is_null());
        assert!(llama_get_logits_ith(c, 0).is_null(), "index 0 had no output");
        assert!(llama_get_logits_ith(c, n).is_null(), "past the batch");
        assert!(llama_get_logits_ith(c, -2).is_null(), "one output only");
        assert_eq!(llama_memory_seq_pos_max(mem, 0), n - 1);
        // removing the middle of a sequence leaves a gap: decoding is
        // refused until seq_add closes it; a second gap is refused
        assert!(llama_memory_seq_rm(mem, 0, 1, 2));
        assert!(!llama_memory_seq_rm(mem, 0, 3, 4));
        let mut one = vec![toks[0]];
        assert_eq!(llama_decode(c, llama_batch_get_one(one.as_mut_ptr(), 1)), -1, "decoding with a gap open");
        llama_memory_seq_add(mem, 0, 0, 1, 5); // part of a sequence, to the right: refused, nothing changes
        assert_eq!(llama_memory_seq_pos_max(mem, 0), n - 1);
        assert!(llama_memory_seq_rm(mem, 0, 2, -1));
        assert_eq!(llama_memory_seq_pos_max(mem, 0), 0, "the gap reached the end and went with the tail");
        // samplers: a bad grammar is NULL; chain indices out of range
        assert!(llama_sampler_init_grammar(v, c"root ::= (".as_ptr(), c"root".as_ptr()).is_null());
        assert!(llama_sampler_init_grammar(v, c"root ::= \"a\"".as_ptr(), c"nope".as_ptr()).is_null());
        let chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
        llama_sampler_chain_add(chain, null_mut());
        assert_eq!(llama_sampler_chain_n(chain), 0, "a NULL sampler is not added");
        llama_sampler_chain_add(chain, llama_sampler_init_greedy());
        assert!(llama_sampler_chain_get(chain, 1).is_null());
        assert!(llama_sampler_chain_remove(chain, 5).is_null());
        assert_eq!(llama_sampler_chain_get(chain, -1), chain, "-1: the chain itself");
        // copying state between two samplers of one kind (llama.cpp's clone fallback)
        let (a, b2) = (llama_sampler_init_dist(7), llama_sampler_init_dist(9));
        llama_sampler_copy(a, b2);
        assert_eq!(llama_sampler_get_seed(b2), 7);
        llama_sampler_copy(a, chain); // different kinds: refused, nothing changes
        assert_eq!(llama_sampler_chain_n(chain), 1);
        llama_sampler_free(a);
        llama_sampler_free(b2);
        assert!(llama_sampler_chain_remove(chain, -1).is_null());
        assert_eq!(llama_sampler_sample(chain, c, 3), LLAMA_TOKEN_NULL, "no logits at index 3");
        let t = llama_sampler_sample(chain, c, -1);
        assert!((0..nv).contains(&t));
        // a chain that selects nothing
        let empty = llama_sampler_chain_init(llama_sampler_chain_default_params());
        assert_eq!(llama_sampler_sample(empty, c, -1), LLAMA_TOKEN_NULL);
        llama_sampler_free(empty);
        llama_sampler_free(chain);
        // state: a short or foreign buffer restores nothing
        let size = llama_state_get_size(c);
        assert!(size > 0);
        let mut st = vec![0u8; size];
        assert_eq!(llama_state_get_data(c, st.as_mut_ptr(), size - 1), 0, "too small");
        assert_eq!(llama_state_get_data(c, st.as_mut_ptr(), size), size);
        let junk = [7u8; 64];
        assert_eq!(llama_state_set_data(c, junk.as_ptr(), junk.len()), 0);
        assert_eq!(llama_state_set_data(c, st.as_ptr(), size), size);
        // the sizeless old call reads the state's own lengths
        assert_eq!(llama_set_state_data(c, st.as_ptr()), size);
        assert_eq!(llama_set_state_data(c, junk.as_ptr()), 0);
        assert_eq!(llama_memory_seq_pos_max(mem, 0), 0, "the saved state is back");
        assert_eq!(llama_encode(c, llama_batch_get_one(toks.as_mut_ptr(), 1)), -1, "no encoder");
        llama_free(c);
        llama_model_free(m);
    }
}

/// llama.cpp's context clamps and batch rules: n_batch at most n_ctx, an
/// n_ubatch of 0 the whole batch, n_seq_max at most 256; a token naming
/// one sequence twice counts it once; `kv_unified` lets sequence ids
/// reach 255 whatever n_seq_max says.
#[test]
fn context_clamps_and_sequence_ids() {
    unsafe {
        let mut mp = llama_model_default_params();
        mp.n_gpu_layers = 0;
        let path = model_path();
        let m = llama_model_load_from_file(path.as_ptr(), mp);
        assert!(!m.is_null());
        let mut cp = llama_context_default_params();
        cp.n_ctx = 64;
        cp.n_batch = 512;
        cp.n_ubatch = 0;
        let c = llama_init_from_model(m, cp);
        assert!(!c.is_null());
        assert_eq!((llama_n_ctx(c), llama_n_batch(c), llama_n_ubatch(c)), (64, 64, 64));
        let mut b = llama_batch_init(2, 0, 3);
        b.n_tokens = 2;
        for i in 0..2 {
            *b.token.add(i) = 100 + i as i32;
            *b.pos.add(i) = i as i32;
            *b.n_seq_id.add(i) = 3;
            for (j, s) in [0, 0, 0].into_iter().enumerate() {
                *(*b.seq_id.add(i)).add(j) = s;
            }
            *b.logits.add(i) = 1;
        }
        assert_eq!(llama_decode(c, b), 0, "a sequence named three times is one sequence");
        assert_eq!(llama_memory_seq_pos_max(llama_get_memory(c), 0), 1);
        **b.seq_id.add(0) = 200;
        **b.seq_id.add(1) = 200;
        assert_eq!(llama_decode(c, b), -1, "seq_id 200 >= n_seq_max 1");
        llama_free(c);
        cp.kv_unified = true;
        let c = llama_init_from_model(m, cp);
        assert_eq!(llama_decode(c, b), 0, "kv_unified: ids up to 255");
        assert_eq!(llama_memory_seq_pos_max(llama_get_memory(c), 200), 1);
        llama_batch_free(b);
        llama_free(c);
        cp.n_seq_max = 257;
        assert!(llama_init_from_model(m, cp).is_null(), "n_seq_max > 256");
        llama_model_free(m);
    }
}
