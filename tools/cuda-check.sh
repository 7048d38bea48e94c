#!/usr/bin/env bash
# Compile-check the `cuda` feature on a machine without an NVIDIA GPU or driver, then run what was built.
#
#   tools/cuda-check.sh        # ~45 min cold on 2 cores, ~1 min warm (its own target dir in the cache)
#
# 1. Builds lora-convert and lora-validate with `--features cuda` against the CUDA 13 toolkit from PyPI
#    (tools/cuda-toolkit.sh), for one GPU architecture (sm_75, the oldest CUDA 13 targets; ggml-cuda is 144 CUDA
#    sources, each compiled once per architecture). The wheels have cuBLAS as shared libraries only, so llama.cpp is
#    built as shared libraries (LLAMA_BUILD_SHARED_LIBS=1) and without the driver API (GGML_CUDA_NO_VMM=ON).
# 2. Runs that lora-validate on the test model and the fixtures' peft adapter, where there is no CUDA driver: it must
#    find no GPU device, say `backend: CPU (…)`, and write the JSON report the CPU build writes for the same inputs,
#    timings aside — the CUDA build's fallback is the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
export LLAMA_LIB_PROFILE=Release
cpu_target="${CARGO_TARGET_DIR:-target}"
cuda_target="$cache/target-cuda"
toolkit="$(tools/cuda-toolkit.sh)"

CARGO_TARGET_DIR="$cuda_target" CUDA_PATH="$toolkit" CUDACXX="$toolkit/bin/nvcc" CMAKE_CUDA_ARCHITECTURES=75 \
  GGML_CUDA_NO_VMM=ON LLAMA_BUILD_SHARED_LIBS=1 cargo build --release --features cuda --bins
CARGO_TARGET_DIR="$cpu_target" cargo build --features validate --bins
cuda_bin="$cuda_target/release"
cpu_bin="$cpu_target/debug"
# The shared llama.cpp libraries stay in llama-cpp-sys-2's build directory (it puts only dangling links to them next
# to the binaries; `cargo run` and `cargo test` find them there by themselves); libcudart and libcublas come from
# the toolkit.
llama_libs="$(dirname "$(ls -t "$cuda_target"/release/build/llama-cpp-sys-2-*/out/lib/libllama.so | head -n 1)")"
export LD_LIBRARY_PATH="$llama_libs:$toolkit/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
grep -q "libllama\.so\.0 => $llama_libs" <(ldd "$cuda_bin/lora-validate") ||
  { echo "the cuda lora-validate does not load llama.cpp's shared libraries from $llama_libs" >&2; exit 1; }
grep -q 'libcublas\.so\.13 => /' <(ldd "$llama_libs/libggml-cuda.so") ||
  { echo "libggml-cuda.so does not resolve libcublas.so.13 from $toolkit/lib" >&2; exit 1; }

model="$(tools/fetch-test-model.sh)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$cpu_bin/lora-convert" fixtures/gemma-lora/adapter --base "$model" -o "$work/gemma-lora.gguf" >/dev/null
run() {
  local bin="$1" name="$2" code=0
  LORA_GGUF_LLAMA_LOG=1 "$bin/lora-validate" --base "$model" --adapter "$work/gemma-lora.gguf" \
    --prompts fixtures/gemma-lora/target.jsonl --prompts fixtures/gemma-lora/control-smoke.jsonl \
    --scales 0,1 --max-tokens 16 --threads 2 -o "$work/$name.json" --format json >"$work/$name.out" 2>&1 || code=$?
  echo "$name: exit $code" >&2
  echo "$code"
}
[ "$(run "$cpu_bin" cpu)" = "$(run "$cuda_bin" cuda)" ] || { cat "$work/cuda.out" >&2; exit 1; }
# llama.cpp's log (LORA_GGUF_LLAMA_LOG=1) shows that the CUDA backend was there and found no device.
grep -m1 'ggml_cuda_init: failed to initialize CUDA' "$work/cuda.out" >&2 ||
  { echo "the cuda build's llama.cpp log has no ggml_cuda_init line: was the CUDA backend built in?" >&2; exit 1; }
python3 - "$work/cpu.json" "$work/cuda.json" <<'PY'
import json, sys
cpu, cuda = (json.load(open(p)) for p in sys.argv[1:])
backend = cuda["engine"]["settings"]["backend"]
assert backend.startswith("CPU ("), f"the CUDA build without a driver ran on {backend!r}, not the CPU"
for report in (cpu, cuda):
    del report["timings"]
assert cpu == cuda, "the CUDA build's report differs from the CPU build's beyond the timings"
print(f"cuda build: backend {backend!r}; passed: {cuda['passed']}; report equal to the CPU build's but for timings")
PY
