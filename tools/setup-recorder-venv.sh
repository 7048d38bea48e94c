#!/usr/bin/env bash
# Set up (once) the Python the training-parity recorder's tests use — torch, transformers, peft at the versions
# pinned in python/requirements-test.txt — in a venv cached OUTSIDE the clone, and print its python. Idempotent:
# a venv whose pins are installed is reused, so CI pays the download (several GB: torch from PyPI brings its CUDA
# wheels) once per cache.
#
#   tools/setup-recorder-venv.sh          # → ${LORA_GGUF_CACHE:-~/.cache/lora-gguf}/recorder-venv/bin/python
#   tools/setup-recorder-venv.sh --check  # the same python if it is set up already, else exit 1 (installs nothing)
#
# LORA_GGUF_RECORDER_PYTHON=/path/to/python skips all of this and uses that interpreter (it must have the pins).
set -euo pipefail
if [ -n "${LORA_GGUF_RECORDER_PYTHON:-}" ]; then
  echo "$LORA_GGUF_RECORDER_PYTHON"
  exit 0
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LORA_GGUF_CACHE:-$HOME/.cache/lora-gguf}"
venv="$cache/recorder-venv"
req="$root/python/requirements-test.txt"
# A venv that already holds every pin (the fixtures venv of fixtures/requirements.txt does) is used as it is.
has_pins() {
  "$1" - "$req" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, want = line.split("==")
        assert version(name).split("+")[0] == want, name
PY
}
for candidate in "$venv/bin/python" "$cache/fx-venv/bin/python"; do
  if [ -x "$candidate" ] && has_pins "$candidate"; then
    echo "$candidate"
    exit 0
  fi
done
if [ "${1:-}" = "--check" ]; then
  echo "no recorder venv with the pins of python/requirements-test.txt in $cache (tools/setup-recorder-venv.sh makes it)" >&2
  exit 1
fi
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv" >&2
"$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
echo "$venv/bin/python"
