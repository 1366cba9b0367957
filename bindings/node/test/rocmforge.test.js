'use strict';
// Needs ROCMFORGE_MODEL (SmolLM2 GGUF) and ROCMFORGE_C_IDS (file with the C
// example's "ids: ..." line). `make test-node` sets both.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const { execFileSync } = require('node:child_process');
const path = require('node:path');
const { load, deviceCount, backendCompiled } = require('..');

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

test('a busy model refuses a second generate; sessions run in parallel', async () => {
  const m = await load(MODEL, { contextSize: 128 });
  const s = m.newSession();
  try {
    const a = m.generate('1, 2, 3,', { maxTokens: 8, temperature: 0 });
    assert.throws(() => m.tokenize('x'), { code: 'ERR_BUSY' });
    const b = s.generate('1, 2, 3,', { maxTokens: 8, temperature: 0 });
    const [ra, rb] = await Promise.all([a, b]);
    assert.deepStrictEqual(ra.tokens, rb.tokens);
    assert.strictEqual(m.info().arch, 'llama');
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
