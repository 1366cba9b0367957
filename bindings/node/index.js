'use strict';
// rocmforge for Node: a thin wrapper over the N-API addon (src/addon.cc),
// which calls only the C ABI. Loading, generation and engine decodes run on
// worker threads; promises and async iterators deliver the results.
const native = require('./build/Release/rocmforge.node');

/** The C ABI version this package was written for. */
const ABI_VERSION = 3;
/** The largest Engine.setTopK value (FORGE_TOP_MAX; nVocab when that is smaller). */
const TOP_MAX = native.topMax;
if (native.abiVersion !== ABI_VERSION) {
  const e = new Error(`librocmforge ABI version ${native.abiVersion}, this package needs ${ABI_VERSION}`);
  e.code = 'ERR_ABI_MISMATCH';
  throw e;
}

function closedError(what = 'model') {
  const e = new Error(`rocmforge: ${what} is closed`);
  e.code = 'ERR_CLOSED';
  e.status = -1; // as the addon's ERR_CLOSED: raised by the binding, no C status
  return e;
}

const POOLING = { default: -1, none: 0, mean: 1, cls: 2, last: 3 };

class Model {
  #n;
  constructor(n) {
    this.#n = n;
  }
  #native() {
    if (!this.#n) throw closedError();
    return this.#n;
  }
  /** Token ids of `text`. addSpecial: BOS/EOS as the model asks; parseSpecial: control tokens in the text become ids. */
  tokenize(text, { addSpecial = true, parseSpecial = false } = {}) {
    return this.#native().tokenize(String(text), addSpecial, parseSpecial);
  }
  detokenize(ids) {
    return this.#native().detokenize(Array.from(ids));
  }
  info() {
    return this.#native().info();
  }
  /** Where this model runs: "cpu (N threads)" or e.g. "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)". */
  backend() {
    return this.#native().backend();
  }
  /** Another sequence on the same loaded weights (shared, not copied). */
  newSession() {
    return new Model(this.#native().newSession());
  }
  /**
   * The embedding of `input` (text, tokenized with the model's special
   * tokens, or ids) as a Float32Array: n_embd floats, or one row per token
   * with pooling 'none'. pooling: 'default' (the model's own), 'none',
   * 'mean', 'cls', 'last'; normalize: unit L2 length (default true). An
   * encoder (nomic-bert, isEncoder()) runs its bidirectional pass, a decoder
   * gives its final hidden states. Synchronous; works while a generation runs.
   */
  embed(input, { pooling = 'default', normalize = true } = {}) {
    const p = POOLING[pooling];
    if (p === undefined) {
      const e = new Error(`rocmforge: pooling ${JSON.stringify(pooling)} is not one of ${Object.keys(POOLING).join(', ')}`);
      e.code = 'FORGE_ERR_INVALID_ARGUMENT';
      e.status = 1;
      throw e;
    }
    const ids = typeof input === 'string' ? this.tokenize(input) : Array.from(input);
    return this.#native().embed(ids, p, Boolean(normalize));
  }
  /** An embedding-only encoder (nomic-bert): generate and reset fail with FORGE_ERR_UNSUPPORTED; embed works. */
  isEncoder() {
    return this.#native().isEncoder();
  }
  /** Keep the first nKeep positions of the KV cache (0 clears it). Throws FORGE_ERR_BUSY while a generation runs. */
  reset(nKeep = 0) {
    this.#native().reset(nKeep);
  }
  /**
   * An Engine: many sequences over this model's loaded weights (shared, not
   * copied; the engine keeps them loaded, so this model may be closed first).
   * options: {contextSize: most positions per sequence (0 = this model's),
   * kvBudget: bytes of KV cache for all sequences (0 = four full sequences;
   * at least one), preempt: a batch the pool cannot hold preempts the
   * newest sequences instead of FORGE_ERR_KV_EXHAUSTED (Engine.setPreempt)}.
   * Works while a generation runs on this model.
   */
  newEngine(options = {}) {
    return new Engine(this.#native().newEngine(options));
  }
  /** Free the context; later calls throw ERR_CLOSED. Idempotent. */
  close() {
    if (this.#n) this.#n.close();
    this.#n = null;
  }
  #prompt(prompt) {
    return typeof prompt === 'string' ? this.tokenize(prompt) : Array.from(prompt);
  }
  /**
   * Generate from a prompt (text or ids) off the main thread. `onToken(token, text)`
   * is called on the event loop for each token; `options.signal` (AbortSignal) stops early.
   * Resolves to {tokens, text, reason} after every token has been delivered.
   * Throws FORGE_ERR_BUSY (status 41) while another generation runs on this
   * model; tokenize, detokenize, info, backend and newSession work meanwhile.
   */
  generate(prompt, options = {}, onToken) {
    const n = this.#native();
    const ids = this.#prompt(prompt);
    let drained;
    const done = new Promise((r) => (drained = r));
    const cb = (token, text) => {
      if (token === -2) return drained();
      if (onToken) onToken(token, text);
    };
    const control = {};
    const result = n.generate(ids, options, cb, control);
    if (options.signal) {
      if (options.signal.aborted) control.abort();
      else options.signal.addEventListener('abort', () => control.abort(), { once: true });
    }
    return Promise.all([result, done]).then(([r]) => r);
  }
  /**
   * Stream tokens as an async iterator of {token, text}. Breaking out of the
   * loop stops generation.
   */
  async *stream(prompt, options = {}) {
    const queue = [];
    let wake = null;
    let finished = false;
    const ac = new AbortController();
    if (options.signal) options.signal.addEventListener('abort', () => ac.abort(), { once: true });
    const run = this.generate(prompt, { ...options, signal: ac.signal }, (token, text) => {
      queue.push({ token, text });
      if (wake) wake();
    }).finally(() => {
      finished = true;
      if (wake) wake();
    });
    run.catch(() => {});
    try {
      for (;;) {
        while (queue.length) yield queue.shift();
        if (finished) break;
        await new Promise((r) => (wake = r));
        wake = null;
      }
      await run; // surface errors
    } finally {
      ac.abort(); // consumer stopped early: stop generating
      await run.catch(() => {});
    }
  }
}

/**
 * Many sequences over one loaded model: a paged KV block pool and one batch
 * of rows per decode. Sequences are numeric ids (not reused while the engine
 * lives); an unknown or freed id throws FORGE_ERR_INVALID_ARGUMENT.
 * `decode` runs the batch on a worker thread; until its promise settles,
 * every other call on the engine throws FORGE_ERR_BUSY. `decodeSync` runs it
 * on the JS thread (blocking the event loop). Every other method is
 * synchronous and quick.
 */
class Engine {
  #n;
  constructor(n) {
    this.#n = n;
  }
  #native() {
    if (!this.#n) throw closedError('engine');
    return this.#n;
  }
  /** Length of a row's logits. */
  get nVocab() {
    return this.#native().nVocab();
  }
  /** A new, empty sequence; returns its id. */
  newSeq() {
    return this.#native().newSeq();
  }
  /** Remove a sequence and give its KV blocks back (full ones stay in the prefix cache until needed). */
  freeSeq(seq) {
    this.#native().freeSeq(seq);
  }
  /** A new sequence with the same positions as `src`, sharing its full KV blocks copy-on-write. */
  forkSeq(src) {
    return this.#native().forkSeq(src);
  }
  /** Keep the first nKeep positions of a sequence (0 clears it). */
  keepSeq(seq, nKeep) {
    this.#native().keepSeq(seq, nKeep);
  }
  /** Positions a sequence holds: the `pos` of its next row. */
  seqLen(seq) {
    return this.#native().seqLen(seq);
  }
  /**
   * The prefix cache: give an empty sequence the cached KV blocks its prompt
   * starts with. Returns the positions reused (whole blocks, never the last
   * token): decode tokens.slice(n) from position n.
   */
  reusePrefix(seq, tokens) {
    return this.#native().reusePrefix(seq, Array.from(tokens));
  }
  /**
   * Run one batch of rows [{seq, token, pos, logits}] (prefill chunks and
   * decode steps of any sequences together) on a worker thread. All or
   * nothing: a rejection (FORGE_ERR_INVALID_ARGUMENT, FORGE_ERR_CONTEXT_FULL,
   * FORGE_ERR_KV_EXHAUSTED) moved no sequence, and the engine stays usable.
   * With preemption on, a batch the pool cannot hold runs instead, less the
   * sequences preempted() names.
   */
  decode(rows) {
    return this.#native().decode(Array.from(rows));
  }
  /** decode() on the JS thread: returns when the batch is done, throws its error. */
  decodeSync(rows) {
    this.#native().decodeSync(Array.from(rows));
  }
  /**
   * Row `row`'s logits of the last successful decode, as a Float32Array of
   * nVocab (into `out` when given). Throws FORGE_ERR_INVALID_ARGUMENT for no
   * such row or a row that did not ask for logits.
   */
  logits(row, out) {
    return this.#native().logits(row, out);
  }
  /**
   * What decode keeps for the rows that ask for logits: k = 0 (the default)
   * every logit (logits()); 1 <= k <= min(TOP_MAX, nVocab) only the k
   * largest with their token ids and the row's log-sum-exp (top()), selected
   * on the device by a GPU backend (k * 8 + 4 bytes a row come back instead
   * of nVocab floats). In top-k mode logits() throws
   * FORGE_ERR_INVALID_ARGUMENT, and top() does in full mode. The last
   * decode's results are dropped. A k out of range throws
   * FORGE_ERR_INVALID_ARGUMENT and changes nothing.
   */
  setTopK(k) {
    this.#native().setTopK(k);
  }
  /**
   * Row `row`'s candidates of the last successful decode under setTopK(k),
   * k >= 1: {ids: Int32Array, logits: Float32Array, lse} with k entries,
   * largest first (ties: the lower id first); lse is the row's log-sum-exp
   * (a candidate's log-probability is its logit minus lse). Throws
   * FORGE_ERR_INVALID_ARGUMENT in full mode, for no such row or a row that
   * did not ask for logits.
   */
  top(row) {
    return this.#native().top(row);
  }
  /**
   * What decode does with a batch the KV pool cannot hold: false (the
   * default) rejects it with FORGE_ERR_KV_EXHAUSTED; true preempts the newest
   * sequences (by creation; forks are new) one by one until the rest fits. A
   * preempted sequence keeps its id but holds no positions afterwards (seqLen
   * 0: decode its tokens again later), and its rows in that batch get no
   * logits (logits() throws FORGE_ERR_INVALID_ARGUMENT). The oldest sequence
   * with rows in the batch is never preempted.
   */
  setPreempt(on) {
    this.#native().setPreempt(Boolean(on));
  }
  /** The sequence ids the last decode preempted, in order ([] when none). */
  preempted() {
    return this.#native().preempted();
  }
  /** KV pool statistics: {blocksTotal, blockSize, blocksUsed, blocksFree, blocksCached, prefixHits, prefixTokensReused, cowCopies, nSeqs}. */
  stats() {
    return this.#native().stats();
  }
  /** Free the engine and its sequences (a running decode finishes first); later calls throw ERR_CLOSED. Idempotent. */
  close() {
    if (this.#n) this.#n.close();
    this.#n = null;
  }
}

/**
 * Load a GGUF model off the main thread. options: {threads (0..1024),
 * contextSize (0..2^24), backend: 'auto' | 'cpu' | 'cuda' | 'hip', gpuIndex,
 * gpuMemBudget (bytes)}. Rejects with FORGE_ERR_INVALID_ARGUMENT for an
 * unknown backend or an option out of range, FORGE_ERR_IO for a missing file
 * or a directory, FORGE_ERR_INVALID_MODEL for a corrupt or truncated file.
 */
async function load(path, options = {}) {
  return new Model(await native.load(String(path), options));
}

/**
 * Devices of a backend this process can use ('cpu'/'auto': 1); throws
 * FORGE_ERR_BACKEND_UNAVAILABLE when none, FORGE_ERR_INVALID_ARGUMENT for an unknown backend.
 */
function deviceCount(backend) {
  return native.deviceCount(String(backend));
}
/** Whether the library was built with this backend ('cpu' and 'auto' always are); throws FORGE_ERR_INVALID_ARGUMENT for an unknown one. */
function backendCompiled(backend) {
  return native.backendCompiled(String(backend));
}

module.exports = { load, Model, Engine, ABI_VERSION, TOP_MAX, version: native.version, deviceCount, backendCompiled };
