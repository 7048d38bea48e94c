"""Fingerprints a pack carries so `lora-validate` can tell whether the GGUF it runs is what training used:
the tokenizer (vocabulary hash, special tokens, BOS/EOS behaviour), the base weights and the adapter. The
vocabulary hash is defined so that Rust computes the same value from a GGUF's `tokenizer.ggml.tokens`
(docs/reference-pack.md)."""
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch


def vocab_sha256(tokens: list[str]) -> str:
    """SHA-256 over the tokens in id order, each as its UTF-8 byte length (u32 little-endian) and bytes, with
    SentencePiece's word marker U+2581 read as a space (a GGUF may store either for the same token: Gemma's runs of
    spaces are literal spaces in its GGUF and U+2581 in transformers' tokenizer)."""
    h = hashlib.sha256()
    for t in tokens:
        b = t.replace("\u2581", " ").encode("utf-8")
        h.update(struct.pack("<I", len(b)))
        h.update(b)
    return h.hexdigest()


def _special(tokenizer, name: str) -> dict[str, Any] | None:
    text, tid = getattr(tokenizer, f"{name}_token", None), getattr(tokenizer, f"{name}_token_id", None)
    return None if text is None or tid is None else {"id": int(tid), "text": str(text)}


def tokenizer_fingerprint(tokenizer, chat_template: str | None) -> dict[str, Any]:
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    probe = tokenizer("a").input_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    base_vocab = getattr(tokenizer, "vocab_size", n)
    added = [{"id": int(i), "text": str(t.content)}
             for i, t in sorted(tokenizer.added_tokens_decoder.items()) if i >= base_vocab]
    template = chat_template or getattr(tokenizer, "chat_template", None)
    return {
        "class": type(tokenizer).__name__,
        "n_tokens": n,
        "vocab_sha256": vocab_sha256([t if t is not None else "" for t in tokens]),
        "special_tokens": {k: v for k in ("bos", "eos", "pad", "unk") if (v := _special(tokenizer, k))},
        "adds_bos": bool(bos is not None and probe[:1] == [bos]),
        "adds_eos": bool(eos is not None and probe[-1:] == [eos]),
        "added_tokens": added,
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
    }


def _base_tensors(model):
    """The base model's own tensors (PEFT's `base_layer.` removed, LoRA factors and tied duplicates left out)."""
    seen = set()
    for name, t in sorted(model.state_dict().items()):
        if "lora_" in name or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        yield name.replace(".base_layer.", ".").removeprefix("base_model.model."), t


def base_fingerprint(model, base_dir: str | Path | None) -> dict[str, Any]:
    """Architecture and sizes from the config, and a SHA-256 over every base tensor (name, dtype, shape, bytes in
    name order) — the weights actually in memory. A float copy made from a GGUF (tools/make-float-test-model.py)
    names its source file and hash (`derived_from`), which lets `lora-validate` check it against the GGUF it runs."""
    cfg = getattr(model, "config", None)
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size", "tie_word_embeddings")
    dims = {k: getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None}
    h, n_params, n_tensors = hashlib.sha256(), 0, 0
    for name, t in _base_tensors(model):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
        n_params += t.numel()
        n_tensors += 1
    fp = {
        "name_or_path": Path(base_dir).name if base_dir else getattr(cfg, "_name_or_path", None),
        "architectures": list(getattr(cfg, "architectures", None) or []),
        "model_type": getattr(cfg, "model_type", None),
        "dims": dims,
        "n_tensors": n_tensors,
        "n_parameters": n_params,
        "weights_sha256": h.hexdigest(),
        "derived_from": None,
    }
    source = Path(base_dir) / "lora_gguf_source.json" if base_dir else None
    if source and source.is_file():
        fp["derived_from"] = json.loads(source.read_text())
    return fp


def adapter_fingerprint(model, adapter_dir: str | Path | None) -> dict[str, Any]:
    """The PEFT config that decides the runtime math, and a SHA-256 over the LoRA factors in memory."""
    cfg = model.peft_config[model.active_adapter]
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if "lora_" in name:
            t = t.detach().cpu().contiguous()
            h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
            h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    targets = cfg.target_modules
    return {
        "path": Path(adapter_dir).name if adapter_dir else None,
        "peft_type": str(getattr(cfg.peft_type, "value", cfg.peft_type)),
        "base_model_name_or_path": cfg.base_model_name_or_path,
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "use_rslora": bool(cfg.use_rslora),
        "rank_pattern": dict(cfg.rank_pattern or {}),
        "alpha_pattern": dict(cfg.alpha_pattern or {}),
        "target_modules": sorted(targets) if isinstance(targets, (set, list)) else targets,
        "factors_sha256": h.hexdigest(),
    }
