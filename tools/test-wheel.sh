#!/usr/bin/env bash
# The Python package as a user gets it: build the manylinux wheel (tools/build-wheel.sh, or take WHEEL), check its
# platform tag with auditwheel, install it into a fresh venv with no index, and run python/tests/test_package.py
# there (both binaries and the lora_gguf module on the fixtures and the Gemma 3 270M test model).
#
#   tools/test-wheel.sh [WHEEL]
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
wheel="${1:-$(tools/build-wheel.sh)}"
model="$(tools/fetch-test-model.sh)"

policy="$("$cache/wheel-venv/bin/auditwheel" show "$wheel" | tr '\n' ' ')"
case "$policy" in
  *'consistent with the following platform tag: "manylinux_2_17_x86_64"'*) ;;
  *) echo "tools/test-wheel.sh: $wheel is not manylinux_2_17: $policy" >&2; exit 1 ;;
esac

venv="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --no-index "$wheel"
# From outside the checkout's python/ directory, so only the installed module can be imported.
cd /
LORA_GGUF_TEST_MODEL="$model" "$venv/bin/python" "$OLDPWD/python/tests/test_package.py"
