'use strict';
// rocmforge for Node: a thin wrapper over the N-API addon (src/addon.cc),
// which calls only the C ABI. Loading and generation run on worker threads;
// promises and async iterators deliver the results.
const native = require('./build/Release/rocmforge.node');

/** The C ABI version this package was written for. */
const ABI_VERSION = 3;
if (native.abiVersion !== ABI_VERSION) {
  const e = new Error(`librocmforge ABI version ${native.abiVersion}, this package needs ${ABI_VERSION}`);
  e.code = 'ERR_ABI_MISMATCH';
  throw e;
}

function closedError() {
  const e = new Error('rocmforge: model is closed');
  e.code = 'ERR_CLOSED';
  e.status = -1; // as the addon's ERR_CLOSED: raised by the binding, no C status
  return e;
}

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
  /** Keep the first nKeep positions of the KV cache (0 clears it). Throws FORGE_ERR_BUSY while a generation runs. */
  reset(nKeep = 0) {
    this.#native().reset(nKeep);
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

module.exports = { load, Model, ABI_VERSION, version: native.version, deviceCount, backendCompiled };
