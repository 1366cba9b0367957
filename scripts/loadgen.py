#!/usr/bin/env python3
"""Bounded loopback load generator for OpenAI-compatible completion servers.

Targets rocmforge-server or llama.cpp's llama-server (both speak the same
/v1/completions API; llama-server ignores unknown fields and also understands
``ignore_eos``). Dependencies: the Python standard library + httpx (asyncio).

Metrics follow vLLM's benchmarks/benchmark_serving.py definitions:
  TTFT  request send -> first content chunk (first chunk with non-empty text)
  TPOT  (e2e - TTFT) / (output_tokens - 1), per request with > 1 output token
  ITL   gaps between consecutive content chunks (all requests pooled)
  E2EL  request send -> last byte of the response
Output token counts come from the stream's usage chunk
(stream_options.include_usage); if a server sends none, the number of content
chunks is used instead and the result says so.

Each prompt is exactly --prompt-tokens random token ids (drawn with a fixed
seed from --token-range, different for each prompt so the prefix cache does
not help), sent through the completions API's token-id prompt form.

Safety bounds: the target must be a loopback address; --num-prompts is capped;
the whole run is cut at --max-duration seconds (outstanding requests are
cancelled and counted as failed).

Example:
  python scripts/loadgen.py --url http://127.0.0.1:8080 --num-prompts 8 \\
      --concurrency 4 --prompt-tokens 128 --max-tokens 16 --ignore-eos
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import random
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

import httpx

MAX_PROMPTS = 10_000


@dataclass
class Result:
    index: int
    ok: bool = False
    error: str = ""
    prompt_tokens: int = 0  # from usage when the server reports it, else the sent length
    output_tokens: int = 0
    output_tokens_from_usage: bool = False
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    text_len: int = 0


def is_loopback_url(url: str) -> bool:
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addrs = {info[4][0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def percentile(xs: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "std": None}
    return {
        "n": len(xs),
        "mean": statistics.fmean(xs),
        "p50": percentile(xs, 50),
        "p90": percentile(xs, 90),
        "p99": percentile(xs, 99),
        "std": statistics.pstdev(xs) if len(xs) > 1 else 0.0,
    }


def make_prompts(n: int, length: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randint(lo, hi) for _ in range(length)] for _ in range(n)]


def build_body(args, prompt: list[int]) -> dict:
    body = {
        "model": args.model,
        "prompt": prompt,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "stream": args.stream,
    }
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def one_request(client: httpx.AsyncClient, args, index: int, prompt: list[int]) -> Result:
    res = Result(index=index, prompt_tokens=len(prompt))
    body = build_body(args, prompt)
    usage = None
    st = time.perf_counter()
    try:
        if args.stream:
            chunks = 0
            last = None
            async with client.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    res.error = f"HTTP {r.status_code}: {r.text[:200]}"
                    res.e2e = time.perf_counter() - st
                    return res
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators and ": keep-alive" comments
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    data = json.loads(payload)
                    if data.get("error"):
                        res.error = f"stream error: {json.dumps(data['error'])[:200]}"
                        break
                    now = time.perf_counter()
                    for choice in data.get("choices") or []:
                        text = choice.get("text") or ""
                        if text:
                            if last is None:
                                res.ttft = now - st
                            else:
                                res.itl.append(now - last)
                            last = now
                            chunks += 1
                            res.text_len += len(text)
                        if choice.get("finish_reason"):
                            res.finish_reason = choice["finish_reason"]
                    if data.get("usage"):
                        usage = data["usage"]
            res.e2e = time.perf_counter() - st
            if last is None and not res.error:
                res.error = "no content chunk received"
            if usage:
                res.output_tokens = int(usage.get("completion_tokens", 0))
                res.output_tokens_from_usage = True
            else:
                res.output_tokens = chunks
        else:
            r = await client.post("/v1/completions", json=body)
            res.e2e = time.perf_counter() - st
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {r.text[:200]}"
                return res
            data = r.json()
            res.ttft = res.e2e  # no stream: the first token arrives with the whole answer
            choices = data.get("choices") or [{}]
            res.finish_reason = choices[0].get("finish_reason")
            res.text_len = len(choices[0].get("text") or "")
            usage = data.get("usage")
            if usage:
                res.output_tokens = int(usage.get("completion_tokens", 0))
                res.output_tokens_from_usage = True
        if usage and usage.get("prompt_tokens") is not None:
            res.prompt_tokens = int(usage["prompt_tokens"])
        res.ok = not res.error
    except (httpx.HTTPError, json.JSONDecodeError, ValueError) as e:
        res.e2e = time.perf_counter() - st
        res.error = f"{type(e).__name__}: {e}"
    return res


async def run(args) -> dict:
    prompts = make_prompts(
        args.num_prompts, args.prompt_tokens, args.token_range[0], args.token_range[1], args.seed
    )
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency + 1, max_keepalive_connections=args.concurrency + 1)
    timeout = httpx.Timeout(args.request_timeout, connect=10.0)
    async with httpx.AsyncClient(base_url=args.url.rstrip("/"), headers=headers, limits=limits, timeout=timeout) as client:
        if args.warmup:
            warm = make_prompts(1, args.prompt_tokens, args.token_range[0], args.token_range[1], args.seed + 1)[0]
            w = await one_request(client, args, -1, warm)
            if not w.ok:
                raise SystemExit(f"warm-up request failed: {w.error}")
            print(f"warm-up request ok ({w.e2e * 1000:.0f} ms)", file=sys.stderr)

        sem = asyncio.Semaphore(args.concurrency)

        async def guarded(i: int, p: list[int]) -> Result:
            async with sem:
                return await one_request(client, args, i, p)

        tasks = [asyncio.create_task(guarded(i, p)) for i, p in enumerate(prompts)]
        t0 = time.perf_counter()
        done, pending = await asyncio.wait(tasks, timeout=args.max_duration)
        duration = time.perf_counter() - t0
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    results: list[Result] = []
    for i, t in enumerate(tasks):
        if t in done and not t.cancelled() and t.exception() is None:
            results.append(t.result())
        else:
            results.append(Result(index=i, error="cut at --max-duration" if t in pending else repr(t.exception())))
    return {"duration_s": duration, "results": results}


def report(args, out: dict) -> dict:
    results: list[Result] = out["results"]
    duration = out["duration_s"]
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    ttft = [r.ttft for r in ok]
    e2e = [r.e2e for r in ok]
    tpot = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itl = [g for r in ok for g in r.itl]
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    summary = {
        "successful_requests": len(ok),
        "failed_requests": len(failed),
        "duration_s": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "output_tokens_from_usage": all(r.output_tokens_from_usage for r in ok) if ok else None,
        "request_throughput_rps": len(ok) / duration if duration > 0 else None,
        "output_throughput_tok_s": total_out / duration if duration > 0 else None,
        "total_token_throughput_tok_s": (total_in + total_out) / duration if duration > 0 else None,
        "ttft_s": summarize(ttft),
        "tpot_s": summarize(tpot),
        "itl_s": summarize(itl),
        "e2el_s": summarize(e2e),
    }

    w = 50

    def row(label, value):
        print(f"{label:<{w - 10}}{value:>10}")

    def fmt(x, d=2):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"

    def section(title, key, name):
        print(title.center(w, "-"))
        s = summary[key]
        for stat, lab in (("mean", "Mean"), ("p50", "P50"), ("p90", "P90"), ("p99", "P99")):
            v = s[stat]
            row(f"{lab} {name} (ms):", fmt(v * 1000 if v is not None else None))

    print(" Serving Benchmark Result ".center(w, "="))
    row("Successful requests:", len(ok))
    row("Failed requests:", len(failed))
    row("Maximum request concurrency:", args.concurrency)
    row("Benchmark duration (s):", fmt(duration))
    row("Total input tokens:", total_in)
    row("Total generated tokens:", total_out)
    row("Request throughput (req/s):", fmt(summary["request_throughput_rps"]))
    row("Output token throughput (tok/s):", fmt(summary["output_throughput_tok_s"]))
    row("Total Token throughput (tok/s):", fmt(summary["total_token_throughput_tok_s"]))
    section("Time to First Token", "ttft_s", "TTFT")
    section("Time per Output Token (excl. 1st token)", "tpot_s", "TPOT")
    section("Inter-token Latency", "itl_s", "ITL")
    section("End-to-end Latency", "e2el_s", "E2EL")
    print("=" * w)
    if ok and not summary["output_tokens_from_usage"]:
        print("note: no usage chunk from the server; output tokens = content chunks", file=sys.stderr)
    for r in failed[:5]:
        print(f"failed request {r.index}: {r.error}", file=sys.stderr)

    if args.json_out:
        doc = {
            "args": {k: v for k, v in vars(args).items() if k != "api_key"},
            "summary": summary,
            "requests": [asdict(r) for r in results],
        }
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"wrote {args.json_out}", file=sys.stderr)
    return summary


def token_range(s: str) -> tuple[int, int]:
    lo, _, hi = s.partition(":")
    a, b = int(lo), int(hi)
    if not 0 <= a <= b:
        raise argparse.ArgumentTypeError("want LO:HI with 0 <= LO <= HI")
    return a, b


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL (loopback only)")
    ap.add_argument("--model", default="default", help="model name sent in requests")
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4, help="max requests in flight")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="exact prompt length in token ids")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--ignore-eos", action="store_true", help="send ignore_eos=true (exact output lengths)")
    ap.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--token-range", type=token_range, default=(1000, 20000), help="LO:HI for random ids")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="send one unmeasured request first (as vLLM does)")
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--max-duration", type=float, default=600.0, help="cut the run after this many seconds")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

    if not 1 <= args.num_prompts <= MAX_PROMPTS:
        ap.error(f"--num-prompts must be in 1..{MAX_PROMPTS}")
    if args.concurrency < 1 or args.prompt_tokens < 1 or args.max_tokens < 1:
        ap.error("--concurrency, --prompt-tokens and --max-tokens must be >= 1")
    if not is_loopback_url(args.url):
        ap.error(f"{args.url} is not a loopback address; this load generator only targets this machine")

    out = asyncio.run(run(args))
    summary = report(args, out)
    return 0 if summary["failed_requests"] == 0 and summary["successful_requests"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
