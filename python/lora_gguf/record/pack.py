"""Record a reference pack: what the adapter does in training, for `lora-validate --reference` to compare with
llama.cpp. The schema is docs/reference-pack.md; `FORMAT` and `VERSION` name it."""
import json
import math
import os
import platform
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import save_file

from .fingerprint import adapter_fingerprint, base_fingerprint, tokenizer_fingerprint
from .prompts import Prompt, load_prompts, render

FORMAT = "lora-gguf-reference-pack"
VERSION = 1
META_FILE = "pack.json"
TENSOR_FILE = "pack.safetensors"
DEFAULT_TOP_K = 64
# 1 and ½ as trained and halved; 1/16 where the effect is still linear in the scale (on Gemma 3 270M with the test
# adapter, doubling the scale doubles the logit shift to within 4 % at 1/16 but only 1.2–1.35× at 1), so that a
# scale error reads as its true factor.
DEFAULT_SCALES = (1.0, 0.5, 0.0625)
DEFAULT_MAX_TOKENS = 32


@contextmanager
def lora_scale(model, scale: float):
    """Every LoRA module's scaling × `scale` (PEFT's own per-module factor, rsLoRA and patterns included)."""
    saved = []
    for m in model.modules():
        scaling = getattr(m, "scaling", None)
        if isinstance(scaling, dict) and hasattr(m, "lora_A"):
            saved.append((m, dict(scaling)))
            for k in scaling:
                scaling[k] = scaling[k] * scale
    try:
        yield
    finally:
        for m, s in saved:
            m.scaling.clear()
            m.scaling.update(s)


def _variants(model, scales: Iterable[float]):
    """(name, context manager) per recorded variant: the base (adapter disabled), then the adapter at each scale."""
    yield "base", model.disable_adapter()
    for s in scales:
        yield f"adapter@{s:g}", lora_scale(model, s)


def _greedy(model, ids: list[int], n: int, pad_id: int | None) -> list[int]:
    x = torch.tensor([ids], device=model.device)
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                         pad_token_id=pad_id)
    return out[0, len(ids):].tolist()


def _library_versions() -> dict[str, str]:
    import peft
    import safetensors
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "safetensors": safetensors.__version__}


@torch.no_grad()
def record_pack(model, tokenizer, prompts: list[Prompt] | list[str | Path], out_dir: str | Path, *,
                top_k: int = DEFAULT_TOP_K, scales: Iterable[float] = DEFAULT_SCALES,
                max_tokens: int = DEFAULT_MAX_TOKENS, chat_template: str | None = None,
                base_dir: str | Path | None = None, adapter_dir: str | Path | None = None,
                overwrite: bool = False) -> Path:
    """Record a pack from a PEFT model already in memory (e.g. at the end of a training script).

    For each prompt: its token ids as the trainer's tokenizer renders it, the greedy continuations of the base and
    of the adapter at scale 1.0, and — teacher-forced on the adapter's continuation — per position the log-probs of
    the base and of the adapter at each scale over the union of their top-`top_k` tokens, with each variant's
    log-normaliser (logsumexp of the logits, so log-prob + normaliser = logit). The pack is written to a temporary
    directory and renamed into place when complete. Returns `out_dir`."""
    scales = tuple(float(s) for s in scales)
    if 1.0 not in scales:
        raise ValueError("scales must include 1.0 (the trained adapter)")
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    if prompts and not isinstance(prompts[0], Prompt):
        prompts = load_prompts(prompts)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; choose another directory or pass overwrite=True (--force)")
    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dtype = next(model.parameters()).dtype
    tensors: dict[str, torch.Tensor] = {}
    records = []
    try:
        for i, p in enumerate(prompts):
            text, ids = render(tokenizer, p, chat_template)
            n = p.max_tokens or max_tokens
            with model.disable_adapter():
                base_cont = _greedy(model, ids, n, pad_id)
            adapter_cont = _greedy(model, ids, n, pad_id)
            feed = torch.tensor([ids + adapter_cont[:-1]], device=model.device)
            first = len(ids) - 1  # the prompt's last token predicts the first continuation token
            logits = {}
            for name, ctx in _variants(model, scales):
                with ctx:
                    logits[name] = model(feed).logits[0, first:].double().cpu()
            union, lp, lse = _union_topk(logits, top_k)
            tensors[f"prompts.{i}.token_ids"] = union
            tensors[f"prompts.{i}.logprobs"] = lp
            tensors[f"prompts.{i}.log_normaliser"] = lse
            records.append({
                "id": p.id, "kind": p.kind, "source": p.as_source(), "rendered": text,
                "prompt_tokens": ids, "base_continuation": base_cont, "adapter_continuation": adapter_cont,
                "positions": int(union.shape[0]), "width": int(union.shape[1]),
            })
        meta = {
            "format": FORMAT, "version": VERSION,
            "recorder": "lora_gguf.record",
            "tensors": TENSOR_FILE,
            "top_k": top_k,
            "variants": list(logits),
            "teacher_forced_on": "adapter_continuation",
            "dtype": str(dtype).removeprefix("torch."),
            "device": str(model.device),
            "libraries": _library_versions(),
            "tokenizer": tokenizer_fingerprint(tokenizer, chat_template),
            "chat_template": chat_template,
            "base": base_fingerprint(model.get_base_model(), base_dir),
            "adapter": adapter_fingerprint(model, adapter_dir),
            "prompts": records,
        }
    finally:
        model.train(was_training)
    _write(out_dir, meta, tensors)
    return out_dir


def _union_topk(logits: dict[str, torch.Tensor], k: int):
    """Per position, the union of every variant's top-k token ids (base's first, in rank order), padded with −1 to
    the widest row; each variant's log-probs over that union (−inf on padding); each variant's log-normaliser."""
    names = list(logits)
    lse = torch.stack([torch.logsumexp(logits[n], -1) for n in names])  # (V, P)
    lps = torch.stack([logits[n] - lse[j, :, None] for j, n in enumerate(names)])  # (V, P, vocab)
    k = min(k, lps.shape[-1])
    rows = []
    for pos in range(lps.shape[1]):
        seen, row = set(), []
        for j in range(len(names)):
            for t in torch.topk(lps[j, pos], k).indices.tolist():
                if t not in seen:
                    seen.add(t)
                    row.append(t)
        rows.append(row)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), -1, dtype=torch.int32)
    lp = torch.full((len(names), len(rows), width), -math.inf, dtype=torch.float32)
    for pos, row in enumerate(rows):
        idx = torch.tensor(row)
        ids[pos, : len(row)] = idx.to(torch.int32)
        lp[:, pos, : len(row)] = lps[:, pos, idx].float()
    return ids, lp, lse.float()


def _write(out_dir: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp"))
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / TENSOR_FILE,
                  metadata={"format": FORMAT, "version": str(VERSION)})
        text = json.dumps(meta, indent=1, ensure_ascii=False)
        # Token-id lists on one line each: readable, and a fraction of the size.
        text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
        (tmp / META_FILE).write_text(text + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
