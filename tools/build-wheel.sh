#!/usr/bin/env bash
# Build the lora-gguf wheel (both binaries + python/lora_gguf) for manylinux_2_17: glibc ≥ 2.17, i.e. every x86_64
# Linux pip installs wheels on (CentOS 7, Debian 8+, Ubuntu 14.04+). zig (the `ziglang` PyPI package) compiles
# llama.cpp and links against glibc 2.17's symbols, with its own libc++ linked statically, so the wheel needs no
# libstdc++ of a given age; maturin refuses to tag it when a symbol is newer than the policy allows.
# Uses its own target dir (the llama.cpp build differs from the gcc one) and a venv with pinned maturin and zig.
#
#   tools/build-wheel.sh [MATURIN_ARGS…]      # → target-wheel/wheels/lora_gguf-VERSION-py3-none-manylinux_2_17_x86_64.whl
#   e.g. tools/build-wheel.sh --features vulkan
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
venv="$cache/wheel-venv"
export CARGO_TARGET_DIR="${LORA_GGUF_WHEEL_TARGET:-$cache/target-wheel}"

tools/build-deps.sh   # cmake and libclang (bindgen) are still needed; zig replaces the C/C++ compiler
# zig makes this a cross build for CMake, where ggml turns every x86 extension off (a scalar build, many times
# slower). Ask for the same portable baseline as the gcc build: AVX2/FMA/F16C, no AVX-512, no native tuning.
# (llama-cpp-sys-2 forwards GGML_* variables to CMake.)
export GGML_SSE42=ON GGML_AVX=ON GGML_AVX2=ON GGML_BMI2=ON GGML_FMA=ON GGML_F16C=ON
if [ ! -x "$venv/bin/maturin" ] || [ ! -f "$venv/.pins-1" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check maturin==1.16.0 ziglang==0.17.0 auditwheel==6.8.2 >&2
  touch "$venv/.pins-1"
fi
# maturin finds zig through the ziglang package of the interpreter it runs under.
PATH="$venv/bin:$PATH" maturin build --release --zig --compatibility manylinux_2_17 \
  --out "$CARGO_TARGET_DIR/wheels" "$@" >&2
ls -t "$CARGO_TARGET_DIR"/wheels/lora_gguf-*.whl | head -1
