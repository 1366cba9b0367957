"""llama-cpp-python 0.3.36, unmodified, on ROCmForge's libllama.so.

Run by `make test-llama`: the sdist's pure-Python package is on PYTHONPATH
(nothing of it is built) and LLAMA_CPP_LIB_PATH names the directory of the
project's libllama.so. Models: the project's real SmolLM2 (and Qwen2.5 for a
second architecture); ROCMFORGE_C_IDS is the C example's greedy ids for the
same prompt.
"""
import json
import os

import numpy as np
import pytest

import llama_cpp
from llama_cpp import Llama, LlamaGrammar

ROOT = os.environ["ROCMFORGE_ROOT"]
SMOL = os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf")
QWEN = os.path.join(ROOT, "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
NOMIC = os.path.join(ROOT, "models/nomic-embed-text-v1.5.f16.gguf")
PROMPT = "The capital of France is"


def c_ids():
    with open(os.environ["ROCMFORGE_C_IDS"]) as f:
        line = [l for l in f.read().splitlines() if l.startswith("ids:")][0]
    return [int(x) for x in line.split()[1:]]


@pytest.fixture(scope="module")
def smol():
    llm = Llama(model_path=SMOL, n_ctx=512, n_threads=2, verbose=False, seed=1234)
    yield llm
    llm.close()


def test_the_library_is_rocmforge():
    assert b"rocmforge" in llama_cpp.llama_version()
    assert b"ROCmForge" in llama_cpp.llama_print_system_info()


def test_greedy_tokens_equal_the_c_api(smol):
    want = c_ids()
    toks = smol.tokenize(PROMPT.encode())
    got = []
    for t in smol.generate(toks, top_k=1, top_p=1.0, temp=0.0, reset=True):
        got.append(t)
        if len(got) == len(want):
            break
    assert got == want


def test_completion(smol):
    out = smol.create_completion(PROMPT, max_tokens=8, temperature=0.0)
    text = out["choices"][0]["text"]
    assert text.startswith(" Paris"), text
    assert out["usage"]["prompt_tokens"] == len(smol.tokenize(PROMPT.encode()))


def test_streaming_equals_one_shot(smol):
    one = smol.create_completion(PROMPT, max_tokens=12, temperature=0.0)["choices"][0]["text"]
    streamed = "".join(c["choices"][0]["text"] for c in smol.create_completion(PROMPT, max_tokens=12, temperature=0.0, stream=True))
    assert streamed == one


def test_chat_completion_uses_the_gguf_template(smol):
    assert "im_start" in smol.metadata["tokenizer.chat_template"]
    out = smol.create_chat_completion(messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16, temperature=0.0)
    msg = out["choices"][0]["message"]
    assert msg["role"] == "assistant"
    assert "Paris" in msg["content"], msg["content"]


def test_tokenize_detokenize(smol):
    text = b"Hello, world! \xc3\xa9t\xc3\xa9 42"
    toks = smol.tokenize(text, add_bos=False)
    assert smol.detokenize(toks) == text
    assert smol.n_vocab() == 49152
    assert smol.token_eos() >= 0


def test_logits_all():
    llm = Llama(model_path=SMOL, n_ctx=256, n_threads=2, verbose=False, logits_all=True)
    toks = llm.tokenize(PROMPT.encode())
    llm.eval(toks)
    scores = llm.scores[: len(toks)]
    assert scores.shape == (len(toks), llm.n_vocab())
    assert np.isfinite(scores).all()
    # the last row is what a last-only evaluation gives (read through the C
    # API: without logits_all the Python side keeps no scores)
    llm2 = Llama(model_path=SMOL, n_ctx=256, n_threads=2, verbose=False)
    llm2.eval(toks)
    ptr = llama_cpp.llama_get_logits_ith(llm2._ctx.ctx, -1)
    last = np.ctypeslib.as_array(ptr, shape=(llm2.n_vocab(),))
    assert np.array_equal(scores[-1], last)
    # the row of the previous position is there too, and differs
    assert not np.array_equal(scores[-2], scores[-1])
    llm.close()
    llm2.close()


def test_logit_bias(smol):
    target = smol.tokenize(b" banana", add_bos=False)[0]
    out = smol.create_completion(PROMPT, max_tokens=1, temperature=0.0, logit_bias={target: 100.0}, logprobs=None)
    assert smol.tokenize(out["choices"][0]["text"].encode(), add_bos=False)[0] == target


def test_save_and_load_state(smol):
    smol.reset()
    toks = smol.tokenize(PROMPT.encode())
    smol.eval(toks)
    state = smol.save_state()
    first = smol.sample(temp=0.0)
    smol.eval([first])
    after = smol.sample(temp=0.0)
    smol.load_state(state)
    assert smol.sample(temp=0.0) == first
    smol.eval([first])
    assert smol.sample(temp=0.0) == after


def test_json_grammar(smol):
    g = LlamaGrammar.from_string(llama_cpp.llama_grammar.JSON_GBNF, verbose=False)
    out = smol.create_completion("A JSON object describing a cat: ", max_tokens=48, temperature=0.0, grammar=g)
    text = out["choices"][0]["text"]
    if out["choices"][0]["finish_reason"] == "stop":
        json.loads(text)
    else:  # cut by max_tokens: still a valid prefix of JSON
        assert text.lstrip().startswith(("{", "[", '"')) or text.strip()[:1].isdigit(), text


def test_json_response_format(smol):
    out = smol.create_chat_completion(
        messages=[{"role": "user", "content": "Give me a JSON object with a key name set to Bob."}],
        response_format={"type": "json_object"},
        max_tokens=64,
        temperature=0.0,
    )
    json.loads(out["choices"][0]["message"]["content"])


def test_two_models_in_one_process(smol):
    qwen = Llama(model_path=QWEN, n_ctx=256, n_threads=2, verbose=False)
    a = smol.create_completion(PROMPT, max_tokens=4, temperature=0.0)["choices"][0]["text"]
    b = qwen.create_completion("def fibonacci(n):", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert a and b
    assert a == smol.create_completion(PROMPT, max_tokens=4, temperature=0.0)["choices"][0]["text"]
    qwen.close()


def test_seeded_sampling_repeats(smol):
    a = smol.create_completion(PROMPT, max_tokens=12, temperature=0.8, seed=42)["choices"][0]["text"]
    b = smol.create_completion(PROMPT, max_tokens=12, temperature=0.8, seed=42)["choices"][0]["text"]
    assert a == b


def test_embeddings():
    # pooling none (a decoder model's own): one vector per token, the final
    # hidden state after the output norm
    llm = Llama(model_path=SMOL, n_ctx=256, n_threads=2, verbose=False, embedding=True)
    per_token = np.array(llm.embed("The capital of France is"))
    n = len(llm.tokenize(b"The capital of France is"))
    assert per_token.shape == (n, llm.n_embd())
    assert np.isfinite(per_token).all() and np.abs(per_token).sum() > 0
    again = np.array(llm.embed("The capital of France is"))
    assert np.array_equal(per_token, again)
    llm.close()
    # mean pooling: the mean of those rows, one vector per input, normalized on request
    mean = Llama(model_path=SMOL, n_ctx=256, n_threads=2, verbose=False, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    v = np.array(mean.embed("The capital of France is"))
    assert v.shape == (mean.n_embd(),)
    assert np.allclose(v, per_token.mean(axis=0), rtol=1e-5, atol=1e-5)
    vs = np.array(mean.embed(["The capital of France is", "A cat sat on the mat"], normalize=True))
    assert vs.shape == (2, mean.n_embd())
    assert np.allclose(np.linalg.norm(vs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vs[0], vs[1])
    mean.close()


def test_embeddings_nomic_encoder():
    """An encoder (nomic-bert): llama_decode encodes each sequence of the
    batch bidirectionally with the model's pooling (mean), as llama.cpp
    does for BERT-like models. Against the float64 reference of
    tests/fixtures/embed: cosine >= 0.999; retrieval ranks the right
    passage first."""
    assert os.path.isfile(NOMIC), f"{NOMIC} not found: run `make models`"
    fx = json.load(open(os.path.join(ROOT, "tests/fixtures/embed/sentences.json")))
    d = fx["n_embd"]
    ref = np.fromfile(os.path.join(ROOT, "tests/fixtures/embed/mean.f32"), dtype="<f4").reshape(-1, d)
    llm = Llama(model_path=NOMIC, n_ctx=512, n_threads=2, verbose=False, embedding=True)
    assert llm.pooling_type() == llama_cpp.LLAMA_POOLING_TYPE_MEAN
    assert llm.n_embd() == d
    assert [llm.tokenize(t.encode()) for t in fx["sentences"][:3]] == fx["ids"][:3]
    # several sequences per batch (llama-cpp-python packs them), normalized
    got = np.array(llm.embed(fx["sentences"], normalize=True))
    assert got.shape == (20, d)
    cos = (got * ref).sum(axis=1)
    assert cos.min() >= 0.999, cos
    # unnormalized, one at a time: the same direction
    one = np.array(llm.embed(fx["sentences"][4]))
    assert np.dot(one / np.linalg.norm(one), ref[4]) >= 0.999
    q = np.array(llm.embed(fx["queries"], normalize=True))
    p = np.array(llm.embed(fx["passages"], normalize=True))
    assert list((q @ p.T).argmax(axis=1)) == fx["answers"]
    # an encoder has no logits: completions are refused
    with pytest.raises(Exception):
        llm.create_completion("hi", max_tokens=2)
    llm.close()
