#!/usr/bin/env bash
# The Python package as a user gets it: build the manylinux wheel (tools/build-wheel.sh, or take WHEEL), check its
# platform tag with auditwheel, install it into a fresh venv with no index, and run python/tests/test_package.py
# there (both binaries and the lora_gguf module on the fixtures and the Gemma 3 270M test model). With --debian SUITE
# the venv is made and the tests run by that Debian release's python in a chroot (tools/debian-run.sh; root): e.g.
# bullseye, whose glibc 2.31 and Python 3.9 are older than this machine's.
#
#   tools/test-wheel.sh [--debian SUITE] [WHEEL]
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
debian=""
if [ "${1:-}" = --debian ]; then
  debian="${2:?--debian needs a Debian suite, e.g. bullseye}"
  shift 2
fi
# Where the venv is made and used: here, or in the Debian chroot.
run() {
  if [ -n "$debian" ]; then
    "$repo/tools/debian-run.sh" "$debian" python3,python3-venv "$@"
  else
    "$@"
  fi
}
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
wheel="${1:-$(tools/build-wheel.sh)}"
model="$(tools/fetch-test-model.sh)"

policy="$("$cache/wheel-venv/bin/auditwheel" show "$wheel" | tr '\n' ' ')"
case "$policy" in
  *'consistent with the following platform tag: "manylinux_2_17_x86_64"'*) ;;
  *) echo "tools/test-wheel.sh: $wheel is not manylinux_2_17: $policy" >&2; exit 1 ;;
esac

work="$(mktemp -d /tmp/lora-gguf-wheel-test.XXXXXX)"   # under /tmp: the Debian chroot sees it too
trap 'rm -rf "$work"' EXIT
venv="$work/venv"
run python3 -m venv "$venv"
cp "$wheel" "$work/"   # where the chroot sees it, wherever WHEEL was
run "$venv/bin/pip" install -q --disable-pip-version-check --no-index "$work/$(basename "$wheel")"
# From outside the checkout's python/ directory, so only the installed module can be imported.
cd /
LORA_GGUF_TEST_MODEL="$model" run "$venv/bin/python" "$repo/python/tests/test_package.py"
