"""Golden prompts: the JSON Lines format `lora-validate` reads (golden-prompts/README.md), and rendering them with
the trainer's tokenizer exactly as transformers would at inference."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The fields of src/validate/golden.rs; anything else is a typo and an error, as there.
FIELDS = {"id", "kind", "prompt", "messages", "max_tokens", "contains", "not_contains", "regex", "limits", "note"}
ROLES = {"system", "user", "assistant"}


class PromptError(ValueError):
    """A golden-prompt line that cannot be used (the message names file and line)."""


@dataclass
class Prompt:
    id: str
    kind: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    max_tokens: int | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_source(self) -> dict[str, Any]:
        """The prompt as the pack records it: `prompt` (raw text) or `messages` (chat)."""
        return {"prompt": self.prompt} if self.prompt is not None else {"messages": self.messages}


def parse_lines(text: str, path: str) -> list[Prompt]:
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("//"):
            continue

        def bad(msg: str) -> PromptError:
            return PromptError(f"{path}:{n}: {msg}")

        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise bad(f"{e} — each line is one JSON object with `id`, `kind` and `prompt` or `messages`") from None
        if not isinstance(obj, dict):
            raise bad("expected a JSON object")
        unknown = sorted(set(obj) - FIELDS)
        if unknown:
            raise bad(f"unknown field `{unknown[0]}`")
        if not isinstance(obj.get("id"), str) or not obj["id"].strip():
            raise bad("`id` must be a non-empty string")
        if obj.get("kind") not in ("control", "target"):
            raise bad(f"`kind` must be \"control\" or \"target\", not {obj.get('kind')!r}")
        has_p, has_m = "prompt" in obj, "messages" in obj
        if has_p == has_m:
            raise bad("give either `prompt` (raw text) or `messages` (chat), not both or neither")
        if has_m:
            msgs = obj["messages"]
            if not isinstance(msgs, list) or not msgs:
                raise bad("`messages` must be a non-empty list")
            for m in msgs:
                if not isinstance(m, dict) or set(m) != {"role", "content"} or m["role"] not in ROLES:
                    raise bad(f"message {m!r}: expected {{\"role\": system|user|assistant, \"content\": …}}")
        mt = obj.get("max_tokens")
        if mt is not None and (not isinstance(mt, int) or mt < 1):
            raise bad("`max_tokens` must be a positive integer")
        out.append(Prompt(id=obj["id"], kind=obj["kind"], prompt=obj.get("prompt"), messages=obj.get("messages"),
                          max_tokens=mt, source=f"{path}:{n}"))
    return out


def load_prompts(paths: list[str | Path]) -> list[Prompt]:
    """Files or directories (every `*.jsonl` directly inside, sorted by name), ids unique across all."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(x for x in p.iterdir() if x.suffix == ".jsonl") if p.is_dir() else [p])
    prompts, seen = [], {}
    for f in files:
        for p in parse_lines(f.read_text(encoding="utf-8"), str(f)):
            if p.id in seen:
                raise PromptError(f"{p.source}: duplicate id `{p.id}` (first at {seen[p.id]})")
            seen[p.id] = p.source
            prompts.append(p)
    if not prompts:
        raise PromptError(f"no prompts found in {', '.join(map(str, paths))}")
    return prompts


def render(tokenizer, prompt: Prompt, chat_template: str | None = None) -> tuple[str, list[int]]:
    """The text the model sees and its token ids, as transformers renders them at inference: raw text through the
    tokenizer with its own special tokens (BOS when the tokenizer adds one); chat messages through the chat template
    (the tokenizer's, or `chat_template`) with the assistant turn opened, the rendered text tokenized without adding
    special tokens again (the template writes them)."""
    if prompt.prompt is not None:
        return prompt.prompt, tokenizer(prompt.prompt).input_ids
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise PromptError(f"{prompt.source}: prompt `{prompt.id}` has `messages` but the tokenizer has no chat "
                          "template; pass --chat-template FILE (the template the model was trained with)")
    text = tokenizer.apply_chat_template(prompt.messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=True)
    return text, tokenizer(text, add_special_tokens=False).input_ids
