"""The training-parity recorder: `python -m lora_gguf.record --base-model HF_DIR --adapter ADAPTER_DIR --prompts
FILE.jsonl --out PACK_DIR`, or `record_pack(model, tokenizer, prompts, out_dir)` at the end of a training script.
The pack it writes is what `lora-validate --reference PACK_DIR` compares llama.cpp with (docs/reference-pack.md)."""
from .pack import DEFAULT_MAX_TOKENS, DEFAULT_SCALES, DEFAULT_TOP_K, FORMAT, VERSION, record_pack
from .prompts import Prompt, PromptError, load_prompts, render

__all__ = ["record_pack", "load_prompts", "render", "Prompt", "PromptError", "FORMAT", "VERSION",
           "DEFAULT_TOP_K", "DEFAULT_SCALES", "DEFAULT_MAX_TOKENS"]
