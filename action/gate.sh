#!/usr/bin/env bash
# The steps of the GitHub Action (action.yml), runnable anywhere — tests run it locally.
#
#   action/gate.sh keys   print the cache keys of the tool and of a base given as a URL (name=value lines, for
#                         $GITHUB_OUTPUT)
#   action/gate.sh run    get lora-gguf, then run `python -m lora_gguf.ci` (inputs: LORA_BASE, LORA_ADAPTER,
#                         LORA_PROMPTS, LORA_SCALES, LORA_LIMITS, LORA_SHARD, LORA_ARGS, LORA_OUT; see
#                         python/lora_gguf/ci.py) and exit with its status: 0 pass, 1 gate failed, 2 bad input,
#                         3 llama.cpp failed
#
# lora-gguf comes from, in order: LORA_GGUF_BIN_DIR (a directory holding lora-convert and lora-validate, with the
# Python module from this checkout), or a venv in the cache made once per install spec with
# `pip install ${LORA_INSTALL:-lora-gguf==VERSION}` (VERSION: this checkout's Cargo.toml, so the action's tag picks
# the tool's version; LORA_INSTALL may be a wheel, a directory to build from, or any pip requirement).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/Cargo.toml" | head -1)"
install="${LORA_INSTALL:-lora-gguf==$version}"
tool_key="$(printf '%s' "$install" | sha256sum | cut -c1-16)"
venv="$cache/tool-$tool_key"

case "${1:-}" in
  keys)
    echo "tool=lora-gguf-tool-$(uname -s)-$(uname -m)-$tool_key"
    echo "tool-path=$venv"
    case "${LORA_BASE:-}" in
      http://* | https://*) echo "base=lora-gguf-base-$(printf '%s' "$LORA_BASE" | sha256sum | cut -c1-16)" ;;
      *) echo "base=" ;;
    esac
    ;;
  run)
    if [ -n "${LORA_GGUF_BIN_DIR:-}" ]; then
      export PYTHONPATH="$here/python${PYTHONPATH:+:$PYTHONPATH}"
      exec python3 -m lora_gguf.ci
    fi
    if [ ! -x "$venv/bin/lora-validate" ]; then
      rm -rf "$venv"
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check "$install"
    fi
    exec "$venv/bin/python" -m lora_gguf.ci
    ;;
  *)
    echo "usage: action/gate.sh keys|run" >&2
    exit 2
    ;;
esac
