'use strict';
// Needs ROCMFORGE_MODEL (SmolLM2 GGUF) and ROCMFORGE_C_IDS (file with the C
// example's "ids: ..." line). `make test-node` sets both.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const { execFileSync } = require('node:child_process');
const os = require('node:os');
const path = require('node:path');
const { load, deviceCount, backendCompiled, TOP_MAX } = require('..');

const MODEL = process.env.ROCMFORGE_MODEL;
const C_IDS = process.env.ROCMFORGE_C_IDS;
assert.ok(MODEL && C_IDS, 'set ROCMFORGE_MODEL and ROCMFORGE_C_IDS (make test-node)');
const idsLine = (s) => s.split('\n').find((l) => l.startsWith('ids:'));

test('the example prints exactly the C example ids', () => {
  const out = execFileSync(process.execPath, [path.join(__dirname, '..', 'example', 'simple.js'), MODEL, 'The capital of France is']).toString();
  assert.strictEqual(idsLine(out), idsLine(fs.readFileSync(C_IDS, 'utf8')));
});

test('a bad model path rejects with a coded Error', async () => {
  await assert.rejects(load('/nonexistent/model.gguf'), (e) => {
    assert.ok(e instanceof Error);
    assert.strictEqual(e.code, 'FORGE_ERR_IO');
    assert.strictEqual(e.status, 10);
    assert.match(e.message, /\/nonexistent\/model\.gguf/);
    return true;
  });
});

test('use after close fails cleanly', async () => {
  const m = await load(MODEL, { contextSize: 64 });
  m.close();
  m.close(); // idempotent
  assert.throws(() => m.tokenize('hi'), { code: 'ERR_CLOSED' });
  assert.throws(() => m.generate([1]), { code: 'ERR_CLOSED' });
});

test('streaming stops when the consumer stops; the event loop stays free', async () => {
  const m = await load(MODEL, { contextSize: 256 });
  try {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const got = [];
    for await (const t of m.stream('Once upon a time', { maxTokens: 64, temperature: 0 })) {
      got.push(t.token);
      if (got.length === 3) break;
    }
    clearInterval(timer);
    assert.strictEqual(got.length, 3);
    assert.ok(ticks > 0, 'timers ran while generating');
    // the model is free again after the consumer stopped
    const r = await m.generate('Hello', { maxTokens: 2, temperature: 0 });
    assert.strictEqual(r.tokens.length, 2);
    // an AbortSignal stops a generate() too
    const ac = new AbortController();
    let n = 0;
    const r2 = await m.generate('Once upon a time', { maxTokens: 64, temperature: 0, signal: ac.signal }, () => {
      if (++n === 2) ac.abort();
    });
    assert.strictEqual(r2.reason, 'callback');
    assert.ok(r2.tokens.length < 64);
  } finally {
    m.close();
  }
});

test('a busy model refuses a second generate or reset with FORGE_ERR_BUSY; sessions run in parallel', async () => {
  const m = await load(MODEL, { contextSize: 128 });
  const s = m.newSession();
  try {
    const a = m.generate('1, 2, 3,', { maxTokens: 8, temperature: 0 });
    const busy = { name: 'Error', code: 'FORGE_ERR_BUSY', status: 41, message: /generation is running/ };
    assert.throws(() => m.generate('x', { maxTokens: 1 }), busy);
    assert.throws(() => m.reset(), busy);
    await assert.rejects(async () => {
      for await (const t of m.stream('x', { maxTokens: 1 })) assert.fail(`streamed ${t.text}`);
    }, busy);
    // model-only calls are never busy (as in the C ABI)
    assert.deepStrictEqual(m.tokenize('1, 2', { addSpecial: false }), s.tokenize('1, 2', { addSpecial: false }));
    assert.strictEqual(m.info().arch, 'llama');
    const b = s.generate('1, 2, 3,', { maxTokens: 8, temperature: 0 });
    const [ra, rb] = await Promise.all([a, b]);
    assert.deepStrictEqual(ra.tokens, rb.tokens);
    // free again once the generation has settled
    m.reset();
    assert.strictEqual((await m.generate('1, 2, 3,', { maxTokens: 8, temperature: 0 })).text, ra.text);
  } finally {
    s.close();
    m.close();
  }
});

test('backend choice: auto runs on the CPU here; an unusable GPU backend is a coded error', async () => {
  const m = await load(MODEL, { contextSize: 64 });
  try {
    assert.match(m.backend(), /^cpu \(/);
  } finally {
    m.close();
  }
  assert.strictEqual(deviceCount('cpu'), 1);
  assert.ok(backendCompiled('cpu'));
  for (const b of ['cuda', 'hip']) {
    let n = 0;
    let err = null;
    try {
      n = deviceCount(b);
    } catch (e) {
      err = e;
    }
    if (!backendCompiled(b) || err) {
      assert.strictEqual(err.code, 'FORGE_ERR_BACKEND_UNAVAILABLE');
      await assert.rejects(load(MODEL, { contextSize: 64, backend: b, gpuMemBudget: 2 ** 30 }), { code: 'FORGE_ERR_BACKEND_UNAVAILABLE', status: 30 });
    } else {
      assert.ok(n > 0);
      const g = await load(MODEL, { contextSize: 64, backend: b });
      assert.match(g.backend(), new RegExp(`^${b}:`));
      g.close();
    }
  }
  const c = await load(MODEL, { contextSize: 64, backend: 'cpu', threads: 1 });
  assert.strictEqual(c.backend(), 'cpu (1 threads)');
  c.close();
  assert.throws(() => deviceCount('tpu'), { code: 'FORGE_ERR_INVALID_ARGUMENT' });
});

const INVALID_ARGUMENT = { code: 'FORGE_ERR_INVALID_ARGUMENT', status: 1 };

test('an unknown backend (string or number) is FORGE_ERR_INVALID_ARGUMENT, never a crash', async () => {
  for (const b of ['tpu', 'CPU', '', 42, -1, 1]) {
    const want = { ...INVALID_ARGUMENT, message: new RegExp(`backend must be 'auto', 'cpu', 'cuda' or 'hip', not '${b}'`) };
    await assert.rejects(load(MODEL, { contextSize: 64, backend: b }), want);
    assert.throws(() => deviceCount(b), want);
    assert.throws(() => backendCompiled(b), want);
  }
});

test('options out of range are FORGE_ERR_INVALID_ARGUMENT, not wrapped into valid ones', async () => {
  // above FORGE_MAX_THREADS / FORGE_MAX_CTX: the library's own message
  await assert.rejects(load(MODEL, { contextSize: 64, threads: 1025 }), { ...INVALID_ARGUMENT, message: /FORGE_MAX_THREADS/ });
  await assert.rejects(load(MODEL, { contextSize: 2 ** 24 + 1 }), { ...INVALID_ARGUMENT, message: /FORGE_MAX_CTX/ });
  // values a uint32_t cannot hold (2^32 + 1 would wrap to 1 thread), fractions, non-numbers
  for (const threads of [-1, 2 ** 32 + 1, 1.5, NaN, Infinity, '4']) {
    await assert.rejects(load(MODEL, { contextSize: 64, threads }), { ...INVALID_ARGUMENT, message: /threads must be an integer/ });
  }
  await assert.rejects(load(MODEL, { contextSize: 64, gpuIndex: 2 ** 31 }), { ...INVALID_ARGUMENT, message: /gpuIndex/ });
  const m = await load(MODEL, { contextSize: 64, threads: 1 });
  try {
    assert.throws(() => m.generate('Hi', { maxTokens: -1 }), { ...INVALID_ARGUMENT, message: /maxTokens/ });
    assert.throws(() => m.generate('Hi', { topK: 2 ** 32 }), { ...INVALID_ARGUMENT, message: /topK/ });
    assert.throws(() => m.generate('Hi', { temperature: 'hot' }), { ...INVALID_ARGUMENT, message: /temperature must be a number/ });
    await assert.rejects(m.generate('Hi', { topP: NaN }), INVALID_ARGUMENT); // the library's sampler check
    assert.throws(() => m.reset(-1), { ...INVALID_ARGUMENT, message: /nKeep/ });
    // none of that touched the model
    const r = await m.generate('Hi', { maxTokens: 2, temperature: 0 });
    assert.strictEqual(r.tokens.length, 2);
  } finally {
    m.close();
  }
});

test('a corrupt or truncated model is FORGE_ERR_INVALID_MODEL; a directory is FORGE_ERR_IO', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rocmforge-node-'));
  try {
    const real = fs.readFileSync(MODEL);
    const files = {
      'garbage.gguf': Buffer.concat([Buffer.from('GGUF'), Buffer.from('03000000', 'hex'), Buffer.from('garbage garbage garbage '), Buffer.alloc(8, 0xff)]),
      'truncated.gguf': real.subarray(0, 4096),
      'empty.gguf': Buffer.alloc(0),
    };
    for (const [name, bytes] of Object.entries(files)) {
      const f = path.join(dir, name);
      fs.writeFileSync(f, bytes);
      await assert.rejects(load(f, { contextSize: 64 }), (e) => {
        assert.ok(e instanceof Error, name);
        assert.strictEqual(e.code, 'FORGE_ERR_INVALID_MODEL', `${name}: ${e.message}`);
        assert.strictEqual(e.status, 11);
        assert.match(e.message, /corrupt GGUF/);
        return true;
      });
    }
    await assert.rejects(load(dir), { code: 'FORGE_ERR_IO', status: 10, message: /directory/ });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('every call after close() throws ERR_CLOSED; a session outlives its closed parent', async () => {
  const m = await load(MODEL, { contextSize: 64 });
  const s = m.newSession();
  const ids = s.tokenize('Hello');
  m.close();
  const closed = { code: 'ERR_CLOSED', status: -1, message: /model is closed/ };
  assert.throws(() => m.tokenize('hi'), closed);
  assert.throws(() => m.detokenize(ids), closed);
  assert.throws(() => m.info(), closed);
  assert.throws(() => m.backend(), closed);
  assert.throws(() => m.newSession(), closed);
  assert.throws(() => m.reset(), closed);
  assert.throws(() => m.generate(ids), closed);
  await assert.rejects(async () => {
    for await (const t of m.stream(ids)) assert.fail(`streamed ${t.text}`);
  }, closed);
  m.close(); // idempotent
  // the session shares the weights, not the lifetime
  assert.strictEqual(s.detokenize(ids), 'Hello');
  assert.strictEqual((await s.generate(ids, { maxTokens: 2, temperature: 0 })).tokens.length, 2);
  s.close();
  assert.throws(() => s.info(), closed);
});

test('close() during a generation: the running one completes, later calls throw ERR_CLOSED', async () => {
  const m = await load(MODEL, { contextSize: 64 });
  const running = m.generate('Once upon a time', { maxTokens: 4, temperature: 0 });
  m.close();
  assert.throws(() => m.generate('x'), { code: 'ERR_CLOSED' });
  const r = await running;
  assert.strictEqual(r.tokens.length, 4);
});

// ---- the engine: many sequences over one model ----

/** The first index of the largest logit (the library's greedy choice). */
function argmax(l) {
  let best = 0;
  for (let i = 1; i < l.length; i++) if (l[i] > l[best]) best = i;
  return best;
}
/** Rows appending `tokens` to `seq` from `pos`; the last asks for logits. */
const prefillRows = (seq, pos, tokens) => tokens.map((token, i) => ({ seq, token, pos: pos + i, logits: i === tokens.length - 1 }));
const KV_EXHAUSTED = { code: 'FORGE_ERR_KV_EXHAUSTED', status: 22 };

test('engine: two sequences interleaved, each gets its solo greedy tokens', async () => {
  const m = await load(MODEL, { contextSize: 512 });
  const e = m.newEngine();
  try {
    const steps = 8;
    const prompts = ['The capital of France is', 'Once upon a time'];
    const ptoks = prompts.map((p) => m.tokenize(p));
    const solo = [];
    for (const p of ptoks) {
      const s = m.newSession();
      solo.push((await s.generate(p, { maxTokens: steps, temperature: 0 })).tokens);
      s.close();
    }
    assert.strictEqual(solo[0].length, steps);
    assert.notDeepStrictEqual(solo[0], solo[1]);
    const seqs = [e.newSeq(), e.newSeq()];
    // both prompts in ONE decode
    const rows = [];
    const logitRow = [];
    seqs.forEach((s, i) => {
      rows.push(...prefillRows(s, 0, ptoks[i]));
      logitRow.push(rows.length - 1);
    });
    await e.decode(rows);
    const out = new Float32Array(e.nVocab);
    const got = seqs.map((_, i) => [argmax(e.logits(logitRow[i], out))]);
    assert.throws(() => e.logits(0), INVALID_ARGUMENT); // that row asked for none
    for (let step = 1; step < steps; step++) {
      const batch = seqs.map((seq, i) => ({ seq, token: got[i].at(-1), pos: e.seqLen(seq), logits: true }));
      if (step % 2) await e.decode(batch);
      else e.decodeSync(batch); // the same on the JS thread
      seqs.forEach((_, i) => got[i].push(argmax(e.logits(i))));
    }
    assert.deepStrictEqual(got[0], solo[0]);
    assert.deepStrictEqual(got[1], solo[1]);
    assert.strictEqual(e.seqLen(seqs[0]), ptoks[0].length + steps - 1);
  } finally {
    e.close();
    m.close();
  }
});

test('engine: fork, keep, prefix cache, invalid ids, stats back to zero', async () => {
  const m = await load(MODEL, { contextSize: 256 });
  const e = m.newEngine();
  try {
    const prompt = m.tokenize('The capital of France is');
    const src = e.newSeq();
    e.decodeSync(prefillRows(src, 0, prompt));
    const tok = argmax(e.logits(prompt.length - 1));
    const f = e.forkSeq(src);
    assert.notStrictEqual(f, src);
    assert.strictEqual(e.seqLen(f), prompt.length);
    const pos = prompt.length;
    await e.decode([{ seq: src, token: tok, pos, logits: true }, { seq: f, token: tok, pos, logits: true }]);
    assert.strictEqual(argmax(e.logits(1)), argmax(e.logits(0)), 'the fork predicts what its source does');
    e.keepSeq(f, 3);
    assert.strictEqual(e.seqLen(f), 3);
    let st = e.stats();
    assert.strictEqual(st.nSeqs, 2);
    assert.strictEqual(st.blockSize, 16);
    assert.ok(st.blocksUsed > 0);
    assert.strictEqual(st.blocksUsed + st.blocksFree, st.blocksTotal);

    // invalid ids: the library's INVALID_ARGUMENT; nothing changed
    for (const bad of [-1, 999]) {
      assert.throws(() => e.seqLen(bad), INVALID_ARGUMENT);
      assert.throws(() => e.freeSeq(bad), INVALID_ARGUMENT);
      assert.throws(() => e.forkSeq(bad), INVALID_ARGUMENT);
      assert.throws(() => e.keepSeq(bad, 0), INVALID_ARGUMENT);
      assert.throws(() => e.reusePrefix(bad, prompt), INVALID_ARGUMENT);
      assert.throws(() => e.decodeSync([{ seq: bad, token: 1, pos: 0, logits: true }]), INVALID_ARGUMENT);
      await assert.rejects(e.decode([{ seq: bad, token: 1, pos: 0 }]), INVALID_ARGUMENT);
    }
    // values the binding refuses before the C call: not wrapped into valid ones
    for (const seq of [2 ** 32 + src, 1.5, '0', undefined]) assert.throws(() => e.seqLen(seq), { ...INVALID_ARGUMENT, message: /seq must be an integer/ });
    assert.throws(() => e.decodeSync([]), INVALID_ARGUMENT);
    assert.throws(() => e.decodeSync([5]), { ...INVALID_ARGUMENT, message: /rows\[0\]/ });
    assert.throws(() => e.decodeSync([{ seq: src, token: 1 }]), { ...INVALID_ARGUMENT, message: /pos must be an integer/ });
    assert.throws(() => e.keepSeq(src, -1), { ...INVALID_ARGUMENT, message: /nKeep/ });
    assert.throws(() => e.logits(0, new Float64Array(e.nVocab)), { ...INVALID_ARGUMENT, message: /Float32Array/ });
    assert.throws(() => e.logits(0, new Float32Array(4)), { code: 'FORGE_ERR_BUFFER_TOO_SMALL', status: 3 });
    // a wrong position refuses the whole batch
    const before = e.seqLen(src);
    assert.throws(() => e.decodeSync([{ seq: src, token: 1, pos: before }, { seq: f, token: 1, pos: 0 }]), INVALID_ARGUMENT);
    assert.strictEqual(e.seqLen(src), before);

    // the prefix cache serves a freed sequence's full blocks to the next one
    const long = m.tokenize('The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again and again.');
    const a = e.newSeq();
    await e.decode(prefillRows(a, 0, long));
    const want = argmax(e.logits(long.length - 1));
    e.freeSeq(a);
    const b = e.newSeq();
    const reused = e.reusePrefix(b, long);
    assert.strictEqual(reused, Math.floor((long.length - 1) / 16) * 16);
    assert.ok(reused >= 16);
    assert.strictEqual(e.seqLen(b), reused);
    await e.decode(prefillRows(b, reused, long.slice(reused)));
    assert.strictEqual(argmax(e.logits(long.length - reused - 1)), want);
    st = e.stats();
    assert.ok(st.prefixHits >= 1 && st.prefixTokensReused >= reused, JSON.stringify(st));
    assert.throws(() => e.reusePrefix(b, long), INVALID_ARGUMENT); // not empty

    for (const s of [src, f, b]) e.freeSeq(s);
    st = e.stats();
    assert.strictEqual(st.blocksUsed, 0);
    assert.strictEqual(st.nSeqs, 0);
    assert.strictEqual(st.blocksFree, st.blocksTotal);
    assert.throws(() => e.freeSeq(b), INVALID_ARGUMENT); // already freed
  } finally {
    e.close();
    m.close();
  }
});

test('engine: a full KV pool is FORGE_ERR_KV_EXHAUSTED and the engine stays usable', async () => {
  const m = await load(MODEL, { contextSize: 64 });
  const e = m.newEngine({ contextSize: 64, kvBudget: 1 }); // the smallest pool: 64/16 + 1 blocks
  try {
    assert.strictEqual(e.stats().blocksTotal, 5);
    const toks = Array.from({ length: 48 }, (_, i) => 100 + i);
    const a = e.newSeq();
    const b = e.newSeq();
    await e.decode(prefillRows(a, 0, toks)); // 3 blocks
    await assert.rejects(e.decode(prefillRows(b, 0, toks)), { ...KV_EXHAUSTED, message: /blocks/ });
    assert.throws(() => e.decodeSync(prefillRows(b, 0, toks)), KV_EXHAUSTED);
    assert.strictEqual(e.seqLen(b), 0);
    assert.strictEqual(e.seqLen(a), toks.length);
    e.freeSeq(a);
    await e.decode(prefillRows(b, 0, toks));
    assert.strictEqual(e.logits(toks.length - 1).length, e.nVocab);
    e.freeSeq(b);
    assert.strictEqual(e.stats().blocksUsed, 0);
    assert.throws(() => m.newEngine({ contextSize: 2 ** 24 + 1 }), { ...INVALID_ARGUMENT, message: /FORGE_MAX_CTX/ });
    assert.throws(() => m.newEngine({ kvBudget: -1 }), { ...INVALID_ARGUMENT, message: /kvBudget/ });
  } finally {
    e.close();
    m.close();
  }
});

// A pool of exactly 6 blocks: SmolLM2-135M keeps (kv_dim + v_dim) * 2 bytes
// * n_layer = (192 + 192) * 2 * 30 bytes per position, 16 positions a block.
// a and b hold 20 positions (2 blocks each), the newer c 1 (1 block); 20 more
// rows each need a and b at 3 blocks and c at 2: 8 > 6. Without preempt that
// batch is FORGE_ERR_KV_EXHAUSTED; with it c is preempted (a and b then fill
// the 6 blocks), its rows get no logits and it holds nothing.
test('engine: preempt makes room by preempting the newest sequence', async () => {
  const m = await load(MODEL, { contextSize: 64 });
  try {
    const toks = Array.from({ length: 20 }, (_, i) => 100 + i);
    for (const preempt of [false, true]) {
      const e = m.newEngine({ contextSize: 48, kvBudget: 6 * 16 * (192 + 192) * 2 * 30, preempt });
      try {
        assert.strictEqual(e.stats().blocksTotal, 6);
        const a = e.newSeq();
        const b = e.newSeq();
        await e.decode([...prefillRows(a, 0, toks), ...prefillRows(b, 0, toks)]);
        assert.deepStrictEqual(e.preempted(), []);
        const c = e.newSeq();
        e.decodeSync([{ seq: c, token: 1, pos: 0 }]);
        assert.strictEqual(e.stats().blocksUsed, 5);
        // a's last row is 19, b's 39, c's 59
        const rows = [...prefillRows(a, 20, toks), ...prefillRows(b, 20, toks), ...prefillRows(c, 1, toks)];
        if (!preempt) {
          await assert.rejects(e.decode(rows), { ...KV_EXHAUSTED, message: /blocks/ });
          assert.deepStrictEqual(e.preempted(), []);
          assert.deepStrictEqual([a, b, c].map((s) => e.seqLen(s)), [20, 20, 1]);
          e.setPreempt(true); // the same batch now runs
        }
        await e.decode(rows);
        assert.deepStrictEqual(e.preempted(), [c]);
        assert.deepStrictEqual([a, b, c].map((s) => e.seqLen(s)), [40, 40, 0]);
        assert.strictEqual(e.stats().blocksUsed, 6);
        assert.strictEqual(e.logits(19).length, e.nVocab);
        assert.strictEqual(e.logits(39).length, e.nVocab);
        assert.throws(() => e.logits(59), INVALID_ARGUMENT); // the preempted sequence's row
        // the next decode that needs no preemption names none
        e.decodeSync([{ seq: a, token: 1, pos: 40, logits: true }]);
        assert.deepStrictEqual(e.preempted(), []);
        // turned off again, a batch that does not fit is refused
        e.setPreempt(false);
        assert.throws(() => e.decodeSync(prefillRows(c, 0, toks)), KV_EXHAUSTED);
        assert.deepStrictEqual([b, c].map((s) => e.seqLen(s)), [40, 0]);
      } finally {
        e.close();
      }
    }
  } finally {
    m.close();
  }
});

// The same two prompts in one batch, once with full logits and once under
// setTopK(5) in a fresh engine: the 5 ids are the full row's 5 largest
// (ties: the lower id) in descending order with the same values, and lse is
// the row's log-sum-exp. A k above TOP_MAX is refused and changes nothing;
// each mode refuses the other's read; setTopK(0) gives full logits back.
test('engine: setTopK(k) keeps the k largest logits with their ids and the log-sum-exp', async () => {
  const m = await load(MODEL, { contextSize: 512 });
  const full = m.newEngine();
  const e = m.newEngine();
  try {
    assert.strictEqual(TOP_MAX, 256);
    const ptoks = [m.tokenize('The capital of France is'), m.tokenize('Once upon a time')];
    // both prompts in one batch; returns each one's logits row
    const prefillBoth = async (eng, seqs) => {
      const rows = [];
      const logitRow = [];
      seqs.forEach((s, i) => {
        rows.push(...prefillRows(s, 0, ptoks[i]));
        logitRow.push(rows.length - 1);
      });
      await eng.decode(rows);
      return logitRow;
    };
    const closeTo = (got, want) => Math.abs(got - want) <= 1e-5 * Math.max(1, Math.abs(want));

    const lrow = await prefillBoth(full, [full.newSeq(), full.newSeq()]);
    const want = lrow.map((r) => full.logits(r));
    assert.throws(() => full.top(lrow[0]), { ...INVALID_ARGUMENT, message: /forge_engine_set_top_k/ }); // full mode

    assert.throws(() => e.setTopK(TOP_MAX + 1), { ...INVALID_ARGUMENT, message: /256/ });
    for (const k of [-1, 2 ** 32, 1.5, '5', undefined]) assert.throws(() => e.setTopK(k), { ...INVALID_ARGUMENT, message: /k must be an integer/ });
    e.setTopK(5);
    const seqs = [e.newSeq(), e.newSeq()];
    assert.deepStrictEqual(await prefillBoth(e, seqs), lrow);
    const top5 = [];
    want.forEach((l, i) => {
      const order = Array.from(l.keys())
        .sort((a, b) => l[b] - l[a] || a - b)
        .slice(0, 5);
      const t = e.top(lrow[i]);
      assert.ok(t.ids instanceof Int32Array && t.logits instanceof Float32Array && typeof t.lse === 'number');
      assert.deepStrictEqual(Array.from(t.ids), order, `row ${i}: the full row's 5 largest`);
      assert.strictEqual(t.logits.length, 5);
      t.ids.forEach((id, j) => {
        assert.ok(closeTo(t.logits[j], l[id]), `row ${i}: candidate ${j} (id ${id}) logit ${t.logits[j]}, full row ${l[id]}`);
        if (j > 0) assert.ok(t.logits[j - 1] >= t.logits[j], `row ${i}: descending`);
      });
      const mx = l[order[0]];
      const lse = mx + Math.log(l.reduce((s, x) => s + Math.exp(x - mx), 0));
      assert.ok(Math.abs(t.lse - lse) < 1e-3, `row ${i}: lse ${t.lse}, want ${lse}`);
      top5.push(Array.from(t.ids));
    });
    // top-k mode: no full logits; a row that did not ask (or is not there) has no candidates
    assert.throws(() => e.logits(lrow[0]), { ...INVALID_ARGUMENT, message: /forge_engine_top/ });
    assert.throws(() => e.logits(lrow[1], new Float32Array(e.nVocab)), INVALID_ARGUMENT);
    assert.throws(() => e.top(0), { ...INVALID_ARGUMENT, message: /did not ask/ });
    assert.throws(() => e.top(lrow[1] + 1), { ...INVALID_ARGUMENT, message: /rows/ });
    assert.throws(() => e.top(-1), { ...INVALID_ARGUMENT, message: /row must be an integer/ });
    // a refused k changes nothing: still top-5, the results still there
    assert.throws(() => e.setTopK(TOP_MAX + 1), INVALID_ARGUMENT);
    assert.deepStrictEqual(Array.from(e.top(lrow[1]).ids), top5[1]);
    // the largest k: TOP_MAX candidates, the first five as before
    e.setTopK(TOP_MAX);
    assert.throws(() => e.top(lrow[0]), INVALID_ARGUMENT); // setTopK dropped the last results
    seqs.forEach((s) => e.keepSeq(s, 0));
    await prefillBoth(e, seqs);
    const big = e.top(lrow[0]);
    assert.strictEqual(big.ids.length, TOP_MAX);
    assert.strictEqual(big.logits.length, TOP_MAX);
    assert.deepStrictEqual(Array.from(big.ids.subarray(0, 5)), top5[0]);
    assert.ok(big.logits.every((x, j) => j === 0 || big.logits[j - 1] >= x));
    // back to every logit: the same as the first engine's
    e.setTopK(0);
    seqs.forEach((s) => e.keepSeq(s, 0));
    await prefillBoth(e, seqs);
    lrow.forEach((r, i) => {
      const l = e.logits(r);
      assert.strictEqual(l.length, want[i].length);
      const bad = l.findIndex((x, j) => !closeTo(x, want[i][j]));
      assert.strictEqual(bad, -1, `row ${i}: logit ${bad} is ${l[bad]}, the full engine's ${want[i][bad]}`);
    });
    assert.throws(() => e.top(lrow[0]), INVALID_ARGUMENT);
  } finally {
    e.close();
    full.close();
    m.close();
  }
});

test('engine: busy while an async decode runs, close() during one, outlives its model', async () => {
  const m = await load(MODEL, { contextSize: 64 });
  const e = m.newEngine({ kvBudget: 1 });
  const hello = m.tokenize('Hello');
  m.close(); // the engine keeps the weights
  assert.throws(() => m.newEngine(), { code: 'ERR_CLOSED' });
  const s = e.newSeq();
  const running = e.decode(prefillRows(s, 0, hello));
  const busy = { code: 'FORGE_ERR_BUSY', status: 41, message: /decode is running/ };
  assert.throws(() => e.seqLen(s), busy);
  assert.throws(() => e.logits(0), busy);
  assert.throws(() => e.preempted(), busy);
  assert.throws(() => e.setTopK(5), busy);
  assert.throws(() => e.top(0), busy);
  assert.throws(() => e.decodeSync([{ seq: s, token: 1, pos: 0 }]), busy);
  assert.throws(() => e.decode([{ seq: s, token: 1, pos: 0 }]), busy);
  await running;
  assert.strictEqual(e.seqLen(s), hello.length);
  // close() during a decode: it completes, later calls throw ERR_CLOSED
  const last = e.decode([{ seq: s, token: 1, pos: hello.length, logits: true }]);
  e.close();
  await last;
  const closed = { code: 'ERR_CLOSED', status: -1, message: /engine is closed/ };
  for (const call of [() => e.newSeq(), () => e.seqLen(s), () => e.stats(), () => e.logits(0), () => e.nVocab, () => e.freeSeq(s), () => e.decodeSync([]), () => e.preempted(), () => e.setPreempt(true), () => e.setTopK(5), () => e.top(0)]) {
    assert.throws(call, closed);
  }
  assert.throws(() => e.decode([]), closed);
  e.close(); // idempotent
});

test('embeddings: a decoder and the nomic-bert encoder', async () => {
  const m = await load(MODEL, { contextSize: 64 });
  const e = m.embed('The capital of France is');
  assert.ok(e instanceof Float32Array);
  assert.strictEqual(e.length, m.info().nEmbd);
  assert.ok(Math.abs(Math.hypot(...e) - 1) < 1e-4);
  assert.deepStrictEqual(m.embed(m.tokenize('The capital of France is')), e);
  const ids = m.tokenize('Hi there');
  assert.strictEqual(m.embed(ids, { pooling: 'none', normalize: false }).length, ids.length * m.info().nEmbd);
  assert.throws(() => m.embed([-1]), { code: 'FORGE_ERR_INVALID_ARGUMENT' });
  assert.throws(() => m.embed('x', { pooling: 'max' }), { code: 'FORGE_ERR_INVALID_ARGUMENT' });
  assert.strictEqual(m.isEncoder(), false);
  m.close();

  const nomic = await load(path.join(path.dirname(MODEL), 'nomic-embed-text-v1.5.f16.gguf'));
  assert.strictEqual(nomic.isEncoder(), true);
  const dot = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0);
  const q = nomic.embed('search_query: What is the tallest mountain on Earth?');
  assert.strictEqual(q.length, 768);
  const right = nomic.embed('search_document: Mount Everest, in the Himalayas, rises 8,849 metres above sea level.');
  const wrong = nomic.embed('search_document: Sourdough bread rises thanks to wild yeast.');
  assert.ok(dot(q, right) > dot(q, wrong) + 0.1, `${dot(q, right)} vs ${dot(q, wrong)}`);
  assert.throws(() => nomic.reset(0), { code: 'FORGE_ERR_UNSUPPORTED' });
  nomic.close();
});
