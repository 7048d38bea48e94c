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
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
version=2026.2.1
root="$cache/mkl-$version"
if [ -e "$root/lib/pkgconfig/mkl-sdl.pc" ] && [ -e "$root/include/mkl.h" ]; then
  echo "$root"
  exit 0
fi
venv="$cache/mkl-wheels-$version"
if [ ! -f "$venv/.installed" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "mkl-devel==$version" "mkl-include==$version" >&2
  touch "$venv/.installed"
fi
[ -e "$venv/include/mkl.h" ] || { echo "no mkl.h in $venv/include (pip install mkl-devel mkl-include)" >&2; exit 1; }
tmp="$root.tmp"
rm -rf "$tmp"
mkdir -p "$tmp/lib"
ln -s "$venv/include" "$tmp/include"
# ggml-blas finds MKL's headers through pkg-config's mkl-sdl (PKG_CONFIG_PATH="$M/lib/pkgconfig").
ln -s "$venv/lib/pkgconfig" "$tmp/lib/pkgconfig"
for lib in "$venv"/lib/lib*.so*; do
  name="$(basename "$lib")"
  ln -s "$lib" "$tmp/lib/$name"
  case "$name" in *.so.*) ln -sf "$lib" "$tmp/lib/${name%%.so.*}.so" ;; esac
done
rm -rf "$root"
mv "$tmp" "$root"
echo "$root"
