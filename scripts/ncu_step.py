#!/usr/bin/env python3
"""Per-kernel device time of one decode step, from an ncu CSV (gpu__time_duration.sum).

usage: ncu_step.py NCU.csv
The bench run under ncu ends with decode steps; each step starts with the
embedding lookup (get_rows_*). Takes the last complete step and prints its
kernels in order with their times, then the sum per kernel name: the time
the kernels themselves take, without launch gaps (ncu runs them one by one).
"""
import csv
import sys
from collections import OrderedDict

rows = []
with open(sys.argv[1], newline="") as f:
    lines = [l for l in f if l.startswith('"')]  # ncu prints its own log lines before the CSV
for r in csv.DictReader(lines):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    to_us = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[r.get("Metric Unit", "ns")]
    rows.append((r["Kernel Name"].split("(")[0], float(r["Metric Value"].replace(",", "")) * to_us))
starts = [i for i, (k, _) in enumerate(rows) if k.startswith("get_rows")]
if len(starts) < 2:
    sys.exit(f"need at least two steps, found {len(starts)} get_rows launches in {len(rows)} kernels")
step = rows[starts[-2]:starts[-1]]
print(f"one decode step: {len(step)} kernels, {sum(t for _, t in step):.1f} us of kernel time")
per = OrderedDict()
for k, t in step:
    c, s = per.get(k, (0, 0.0))
    per[k] = (c + 1, s + t)
print(f"{'kernel':28} {'calls':>6} {'total us':>10} {'us/call':>9} {'share':>6}")
tot = sum(t for _, t in step)
for k, (c, s) in sorted(per.items(), key=lambda kv: -kv[1][1]):
    print(f"{k:28} {c:6d} {s:10.1f} {s / c:9.2f} {100 * s / tot:5.1f}%")
print("\nfirst layer, in order:")
for k, t in step[: 1 + 14]:
    print(f"  {k:28} {t:8.2f} us")
