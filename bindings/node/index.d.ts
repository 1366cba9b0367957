/**
 * Error objects from rocmforge carry the C status name and number, e.g.
 * FORGE_ERR_INVALID_ARGUMENT (1; also an unknown backend or an option out of
 * range), FORGE_ERR_IO (10; also a directory), FORGE_ERR_INVALID_MODEL (11;
 * a corrupt or truncated file), FORGE_ERR_KV_EXHAUSTED (22; an engine's KV
 * pool cannot hold a batch), FORGE_ERR_BUSY (41; generate() or reset()
 * while a generation runs on the same model, or an engine call while its
 * async decode() runs).
 */
export interface ForgeError extends Error {
  /** e.g. "FORGE_ERR_IO", "FORGE_ERR_INVALID_MODEL", "FORGE_ERR_KV_EXHAUSTED", "FORGE_ERR_BUSY", or "ERR_CLOSED" from the binding */
  code: string;
  /** forge_status number (FORGE_ERR_BUSY: 41), -1 for ERR_CLOSED / ERR_ABI_MISMATCH */
  status?: number;
}

export interface LoadOptions {
  /** CPU worker threads, 0..1024 (FORGE_MAX_THREADS); 0 = one per core */
  threads?: number;
  /** KV cache size, 0..16777216 (FORGE_MAX_CTX); 0 = min(n_ctx_train, 4096) */
  contextSize?: number;
  /** 'auto' (default): the first GPU of a compiled-in GPU backend, else the CPU; anything else is FORGE_ERR_INVALID_ARGUMENT */
  backend?: Backend;
  /** device index of a GPU backend; default 0 */
  gpuIndex?: number;
  /** bytes of device memory for weights, KV cache and scratch; 0 = free memory less 5% */
  gpuMemBudget?: number;
}

export type Backend = 'auto' | 'cpu' | 'cuda' | 'hip';

/** 'default': the model's own pooling_type (mean when unset) */
export type Pooling = 'default' | 'none' | 'mean' | 'cls' | 'last';

export interface GenerateOptions {
  maxTokens?: number;
  /** <= 0: greedy */
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repeatPenalty?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
  penaltyLastN?: number;
  seed?: number;
  stop?: string[];
  signal?: AbortSignal;
}

export interface GenerateResult {
  tokens: number[];
  text: string;
  reason: 'eog' | 'max_tokens' | 'stop' | 'callback' | 'context_full';
}

export interface ModelInfo {
  arch: string;
  nVocab: number;
  nCtxTrain: number;
  nCtx: number;
  nLayer: number;
  nEmbd: number;
  bos: number;
  eos: number;
  eot: number;
  chatTemplate: string | null;
}

export class Model {
  tokenize(text: string, options?: { addSpecial?: boolean; parseSpecial?: boolean }): number[];
  detokenize(ids: ArrayLike<number>): string;
  info(): ModelInfo;
  /** where this model runs, e.g. "cpu (8 threads)" or "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)" */
  backend(): string;
  newSession(): Model;
  /** throws FORGE_ERR_BUSY while a generation runs on this model */
  reset(nKeep?: number): void;
  /** many sequences over this model's weights; the engine keeps them loaded (this model may be closed first) */
  newEngine(options?: EngineOptions): Engine;
  /** the embedding of text (with the model's special tokens) or ids: n_embd floats, one row per token with pooling 'none'; synchronous */
  embed(input: string | ArrayLike<number>, options?: { pooling?: Pooling; normalize?: boolean }): Float32Array;
  /** an embedding-only encoder (nomic-bert): generate and reset fail with FORGE_ERR_UNSUPPORTED */
  isEncoder(): boolean;
  close(): void;
  /** throws FORGE_ERR_BUSY while another generation runs on this model (use newSession() for parallel work) */
  generate(prompt: string | ArrayLike<number>, options?: GenerateOptions, onToken?: (token: number, text: string) => void): Promise<GenerateResult>;
  stream(prompt: string | ArrayLike<number>, options?: GenerateOptions): AsyncGenerator<{ token: number; text: string }>;
}

export interface EngineOptions {
  /** most positions one sequence may hold, 0..16777216; 0 = the model's contextSize */
  contextSize?: number;
  /** bytes of KV cache for all sequences (whole blocks of 16 positions, at least one full sequence); 0 = four full sequences */
  kvBudget?: number;
  /** a batch the pool cannot hold preempts the newest sequences until it fits, instead of FORGE_ERR_KV_EXHAUSTED (Engine.setPreempt); default false */
  preempt?: boolean;
}

/** One row of a batch: `token` appended to sequence `seq` at position `pos` (its length, plus one per earlier row of it in the batch). */
export interface BatchRow {
  seq: number;
  token: number;
  pos: number;
  /** ask for this row's logits (Engine.logits) */
  logits?: boolean;
}

export interface KvStats {
  blocksTotal: number;
  /** positions per block */
  blockSize: number;
  /** blocks some sequence holds */
  blocksUsed: number;
  /** blocks no sequence holds (free, or cached and evictable) */
  blocksFree: number;
  /** of the free ones, blocks the prefix cache keeps */
  blocksCached: number;
  prefixHits: number;
  prefixTokensReused: number;
  /** blocks copied because a shared block was written (forks) */
  cowCopies: number;
  /** sequences alive */
  nSeqs: number;
}

/** One row's candidates under Engine.setTopK(k): k entries, largest logit first (ties: the lower id first). */
export interface TopK {
  /** token ids */
  ids: Int32Array;
  /** their logits */
  logits: Float32Array;
  /** the row's log-sum-exp over the whole vocabulary: a candidate's log-probability is its logit minus lse */
  lse: number;
}

/**
 * Many sequences over one loaded model (Model.newEngine). Sequence ids are
 * numbers; an unknown or freed id throws FORGE_ERR_INVALID_ARGUMENT. While
 * an async decode() runs, every other call throws FORGE_ERR_BUSY.
 */
export class Engine {
  readonly nVocab: number;
  newSeq(): number;
  freeSeq(seq: number): void;
  /** a new sequence sharing `src`'s positions (copy-on-write) */
  forkSeq(src: number): number;
  keepSeq(seq: number, nKeep: number): void;
  seqLen(seq: number): number;
  /** positions reused from the prefix cache for an empty sequence's prompt */
  reusePrefix(seq: number, tokens: ArrayLike<number>): number;
  /** one batch on a worker thread; rejects with FORGE_ERR_KV_EXHAUSTED (unless preempting), FORGE_ERR_CONTEXT_FULL, FORGE_ERR_INVALID_ARGUMENT (nothing moved) */
  decode(rows: ArrayLike<BatchRow>): Promise<void>;
  /** one batch on the JS thread (blocks the event loop) */
  decodeSync(rows: ArrayLike<BatchRow>): void;
  /** row's logits of the last decode (nVocab floats), into `out` when given */
  logits(row: number, out?: Float32Array): Float32Array;
  /** 0 (default): decode keeps every logit (logits()); 1..min(TOP_MAX, nVocab): only the k largest per row with their ids and log-sum-exp (top()); the other read throws FORGE_ERR_INVALID_ARGUMENT */
  setTopK(k: number): void;
  /** row's k candidates of the last decode under setTopK(k >= 1); FORGE_ERR_INVALID_ARGUMENT in full mode */
  top(row: number): TopK;
  stats(): KvStats;
  /** true: a batch the pool cannot hold preempts the newest sequences (length 0 afterwards, no logits for their rows in it); false: FORGE_ERR_KV_EXHAUSTED */
  setPreempt(on: boolean): void;
  /** the sequence ids the last decode preempted, in order ([] when none) */
  preempted(): number[];
  close(): void;
}

export function load(path: string, options?: LoadOptions): Promise<Model>;
export const ABI_VERSION: number;
/** the largest Engine.setTopK value, 256 (FORGE_TOP_MAX; nVocab when that is smaller) */
export const TOP_MAX: number;
/** devices of a backend this process can use; throws (code FORGE_ERR_BACKEND_UNAVAILABLE) when none */
export function deviceCount(backend: Backend): number;
/** whether the library was built with this backend */
export function backendCompiled(backend: Backend): boolean;
export const version: string;
