"""lora-gguf from Python: run the installed `lora-convert` and `lora-validate` binaries with typed results.

    import lora_gguf
    lora_gguf.convert("out/adapter", "adapter.gguf", base="model-Q4_K_M.gguf", verify=True)
    info = lora_gguf.inspect("adapter.gguf", base="model-Q4_K_M.gguf")      # dict (docs/inspect-and-manifest.md)
    result = lora_gguf.validate("model-Q4_K_M.gguf", "adapter.gguf", prompts=["targets.jsonl"])
    if not result.passed:
        print(result.failures)

The work is done by the binaries (the same ones `pip install lora-gguf` puts on PATH); this module only builds
their command lines, reads their JSON and turns their exit status into a result or an exception:
`convert` raises `LoraGgufError` on a refusal (exit 2); `inspect` returns the report also when the adapter is
refused or does not fit (`convertible` / `fits` for a directory, `fit` for a GGUF adapter) and raises when there
is no report; `validate` returns a `ValidateResult` for pass (0) and gate failure (1) and raises on bad input (2) or a llama.cpp failure (3).

The training-parity recorder (`python -m lora_gguf.record`, `lora_gguf.record.record_pack`) is the one part written
in Python: it runs where the adapter was trained (torch, transformers, peft) and needs no binary.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from ._find import BINARIES, find_binary

try:
    __version__ = metadata.version("lora-gguf")
except metadata.PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "unknown"

__all__ = [
    "BINARIES",
    "ConvertResult",
    "LoraGgufError",
    "ValidateResult",
    "convert",
    "find_binary",
    "inspect",
    "validate",
]

PathLike = Union[str, "os.PathLike[str]"]


class LoraGgufError(Exception):
    """A binary refused its input or failed: `status` is its exit status, `message` what it printed as the error."""

    def __init__(self, command: Sequence[str], status: int, stderr: str):
        self.command = list(command)
        self.status = status
        self.stderr = stderr
        self.message = _error_text(stderr) or f"exit status {status}"
        super().__init__(f"{Path(command[0]).name} exited with {status}: {self.message}")


@dataclass
class ConvertResult:
    """A written GGUF adapter: its path and size, the summary `lora-convert` printed, and the manifest when asked."""

    output: Path
    size: int
    summary: str
    warnings: str
    manifest: dict[str, Any] | None = None


@dataclass
class ValidateResult:
    """A finished validation: `passed` (exit 0) or the gate failed (exit 1); `report` is the JSON report."""

    passed: bool
    exit_status: int
    report: dict[str, Any]
    report_path: Path | None = None

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Every gate failure: prompt, scale, metric, value, limit and message."""
        return list(self.report.get("failures", []))


def convert(
    adapter_dir: PathLike,
    output: PathLike,
    *,
    base: PathLike | None = None,
    base_config: PathLike | None = None,
    outtype: str | None = None,
    arch: str | None = None,
    force: bool = False,
    verify: bool = False,
    manifest: PathLike | None = None,
    threads: int | None = None,
    extra_args: Iterable[str] = (),
) -> ConvertResult:
    """`lora-convert ADAPTER_DIR -o OUTPUT …`; raises LoraGgufError when conversion is refused (nothing written)."""
    args = [os.fspath(adapter_dir), "-o", os.fspath(output)]
    args += _opt("--base", base) + _opt("--base-config", base_config) + _opt("--outtype", outtype)
    args += _opt("--arch", arch) + _opt("--manifest", manifest) + _opt("--threads", threads)
    args += ["--force"] * force + ["--verify"] * verify + list(extra_args)
    proc = _run("lora-convert", args)
    if proc.returncode != 0:
        raise LoraGgufError(proc.args, proc.returncode, proc.stderr)
    out = Path(output)
    loaded = json.loads(Path(manifest).read_text()) if manifest is not None else None
    return ConvertResult(out, out.stat().st_size, proc.stdout, proc.stderr, loaded)


def inspect(path: PathLike, *, base: PathLike | None = None, base_config: PathLike | None = None) -> dict[str, Any]:
    """`lora-convert inspect PATH --json`: the report as a dict (schema `lora-gguf.inspect/1`).

    Returned also when the adapter would be refused or does not fit the base (exit 2 with a report): read
    `convertible`, `fits` and `refusals` (a directory) or `fit` and `problems` (a GGUF adapter). Raises LoraGgufError when the path cannot be read at all.
    """
    args = ["inspect", os.fspath(path), "--json"] + _opt("--base", base) + _opt("--base-config", base_config)
    proc = _run("lora-convert", args)
    if proc.returncode in (0, 2) and proc.stdout.lstrip().startswith("{"):
        return json.loads(proc.stdout)
    raise LoraGgufError(proc.args, proc.returncode, proc.stderr)


def validate(
    base: PathLike,
    adapters: PathLike | Sequence[PathLike | tuple[PathLike, float]],
    *,
    prompts: Iterable[PathLike] = (),
    scales: Iterable[float] | None = None,
    max_tokens: int | None = None,
    limits: PathLike | None = None,
    threads: int | None = None,
    gpu_layers: int | None = None,
    shard: str | None = None,
    report: PathLike | None = None,
    extra_args: Iterable[str] = (),
) -> ValidateResult:
    """`lora-validate --base BASE --adapter A … --format json`: the verdict and the JSON report.

    `adapters` is one path, one (path, scale) pair, or a list of paths or (path, scale) pairs (a stack).
    `gpu_layers`: layers offloaded to a GPU backend (default: all when one is built in). `shard` ("I/N"): run that
    shard of the prompts (a shard exits 0 once measured; merge the reports with `lora-validate merge-reports`). `report` keeps the JSON report
    at that path (default: a temporary file, removed). Raises LoraGgufError on bad input (2) or when llama.cpp
    could not load or decode (3).
    """
    if isinstance(adapters, (str, os.PathLike)) or _is_scaled(adapters):
        adapters = [adapters]  # one adapter, alone or as (path, scale)
    args = ["--base", os.fspath(base)]
    for a in adapters:
        spec = f"{os.fspath(a[0])}:{a[1]}" if isinstance(a, tuple) else os.fspath(a)
        args += ["--adapter", spec]
    for p in prompts:
        args += ["--prompts", os.fspath(p)]
    if scales is not None:
        args += ["--scales", ",".join(repr(float(s)) for s in scales)]
    args += _opt("--max-tokens", max_tokens) + _opt("--limits", limits) + _opt("--threads", threads)
    args += _opt("--gpu-layers", gpu_layers) + _opt("--shard", shard)
    with tempfile.TemporaryDirectory(prefix="lora-validate-") as tmp:
        path = Path(report) if report is not None else Path(tmp) / "report.json"
        proc = _run("lora-validate", args + ["--format", "json", "-o", os.fspath(path)] + list(extra_args))
        if proc.returncode not in (0, 1):
            raise LoraGgufError(proc.args, proc.returncode, proc.stderr)
        parsed = json.loads(path.read_text())
    return ValidateResult(proc.returncode == 0, proc.returncode, parsed, Path(report) if report is not None else None)


def _is_scaled(a: object) -> bool:
    return isinstance(a, tuple) and len(a) == 2 and isinstance(a[1], (int, float)) and not isinstance(a[1], bool)


def _opt(flag: str, value: object) -> list[str]:
    return [] if value is None else [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]


def _run(binary: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(find_binary(binary))] + args, capture_output=True, text=True, check=False)


def _error_text(stderr: str) -> str:
    """The binaries print `error: …` (possibly several lines) last; keep that part."""
    text = stderr.strip()
    at = text.rfind("error: ")
    return text[at + len("error: ") :] if at >= 0 else text
