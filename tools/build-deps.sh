#!/usr/bin/env bash
# Install what the llama.cpp build (feature `validate`) and the end-to-end tests need, when it is missing:
#   cmake + make + a C++ compiler   llama.cpp itself (built by llama-cpp-sys-2's build script)
#   libclang                        bindgen, which generates llama.cpp's Rust bindings
#   python3 with venv               tools/fetch-test-model.sh (the Gemma 3 270M test model comes from PyPI)
#   chromium                        tests/report_chromium.rs renders the HTML report headless (~81 MB download)
# On Debian/Ubuntu it runs apt-get (through sudo when not root); elsewhere it names what to install and exits 2.
# Idempotent: with everything present it installs nothing and prints nothing.
#
#   tools/build-deps.sh            # install what is missing
#   tools/build-deps.sh --check    # only report; exit 1 when something is missing
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

# bindgen (clang-sys) finds libclang through LIBCLANG_PATH, llvm-config or the usual library directories.
have_libclang() {
  [ -n "${LIBCLANG_PATH:-}" ] && return 0
  have llvm-config && [ -n "$(ls "$(llvm-config --libdir)"/libclang*.so* 2>/dev/null)" ] && return 0
  compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null || compgen -G '/usr/lib*/libclang*.so*' >/dev/null ||
    compgen -G '/usr/lib/*-linux-gnu/libclang*.so*' >/dev/null
}

missing=()       # what is missing, in words
packages=()      # the Debian/Ubuntu packages that provide it
have cmake || { missing+=(cmake); packages+=(cmake); }
have make || { missing+=(make); packages+=(make); }
{ have c++ || have g++; } || { missing+=("a C++ compiler"); packages+=(g++); }
have_libclang || { missing+=(libclang); packages+=(libclang-dev); }
if ! have python3; then
  missing+=(python3); packages+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=("python3 venv"); packages+=(python3-venv)
fi

have chromium || { missing+=(chromium); packages+=(chromium); }

[ ${#missing[@]} -eq 0 ] && exit 0
if [ "${1:-}" = "--check" ]; then
  echo "missing: ${missing[*]}" >&2
  exit 1
fi
if ! have apt-get; then
  echo "tools/build-deps.sh: missing ${missing[*]}; install them with your package manager" \
       "(Debian/Ubuntu names: ${packages[*]}), or set LIBCLANG_PATH to the directory of libclang.so" >&2
  exit 2
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  have sudo || { echo "tools/build-deps.sh: run as root, or install: apt-get install ${packages[*]}" >&2; exit 2; }
  sudo=(sudo)
fi
echo "tools/build-deps.sh: installing ${packages[*]} (for ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
