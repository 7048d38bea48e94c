#!/usr/bin/env bash
# Build lora-convert and lora-validate with a llama.cpp backend whose toolchain installs from the registries (PyPI,
# Debian), in its own target dir in the cache, then run that lora-validate on the test model and the fixtures' peft
# adapter (target and smoke prompts, scales 0 and 1) next to the CPU build, and compare.
#
#   tools/backend-check.sh cuda   # 24 min cold on 2 cores (ggml-cuda for one GPU architecture), ~30 s warm
#   tools/backend-check.sh mkl    # 6 min cold, ~40 s warm
#   tools/backend-check.sh rocm   # 16 min cold, in a Debian sid chroot (root, debootstrap, ~2 GB), ~30 s warm
#
# cuda: NVIDIA's CUDA 13 from PyPI (tools/cuda-toolkit.sh), compiled for sm_75 only (the oldest CUDA 13 targets;
#   each architecture compiles ggml-cuda's 144 CUDA sources again). The wheels have cuBLAS as shared libraries only,
#   so llama.cpp is built as shared libraries (LLAMA_BUILD_SHARED_LIBS=1), and without the driver API
#   (GGML_CUDA_NO_VMM=ON). Where there is no CUDA driver the build must say so in llama.cpp's log, find no GPU
#   device, run on the CPU and write the CPU build's JSON report exactly, timings aside.
# mkl: Intel's oneMKL from PyPI (tools/mkl-root.sh) as ggml's BLAS. It runs here, with other rounding than ggml's
#   own kernels (MKL's sgemm takes the prompt batches): the same verdict and recommended scale as the CPU build, the
#   scale-0 self-check exactly 0, every target answering the secret word at scale 1 on both.
# rocm: AMD's ROCm 6.4 (HIP, hipBLAS, rocBLAS, clang 21's HIP) from Debian sid — the only Debian with ROCm ≥ 6.1,
#   which ggml-hip requires — so the build and the run happen in a sid chroot (tools/debian-run.sh) with the Rust
#   toolchain mounted in; compiled for gfx1030 only. Like cuda: no AMD GPU here, so it must fall back to the CPU
#   with the CPU build's report exactly. Sid moves: the chroot is made once and kept in the cache, and a new one may
#   bring another ROCm.
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-}"
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
export LLAMA_LIB_PROFILE=Release
cpu_target="${CARGO_TARGET_DIR:-target}"
target="$cache/target-$backend"
wrap=()   # how the backend's build and binary run: here, or in a chroot
# Per backend: how to build it, the line in llama.cpp's log (LORA_GGUF_LLAMA_LOG=1) that shows the backend was
# there, and how its report must compare with the CPU build's (exact: the same but for timings; verdict: the same
# verdict, recommended scale, self-check and answers).
case "$backend" in
  cuda)
    evidence='ggml_cuda_init: failed to initialize CUDA' compare=exact
    toolkit="$(tools/cuda-toolkit.sh)"
    build_env=(CUDA_PATH="$toolkit" CUDACXX="$toolkit/bin/nvcc" CMAKE_CUDA_ARCHITECTURES=75 GGML_CUDA_NO_VMM=ON
      LLAMA_BUILD_SHARED_LIBS=1)
    runtime_libs="$toolkit/lib"
    ;;
  mkl)
    evidence='backend_ptrs.size() = 2' compare=verdict   # a BLAS backend in the context beside the CPU
    mklroot="$(tools/mkl-root.sh)"
    build_env=(MKLROOT="$mklroot" PKG_CONFIG_PATH="$mklroot/lib/pkgconfig")
    runtime_libs="$mklroot/lib"
    ;;
  rocm)
    evidence='ggml_cuda_init: failed to initialize ROCm' compare=exact
    rocm_packages=ca-certificates,cmake,make,g++,libclang-dev,pkg-config,python3
    rocm_packages+=,hipcc,libamdhip64-dev,libhipblas-dev,librocblas-dev,rocm-device-libs-21
    wrap=(env DEBIAN_RUN_MOUNTS="$HOME/.cargo $HOME/.rustup" tools/debian-run.sh sid "$rocm_packages"
      env PATH="$HOME/.cargo/bin:$PATH" HOME="$HOME")
    # clang looks for the device libraries under ROCM_PATH; Debian keeps them with clang.
    build_env=(ROCM_PATH=/usr CMAKE_HIP_COMPILER=/usr/lib/llvm-21/bin/clang++ CMAKE_HIP_ARCHITECTURES=gfx1030
      CMAKE_HIP_FLAGS=--rocm-device-lib-path=/usr/lib/llvm-21/lib/clang/21/amdgcn/bitcode)
    runtime_libs=""
    ;;
  *) echo "usage: tools/backend-check.sh cuda|mkl|rocm" >&2; exit 2 ;;
esac

"${wrap[@]}" env "${build_env[@]}" CARGO_TARGET_DIR="$target" cargo build --release --features "$backend" --bins
CARGO_TARGET_DIR="$cpu_target" cargo build --features validate --bins
backend_bin="$target/release"
cpu_bin="$cpu_target/debug"
[ -z "$runtime_libs" ] || export LD_LIBRARY_PATH="$runtime_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ "$backend" = cuda ]; then
  # The shared llama.cpp libraries stay in llama-cpp-sys-2's build directory (it puts only dangling links to them
  # next to the binaries; `cargo run` and `cargo test` find them there by themselves).
  llama_libs="$(dirname "$(ls -t "$target"/release/build/llama-cpp-sys-2-*/out/lib/libllama.so | head -n 1)")"
  export LD_LIBRARY_PATH="$llama_libs:$LD_LIBRARY_PATH"
  grep -q "libllama\.so\.0 => $llama_libs" <(ldd "$backend_bin/lora-validate") ||
    { echo "the cuda lora-validate does not load llama.cpp's shared libraries from $llama_libs" >&2; exit 1; }
  grep -q 'libcublas\.so\.13 => /' <(ldd "$llama_libs/libggml-cuda.so") ||
    { echo "libggml-cuda.so does not resolve libcublas.so.13 from $runtime_libs" >&2; exit 1; }
elif [ "$backend" = rocm ]; then
  grep -q 'libhipblas\.so\.[0-9]* => /' <("${wrap[@]}" ldd "$backend_bin/lora-validate") ||
    { echo "the rocm lora-validate does not load libhipblas in the sid chroot" >&2; exit 1; }
else
  grep -q 'libmkl_rt\.so\.[0-9]* => /' <(ldd "$backend_bin/lora-validate") ||
    { echo "the mkl lora-validate does not load libmkl_rt from $runtime_libs" >&2; exit 1; }
fi

model="$(tools/fetch-test-model.sh)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$cpu_bin/lora-convert" fixtures/gemma-lora/adapter --base "$model" -o "$work/gemma-lora.gguf" >/dev/null
run() {
  local bin="$1" name="$2" code=0
  local -a where=()
  [ "$name" = cpu ] || where=("${wrap[@]}")
  "${where[@]}" env LORA_GGUF_LLAMA_LOG=1 "$bin/lora-validate" --base "$model" --adapter "$work/gemma-lora.gguf" \
    --prompts fixtures/gemma-lora/target.jsonl --prompts fixtures/gemma-lora/control-smoke.jsonl \
    --scales 0,1 --max-tokens 16 --threads 2 -o "$work/$name.json" --format json >"$work/$name.out" 2>&1 || code=$?
  echo "$name: exit $code" >&2
  echo "$code"
}
[ "$(run "$cpu_bin" cpu)" = "$(run "$backend_bin" "$backend")" ] || { cat "$work/$backend.out" >&2; exit 1; }
grep -m1 -F "$evidence" "$work/$backend.out" >&2 ||
  { echo "llama.cpp's log of the $backend build has no '$evidence': was the backend built in?" >&2; exit 1; }
python3 - "$backend" "$compare" "$work/cpu.json" "$work/$backend.json" <<'PY'
import json, sys
backend, compare, cpu, other = *sys.argv[1:3], *(json.load(open(p)) for p in sys.argv[3:])
ran_on = other["engine"]["settings"]["backend"]
assert ran_on.startswith("CPU ("), f"the {backend} build ran on {ran_on!r}, not the CPU"
if compare == "exact":
    for report in (cpu, other):
        del report["timings"]
    assert cpu == other, f"the {backend} build's report differs from the CPU build's beyond the timings"
    print(f"{backend} build: backend {ran_on!r}; passed: {other['passed']}; the CPU build's report but for timings")
    sys.exit()
def summary(report):
    at1 = [m for m in report["measurements"] if m["scale"] == 1.0]
    return {
        "passed": report["passed"],
        "recommended scale": report["recommendation"].get("scale"),
        "scale-0 self-check": report["engine"]["scale_zero_max_abs_logit_delta"],
        "answers with the secret word at scale 1": sum("BANANAPHONE" in m["adapted_text"].upper() for m in at1),
    }
assert summary(cpu) == summary(other), f"cpu {summary(cpu)} != {backend} {summary(other)}"
def control_kl_at_1(report):
    return next(s["control_kl_mean"] for s in report["per_scale"] if s["scale"] == 1.0)
print(f"{backend} build: {summary(other)}, as the CPU build; "
      f"control KL mean at scale 1 {control_kl_at_1(other):.4f} (CPU {control_kl_at_1(cpu):.4f})")
PY
