#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` (the benchmark's reference) from the source that ships inside
# the llama-cpp-python sdist on PyPI. For benchmarks only: the source and the binary stay in
# .cache/ (ignored by git) and are never committed. About 15 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.cache/llama.cpp
mkdir -p "$out"
if [ -x "$out/build/bin/llama-server" ]; then echo "$out/build/bin/llama-server"; exit 0; fi
python3 -m pip download --no-deps --no-binary llama-cpp-python -d "$out" "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION:-0.3.36}" >&2
tar -xzf "$out"/llama_cpp_python-*.tar.gz -C "$out"
src=$(ls -d "$out"/llama_cpp_python-*/vendor/llama.cpp)
# ggml's AMX path crashes at start-up on this project's CPUs, hence -mno-amx-*.
flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_NATIVE=ON \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >&2
cmake --build "$out/build" --target llama-server -j "$(nproc)" >&2
echo "$out/build/bin/llama-server"
