"""python -m lora_gguf.record --base-model HF_DIR --adapter ADAPTER_DIR --prompts FILE.jsonl --out PACK_DIR"""
import argparse
import sys
from pathlib import Path

from .pack import DEFAULT_MAX_TOKENS, DEFAULT_TOP_K, record_pack
from .prompts import PromptError, load_prompts

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lora_gguf.record",
        description="Record a reference pack of what a PEFT adapter does in transformers, for "
                    "`lora-validate --reference PACK_DIR` (docs/reference-pack.md).")
    ap.add_argument("--base-model", required=True, type=Path, help="the Hugging Face base model directory")
    ap.add_argument("--adapter", required=True, type=Path, help="the PEFT adapter directory")
    ap.add_argument("--prompts", required=True, type=Path, action="append",
                    help="golden-prompt JSONL file or directory (repeatable), as lora-validate reads them")
    ap.add_argument("--out", required=True, type=Path, help="the pack directory to write")
    ap.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help=f"tokens per position (default {DEFAULT_TOP_K})")
    ap.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                    help=f"new tokens per prompt unless the prompt sets max_tokens (default {DEFAULT_MAX_TOKENS})")
    ap.add_argument("--chat-template", type=Path,
                    help="a Jinja chat template file for `messages` prompts (default: the tokenizer's own)")
    ap.add_argument("--tokenizer", type=Path,
                    help="tokenizer directory (default: the adapter directory when it holds one, else the base)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype to run in (default float32)")
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument("--force", action="store_true", help="replace an existing pack directory")
    args = ap.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    for flag, path in (("--base-model", args.base_model / "config.json"),
                       ("--adapter", args.adapter / "adapter_config.json")):
        if not path.is_file():
            return fail(f"{flag}: `{path}` not found")
    if args.out.exists() and not args.force:
        return fail(f"--out `{args.out}` exists; choose another directory or pass --force")
    try:
        prompts = load_prompts(args.prompts)
    except (PromptError, OSError) as e:
        return fail(str(e))
    template = args.chat_template.read_text(encoding="utf-8") if args.chat_template else None

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_dir = args.tokenizer or (args.adapter if any((args.adapter / f).is_file() for f in (
        "tokenizer.json", "tokenizer_config.json", "tokenizer.model")) else args.base_model)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    base = AutoModelForCausalLM.from_pretrained(args.base_model, dtype=getattr(torch, DTYPES[args.dtype]))
    model = PeftModel.from_pretrained(base.to(args.device), args.adapter).eval()
    try:
        out = record_pack(model, tokenizer, prompts, args.out, top_k=args.top_k, max_tokens=args.max_tokens,
                          chat_template=template, base_dir=args.base_model, adapter_dir=args.adapter,
                          overwrite=args.force)
    except PromptError as e:
        return fail(str(e))
    print(f"wrote {out} ({len(prompts)} prompts, top-{args.top_k})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
