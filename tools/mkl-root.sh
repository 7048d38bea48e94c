#!/usr/bin/env bash
# An MKLROOT for the `mkl` feature made from Intel's oneMKL wheels on PyPI (mkl-devel, mkl-include): installed once
# into a venv in the cache, with a directory of links where CMake's FindBLAS (vendor Intel10_64lp) and
# llama-cpp-sys-2 look — include/, and lib/ with the unversioned .so names the wheels leave out (libmkl_rt.so.3 →
# libmkl_rt.so). Prints the directory; docs/backends.md gives the build and run commands:
#
#   M="$(tools/mkl-root.sh)"
#   MKLROOT="$M" PKG_CONFIG_PATH="$M/lib/pkgconfig" cargo build --release --features mkl
#   LD_LIBRARY_PATH="$M/lib" target/release/lora-validate …
#
# Needs python3 with venv and pip (the wheels are ~1 GB unpacked).
set -euo pipefail
# shellcheck source=tools/wheel-sdk.sh
. "$(dirname "$0")/wheel-sdk.sh"
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
version=2026.2.1
root="$cache/mkl-$version"
if [ -e "$root/lib/pkgconfig/mkl-sdl.pc" ] && [ -e "$root/include/mkl.h" ]; then
  echo "$root"
  exit 0
fi
venv="$cache/mkl-wheels-$version"
wheel_venv "$venv" "mkl-devel==$version" "mkl-include==$version"
[ -e "$venv/include/mkl.h" ] || { echo "no mkl.h in $venv/include (pip install mkl-devel mkl-include)" >&2; exit 1; }
tmp="$root.tmp"
rm -rf "$tmp"
link_libs "$tmp/lib" "$venv"/lib/lib*.so*
ln -s "$venv/include" "$tmp/include"
# ggml-blas finds MKL's headers through pkg-config's mkl-sdl (PKG_CONFIG_PATH="$M/lib/pkgconfig").
ln -s "$venv/lib/pkgconfig" "$tmp/lib/pkgconfig"
rm -rf "$root"
mv "$tmp" "$root"
echo "$root"
