//! libllama's memory calls on a real model (SmolLM2, CPU): the context
//! shift of llama.cpp's examples (`seq_rm` of a middle range, then
//! `seq_add` moving the rest left), whole-sequence shifts, gaps closed in
//! two steps, and states that keep shifted caches.
//!
//! The exactness of the shift itself (moved keys turned to their new
//! positions equal a fresh computation) is tested on one-layer models in
//! the root crate's tests/batch.rs; here the positions llama.cpp's API
//! reports and accepts, and the identities that hold on a full model.

use std::ffi::CString;
use std::ptr::null_mut;

use llama::*;

fn model_path() -> CString {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} missing: run `make models`", p.display());
    CString::new(p.to_str().unwrap()).unwrap()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += ((x - y) as f64).powi(2);
        n += (*y as f64).powi(2);
    }
    (d / n.max(1e-30)).sqrt()
}

struct Ctx {
    m: *mut llama::model::LlamaModel,
    c: *mut llama::context::Context,
    nv: usize,
}

impl Ctx {
    unsafe fn new() -> Ctx {
        let mut mp = llama_model_default_params();
        mp.n_gpu_layers = 0;
        let path = model_path();
        let m = llama_model_load_from_file(path.as_ptr(), mp);
        assert!(!m.is_null());
        let nv = llama_vocab_n_tokens(llama_model_get_vocab(m)) as usize;
        let mut cp = llama_context_default_params();
        cp.n_ctx = 256;
        cp.n_batch = 256;
        cp.n_seq_max = 4;
        let c = llama_init_from_model(m, cp);
        assert!(!c.is_null());
        Ctx { m, c, nv }
    }

    fn mem(&self) -> *mut llama::context::Memory {
        unsafe { llama_get_memory(self.c) }
    }

    /// Decode `toks` into sequence `seq` from `pos`; the last row's logits.
    unsafe fn decode(&self, seq: i32, pos: i32, toks: &[i32]) -> Result<Vec<f32>, i32> {
        let mut b = llama_batch_init(toks.len() as i32, 0, 1);
        b.n_tokens = toks.len() as i32;
        for (i, &t) in toks.iter().enumerate() {
            *b.token.add(i) = t;
            *b.pos.add(i) = pos + i as i32;
            *b.n_seq_id.add(i) = 1;
            **b.seq_id.add(i) = seq;
            *b.logits.add(i) = (i + 1 == toks.len()) as i8;
        }
        let r = llama_decode(self.c, b);
        llama_batch_free(b);
        if r != 0 {
            return Err(r);
        }
        Ok(std::slice::from_raw_parts(llama_get_logits_ith(self.c, -1), self.nv).to_vec())
    }

    fn span(&self, seq: i32) -> (i32, i32) {
        unsafe { (llama_memory_seq_pos_min(self.mem(), seq), llama_memory_seq_pos_max(self.mem(), seq)) }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        unsafe {
            llama_free(self.c);
            llama_model_free(self.m);
        }
    }
}

fn prompt(n: usize) -> Vec<i32> {
    (0..n).map(|i| (100 + (i * 131) % 20_000) as i32).collect()
}

#[test]
fn context_shift_as_llama_cpp_examples_do_it() {
    unsafe {
        let x = Ctx::new();
        let mem = x.mem();
        assert!(llama_memory_can_shift(mem));
        let toks = prompt(120);
        let n_past = toks.len() as i32;
        x.decode(0, 0, &toks).unwrap();
        // llama.cpp's main: keep n_keep, discard the next n_discard, move the rest left
        let (n_keep, n_discard) = (8, 50);
        assert!(llama_memory_seq_rm(mem, 0, n_keep, n_keep + n_discard));
        assert_eq!(x.span(0), (0, n_past - 1), "a gap changes neither end");
        assert_eq!(x.decode(0, n_past, &[42]), Err(-1), "no decode while the gap is open");
        llama_memory_seq_add(mem, 0, n_keep + n_discard, n_past, -n_discard);
        let n_now = n_past - n_discard;
        assert_eq!(x.span(0), (0, n_now - 1));
        assert_eq!(x.decode(0, n_past, &[42]), Err(-1), "the old next position is gone");
        let shifted = x.decode(0, n_now, &[42]).unwrap();
        // the same shift in two steps (the gap half closed, then closed) gives the same logits
        let y = Ctx::new();
        y.decode(0, 0, &toks).unwrap();
        assert!(llama_memory_seq_rm(y.mem(), 0, n_keep, n_keep + n_discard));
        llama_memory_seq_add(y.mem(), 0, n_keep + n_discard, -1, -20);
        assert_eq!(y.decode(0, n_past - 20, &[42]), Err(-1), "the gap is still 30 wide");
        llama_memory_seq_add(y.mem(), 0, n_keep + 30, -1, -30);
        assert_eq!(y.span(0), (0, n_now - 1));
        let twice = y.decode(0, n_now, &[42]).unwrap();
        let err = rel_l2(&twice, &shifted);
        assert!(err < 5e-3, "shifted in two steps vs one: rel L2 {err}");
        // the shifted cache is not the recomputed one: the moved positions
        // keep what they were computed with
        let z = Ctx::new();
        let kept: Vec<i32> = toks[..n_keep as usize].iter().chain(&toks[(n_keep + n_discard) as usize..]).copied().collect();
        z.decode(0, 0, &kept).unwrap();
        let fresh = z.decode(0, n_now, &[42]).unwrap();
        assert!(rel_l2(&fresh, &shifted) > 10.0 * err, "a shift that recomputes");
        // generation goes on past the old length
        let mut pos = n_now + 1;
        let mut next = 42;
        for _ in 0..80 {
            let l = x.decode(0, pos, &[next]).unwrap();
            next = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as i32;
            pos += 1;
        }
        assert_eq!(x.span(0), (0, pos - 1));
        assert!(pos > n_past);
    }
}

#[test]
fn whole_sequence_shifts_keep_the_logits() {
    unsafe {
        let x = Ctx::new();
        let mem = x.mem();
        let toks = prompt(40);
        x.decode(0, 0, &toks).unwrap();
        assert!(llama_memory_seq_rm(mem, 0, 39, -1));
        let want = x.decode(0, 39, &[toks[39]]).unwrap();
        assert!(llama_memory_seq_rm(mem, 0, 39, -1));
        // every position moves: only distances matter, so the logits stay
        llama_memory_seq_add(mem, 0, 0, -1, 100);
        assert_eq!(x.span(0), (100, 138));
        let moved = x.decode(0, 139, &[toks[39]]).unwrap();
        let err = rel_l2(&moved, &want);
        assert!(err < 1e-6, "rel L2 {err}");
        // a head removed: the rest keep their positions
        assert!(llama_memory_seq_rm(mem, 0, 100, 110));
        assert_eq!(x.span(0), (110, 139));
        // positions moved below 0 are removed
        llama_memory_seq_add(mem, 0, -1, -1, -120);
        assert_eq!(x.span(0), (0, 19));
        // a copy takes the positions along
        llama_memory_seq_cp(mem, 0, 1, -1, -1);
        assert_eq!(x.span(1), (0, 19));
        let a = x.decode(0, 20, &[7]).unwrap();
        let b = x.decode(1, 20, &[7]).unwrap();
        assert_eq!(a, b);
        // shifts that would overlap are refused and change nothing
        llama_memory_seq_add(mem, 0, 10, -1, -5);
        assert_eq!(x.span(0), (0, 20));
        llama_memory_seq_add(mem, 3, 0, -1, 5); // a sequence that holds nothing
        assert_eq!(x.span(3), (-1, -1));
        llama_memory_seq_add(null_mut(), 0, 0, -1, 5);
    }
}

#[test]
fn a_state_keeps_a_shifted_cache() {
    unsafe {
        let x = Ctx::new();
        let mem = x.mem();
        let toks = prompt(70);
        x.decode(0, 0, &toks).unwrap();
        assert!(llama_memory_seq_rm(mem, 0, 4, 30));
        llama_memory_seq_add(mem, 0, 30, -1, -26);
        llama_memory_seq_add(mem, 0, -1, -1, 3);
        let span = x.span(0);
        assert_eq!(span, (3, 46));
        let size = llama_state_get_size(x.c);
        let mut buf = vec![0u8; size];
        assert_eq!(llama_state_get_data(x.c, buf.as_mut_ptr(), size), size);
        let want = x.decode(0, 47, &[11]).unwrap();
        // into another context: the same positions and the same next logits
        let y = Ctx::new();
        assert_eq!(llama_state_set_data(y.c, buf.as_ptr(), size), size);
        assert_eq!(y.span(0), span);
        let got = y.decode(0, 47, &[11]).unwrap();
        assert_eq!(got, want, "a restored state computes exactly what the saved one did");
        // a state naming a sequence id this context does not take is refused
        let mut bad = buf.clone();
        bad[32..36].copy_from_slice(&300u32.to_le_bytes());
        assert_eq!(llama_state_set_data(y.c, bad.as_ptr(), size), 0, "sequence id 300 >= n_seq_max 4");
        // a state of another shape is refused
        buf[12] ^= 1;
        let z = Ctx::new();
        assert_eq!(llama_state_set_data(z.c, buf.as_ptr(), size), 0);
    }
}
