#!/usr/bin/env bash
# A CUDA toolkit directory made from NVIDIA's PyPI wheels (no NVIDIA apt repository, no driver, no GPU needed), for
# compile-checking the `cuda` feature: the CUDA 13 compiler (nvcc, cicc, ptxas, nvlink, fatbinary), the runtime
# and cuBLAS, installed once into a venv in the cache, with a directory of links laid out the way CMake's
# FindCUDAToolkit and nvcc expect a toolkit (bin, include, nvvm, lib with the unversioned .so names; nvcc's
# profile looks in lib, not lib64). Prints the directory; docs/backends.md gives the build command:
#
#   T="$(tools/cuda-toolkit.sh)"
#   CUDA_PATH="$T" CUDACXX="$T/bin/nvcc" CMAKE_CUDA_ARCHITECTURES=75 GGML_CUDA_NO_VMM=ON LLAMA_BUILD_SHARED_LIBS=1 \
#     cargo build --release --features cuda
#
# The wheels ship cuBLAS as shared libraries only (libcublas.so.13), and no libcuda.so (that comes with the
# driver), hence the shared llama.cpp build (LLAMA_BUILD_SHARED_LIBS=1: llama-cpp-sys-2 then links cuBLAS through
# ggml-cuda's CMake instead of as cublas_static) and GGML_CUDA_NO_VMM (no link to the driver API).
#
# Needs python3 with venv and pip (the wheels are ~1 GB unpacked).
set -euo pipefail
# shellcheck source=tools/wheel-sdk.sh
. "$(dirname "$0")/wheel-sdk.sh"
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
# The versions this was checked with; CUDA 13 is the first major release whose compiler is on PyPI (the CUDA 12
# nvcc wheel holds ptxas only).
pins=(nvidia-cuda-nvcc==13.5.37 nvidia-cuda-runtime==13.5.37 nvidia-cublas==13.10.0.20 nvidia-cuda-cccl==13.3.5.0.6)
toolkit="$cache/cuda-toolkit-13.5.37"
if [ -x "$toolkit/bin/nvcc" ] && [ -e "$toolkit/lib/libcublas.so" ]; then
  echo "$toolkit"
  exit 0
fi
venv="$cache/cuda-wheels-13.5.37"
wheel_venv "$venv" "${pins[@]}"
cu13="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
[ -x "$cu13/bin/nvcc" ] || { echo "no nvcc in $cu13 (pip install ${pins[*]} did not give a CUDA 13 toolkit)" >&2; exit 1; }
tmp="$toolkit.tmp"
rm -rf "$tmp"
link_libs "$tmp/lib" "$cu13"/lib/*
for dir in bin include nvvm; do
  ln -s "$cu13/$dir" "$tmp/$dir"
done
ln -s lib "$tmp/lib64"
rm -rf "$toolkit"
mv "$tmp" "$toolkit"
echo "$toolkit"
