#!/usr/bin/env bash
# Everything the two binaries say about the shipped fixtures, in one directory, so that a refactor can prove
# "behaviour unchanged" with `diff -r BEFORE AFTER`: every conversion (each outtype, with --base, --base-config and
# the trainer options), its exit status, stdout, stderr and output bytes (sha256), the manifest, `inspect --json` of
# every adapter directory and of every written GGUF adapter; with --validate also lora-validate's JSON report on
# the real Gemma 3 270M (timings removed).
#
#   tools/output-snapshot.sh BIN_DIR OUT_DIR [--validate]
#
# BIN_DIR holds lora-convert (and lora-validate); temporary paths are replaced by placeholders so two runs compare.
set -euo pipefail
bin="$(cd "$1" && pwd)"
out="$2"
validate="${3:-}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rm -rf "$out"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Run a command, keeping its status, stdout and stderr (paths normalised) under $out/$1.
record() {
  local name="$1"
  shift
  local status=0
  "$@" >"$work/stdout" 2>"$work/stderr" || status=$?
  {
    echo "status $status"
    echo "--- stdout"
    sed -e "s#$work#WORK#g" -e "s#$root#ROOT#g" "$work/stdout"
    echo "--- stderr"
    sed -e "s#$work#WORK#g" -e "s#$root#ROOT#g" "$work/stderr"
  } >"$out/$name.txt"
}

# Every adapter directory: the case directories and the ones nested in them (LLaMA-Factory's PiSSA dirs).
mapfile -t dirs < <(find fixtures/cases -name adapter_config.json -printf '%h\n' | sort)
for dir in "${dirs[@]}"; do
  case_dir="fixtures/cases/$(echo "$dir" | cut -d/ -f3)"
  base="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["base"])' "$case_dir/case.json")"
  base_gguf="fixtures/bases/$base/base.gguf"
  tag="$(echo "${dir#fixtures/cases/}" | tr / _)"
  extra=()
  [ "$tag" = torchtune-qwen2 ] && extra=(--torchtune-qwen2 undo)
  for outtype in auto f32 f16 bf16 q8_0; do
    gguf="$work/$tag.$outtype.gguf"
    record "convert.$tag.$outtype" "$bin/lora-convert" "$dir" -o "$gguf" --base "$base_gguf" \
      --outtype "$outtype" --verify --manifest "$work/manifest.json" "${extra[@]}"
    if [ -f "$gguf" ]; then
      sha256sum "$gguf" | cut -d' ' -f1 >"$out/convert.$tag.$outtype.sha256"
      [ "$outtype" = auto ] && record "inspect-gguf.$tag" "$bin/lora-convert" inspect "$gguf" --base "$base_gguf" --json
      rm -f "$gguf"
    fi
    if [ -f "$work/manifest.json" ]; then
      sed -e "s#$work#WORK#g" -e "s#$root#ROOT#g" "$work/manifest.json" >"$out/manifest.$tag.$outtype.json"
      rm -f "$work/manifest.json"
    fi
  done
  record "convert-config.$tag" "$bin/lora-convert" "$dir" -o "$work/c.gguf" --base-config "fixtures/bases/$base" "${extra[@]}"
  [ -f "$work/c.gguf" ] && sha256sum "$work/c.gguf" | cut -d' ' -f1 >"$out/convert-config.$tag.sha256"
  rm -f "$work/c.gguf"
  record "convert-nobase.$tag" "$bin/lora-convert" "$dir" -o "$work/n.gguf" -q
  rm -f "$work/n.gguf"
  record "inspect.$tag" "$bin/lora-convert" inspect "$dir" --base "$base_gguf" --json "${extra[@]}"
  record "inspect-text.$tag" "$bin/lora-convert" inspect "$dir" --base "$base_gguf" "${extra[@]}"
  record "inspect-nobase.$tag" "$bin/lora-convert" inspect "$dir" --json "${extra[@]}"
done
record "convert.torchtune-qwen2.none" "$bin/lora-convert" fixtures/cases/torchtune-qwen2 -o "$work/t.gguf" --base fixtures/bases/qwen2/base.gguf
record "convert.torchtune-qwen2.as-saved" "$bin/lora-convert" fixtures/cases/torchtune-qwen2 -o "$work/t.gguf" --base fixtures/bases/qwen2/base.gguf --torchtune-qwen2 as-saved
[ -f "$work/t.gguf" ] && sha256sum "$work/t.gguf" | cut -d' ' -f1 >"$out/convert.torchtune-qwen2.as-saved.sha256"

if [ "$validate" = --validate ]; then
  model="$(tools/fetch-test-model.sh)"
  "$bin/lora-convert" fixtures/gemma-lora/adapter -o "$work/gemma.gguf" --base "$model" -q
  # A wrong-model adapter (refused before llama.cpp), malformed prompts, and a real run.
  record "validate.missing-adapter" "$bin/lora-validate" --base "$model" --adapter "$work/none.gguf"
  record "validate.llama-adapter" "$bin/lora-validate" --base "$model" --adapter fixtures/cases/llama/reference-converter-f32.gguf
  printf '{"prompt": 3}\n' >"$work/bad.jsonl"
  record "validate.bad-prompts" "$bin/lora-validate" --base "$model" --adapter "$work/gemma.gguf" --prompts "$work/bad.jsonl"
  record "validate.run" "$bin/lora-validate" --base "$model" --adapter "$work/gemma.gguf" \
    --prompts fixtures/gemma-lora/control-smoke.jsonl --prompts fixtures/gemma-lora/target.jsonl \
    --scales 0,0.5,1 --format json -o "$work/report.json"
  # Timings and the machine differ run to run; everything else must not.
  python3 - "$work/report.json" "$out/validate.report.json" "$work" <<'PY'
import json, sys
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k != "timings"}
    if isinstance(v, list):
        return [strip(x) for x in v]
    if isinstance(v, str):
        return v.replace(sys.argv[3], "WORK")
    return v
r = json.load(open(sys.argv[1]))
json.dump(strip(r), open(sys.argv[2], "w"), indent=1, sort_keys=True)
PY
fi
echo "snapshot in $out ($(ls "$out" | wc -l) files)"
