#!/usr/bin/env bash
# The float Hugging Face copy of the Gemma 3 270M Q4_K_M test model (dequantized by transformers from the very GGUF
# the tests run; tools/make-float-test-model.py), made once and cached outside the clone (~1.1 GB, never committed).
# Prints its directory. Needs the recorder venv (tools/setup-recorder-venv.sh).
#
#   tools/fetch-float-test-model.sh   # → ${LORA_GGUF_CACHE:-~/.cache/lora-gguf}/models/gemma-3-270m-f32-hf
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
out="$cache/models/gemma-3-270m-f32-hf"
if [ -f "$out/lora_gguf_source.json" ]; then
  echo "$out"
  exit 0
fi
gguf="$("$here/fetch-test-model.sh" | tail -n1)"
python="$("$here/setup-recorder-venv.sh" | tail -n1)"
"$python" "$here/make-float-test-model.py" "$gguf" "$out" >&2
echo "$out"
