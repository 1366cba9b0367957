#!/usr/bin/env bash
# The llama-cpp-python 0.3.36 sdist, the pinned target of libllama (llama/):
# its pure-Python package and tests, and the llama.cpp it vendors (llama.h,
# the example programs, the vocab-only GGUF files with tokenizer vectors).
# Unpacked into vendor/llama-cpp-python-0.3.36 (git-ignored; nothing of it is
# committed). Idempotent; the tarball's sha256 is checked.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=vendor/llama-cpp-python-0.3.36
SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
if [ -f "$DIR/.complete" ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$tmp"
echo "$SHA  $tmp/llama_cpp_python-0.3.36.tar.gz" | sha256sum -c --quiet
mkdir -p vendor
rm -rf "$DIR"
tar -xzf "$tmp/llama_cpp_python-0.3.36.tar.gz" -C vendor
mv vendor/llama_cpp_python-0.3.36 "$DIR"
touch "$DIR/.complete"
echo "unpacked $DIR"
