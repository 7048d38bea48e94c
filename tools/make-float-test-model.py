#!/usr/bin/env python3
"""Make the float Hugging Face copy of a quantized GGUF that training-parity tests record their reference pack on.

    python tools/make-float-test-model.py GGUF OUT_DIR

transformers dequantizes every GGUF tensor to float32 (the same loader fixtures/gemma-lora/train.py trains on, so
the copy holds exactly the weights the test adapter was trained against; Gemma's RMSNorm "+1" is undone by it) and
builds the tokenizer from the GGUF's own vocabulary. The copy is written with `save_pretrained` (config without the
GGUF `quantization_config`, so it loads as a plain float model) plus `lora_gguf_source.json`: the GGUF it came from
(file name, size, SHA-256), which the recorder copies into a pack's base fingerprint. ~1.1 GB for Gemma 3 270M:
cache it outside the clone (tools/fetch-float-test-model.sh does), never commit it.
"""
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    gguf, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    if not gguf.is_file():
        raise SystemExit(f"{gguf}: no such GGUF file")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Written to a temporary directory beside OUT_DIR and renamed when complete: never a half copy.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".tmp"))
    try:
        # transformers refuses save_pretrained on a GGUF-loaded model: write the float weights and config directly.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = gguf.stem
        config.architectures = [type(model).__name__]
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        source = {"gguf_file": gguf.name, "gguf_size": gguf.stat().st_size, "gguf_sha256": sha256_file(gguf),
                  "made_by": "tools/make-float-test-model.py", "dtype": "float32"}
        (tmp / "lora_gguf_source.json").write_text(json.dumps(source, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(out)


if __name__ == "__main__":
    main()
