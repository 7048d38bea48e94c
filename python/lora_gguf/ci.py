"""The lora-validate gate for CI jobs: `python -m lora_gguf.ci` (what action.yml and the GitLab template run).

Fetches the base model when it is a URL (once, into the cache), converts adapter directories (PEFT / mlx-lm) against
that base, runs `lora-validate` with a JSON report, renders it as JUnit XML and Markdown (`lora-validate
merge-reports`, which also combines the reports of a sharded run), prints the text report, appends the Markdown to
$GITHUB_STEP_SUMMARY and writes `passed` and the report paths to $GITHUB_OUTPUT when those are set, and exits with
lora-validate's status: 0 pass, 1 gate failed, 2 bad input, 3 llama.cpp could not load or decode.

Every option also reads an environment variable (LORA_BASE, LORA_ADAPTER, …), so a CI template only sets variables.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Sequence

from ._find import find_binary


def _env_list(name: str) -> list[str]:
    return os.environ.get(name, "").split()


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m lora_gguf.ci",
        description="Validate a LoRA adapter on its base model in CI (reports: JSON, JUnit, Markdown).",
    )
    p.add_argument("--base", default=env("LORA_BASE"), help="base GGUF: a path or an http(s) URL [LORA_BASE]")
    p.add_argument(
        "--adapter",
        action="append",
        default=None,
        help="GGUF adapter or adapter directory (converted against the base), optionally PATH:SCALE; repeat for a "
        "stack [LORA_ADAPTER, whitespace-separated]",
    )
    p.add_argument("--prompts", action="append", default=None, help="golden-prompt files or dirs [LORA_PROMPTS]")
    p.add_argument("--scales", default=env("LORA_SCALES") or None, help="e.g. 0,0.5,1 [LORA_SCALES]")
    p.add_argument("--limits", default=env("LORA_LIMITS") or None, help="limits JSON file [LORA_LIMITS]")
    p.add_argument("--shard", default=env("LORA_SHARD") or None, help="run shard I/N of the prompts [LORA_SHARD]")
    p.add_argument(
        "--merge",
        action="append",
        default=None,
        help="instead of running: merge these shard reports (paths or globs) into the run's verdict [LORA_MERGE]",
    )
    p.add_argument("--args", default=env("LORA_ARGS", ""), help="more lora-validate arguments [LORA_ARGS]")
    p.add_argument("--out", default=env("LORA_OUT") or "lora-validate-report", help="report directory [LORA_OUT]")
    p.add_argument(
        "--cache",
        default=env("LORA_GGUF_CACHE") or str(Path.home() / ".cache" / "lora-gguf"),
        help="where downloaded bases are kept [LORA_GGUF_CACHE]",
    )
    return p


def fetch_base(base: str, cache: Path) -> Path:
    """A local path as it is; an http(s) (or file:) URL downloaded once to cache/models/, atomically (a partial
    download is never taken for the model)."""
    if not base.startswith(("http://", "https://", "file://")):
        path = Path(base)
        if not path.is_file():
            raise SystemExit(f"error: base model `{base}` is not a file")
        return path
    name = base.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "base.gguf"
    path = cache / "models" / f"{hashlib.sha256(base.encode()).hexdigest()[:16]}-{name}"
    if path.is_file():
        print(f"base: {path} (cached from {base})", flush=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"base: downloading {base}", flush=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(base) as response:
                shutil.copyfileobj(response, tmp, 1 << 20)
            tmp.close()
            os.replace(tmp.name, path)
        except BaseException:
            os.unlink(tmp.name)
            raise
    return path


def _split_scale(spec: str) -> tuple[str, str]:
    head, sep, tail = spec.rpartition(":")
    try:
        float(tail)
        return (head, sep + tail) if sep else (spec, "")
    except ValueError:
        return spec, ""


def prepare_adapters(specs: Sequence[str], base: Path, out: Path) -> list[str]:
    """GGUF files as they are; adapter directories converted against the base (with --verify) into out/."""
    ready = []
    for i, spec in enumerate(specs):
        path, scale = _split_scale(spec)
        if Path(path).is_dir():
            gguf = out / f"adapter-{i}.gguf" if len(specs) > 1 else out / "adapter.gguf"
            cmd = [os.fspath(find_binary("lora-convert")), path, "-o", os.fspath(gguf), "--base", os.fspath(base)]
            status = subprocess.run(cmd + ["--verify", "--force"]).returncode
            if status != 0:
                raise SystemExit(status)
            path = os.fspath(gguf)
        ready.append(path + scale)
    return ready


def _render(validate: Path, report: Path, fmt: str, dest: Path | None) -> None:
    cmd = [os.fspath(validate), "merge-reports", os.fspath(report), "--format", fmt]
    cmd += ["-o", os.fspath(dest)] if dest else []
    # merge-reports exits with the verdict (0/1); anything else means it could not read the report.
    status = subprocess.run(cmd, stdout=subprocess.DEVNULL if dest else None).returncode
    if status not in (0, 1):
        raise SystemExit(status)


def _append(path_var: str, text: str) -> None:
    target = os.environ.get(path_var)
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.json"
    validate = find_binary("lora-validate")
    merges = opts.merge or _env_list("LORA_MERGE")
    if merges:
        status = merge(validate, merges, report)
    else:
        status = run(validate, opts, report)
    if status not in (0, 1):
        _append("GITHUB_STEP_SUMMARY", f"### lora-validate could not run (exit {status})\n\nSee the job log.\n")
        return status
    if opts.shard and not merges:
        # A shard's own verdict covers only its prompts: the job that merges the shards' reports publishes.
        _append("GITHUB_STEP_SUMMARY", f"lora-validate shard {opts.shard} measured: {report}\n")
        return status
    return publish(validate, report, status)


def merge(validate: Path, patterns: Sequence[str], report: Path) -> int:
    """`lora-validate merge-reports` over the shard reports the patterns name, into one JSON report."""
    files = sorted({f for p in patterns for f in (glob.glob(p) or [p])})
    cmd = [os.fspath(validate), "merge-reports", *files, "--format", "json", "-o", os.fspath(report)]
    print("+ " + shlex.join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def run(validate: Path, opts: argparse.Namespace, report: Path) -> int:
    """Fetch the base, convert adapter directories, run lora-validate into the JSON report."""
    adapters = opts.adapter or _env_list("LORA_ADAPTER")
    prompts = opts.prompts or _env_list("LORA_PROMPTS")
    if not opts.base or not adapters:
        _parser().error("give --base and --adapter (or LORA_BASE and LORA_ADAPTER), or --merge")
    out = report.parent
    base = fetch_base(opts.base, Path(opts.cache))

    cmd = [os.fspath(validate), "--base", os.fspath(base)]
    for a in prepare_adapters(adapters, base, out):
        cmd += ["--adapter", a]
    for p in prompts:
        cmd += ["--prompts", p]
    for flag, value in (("--scales", opts.scales), ("--limits", opts.limits), ("--shard", opts.shard)):
        cmd += [flag, value] if value else []
    cmd += shlex.split(opts.args) + ["--format", "json", "-o", os.fspath(report)]
    print("+ " + shlex.join(cmd), flush=True)
    return subprocess.run(cmd).returncode


def publish(validate: Path, report: Path, status: int) -> int:
    """Render the JSON report as JUnit, Markdown and text; the step summary and job outputs; the exit status."""
    out = report.parent
    junit, markdown = out / "report.xml", out / "report.md"
    _render(validate, report, "junit", junit)
    _render(validate, report, "markdown", markdown)
    _render(validate, report, "text", None)
    _append("GITHUB_STEP_SUMMARY", markdown.read_text(encoding="utf-8") + "\n")
    _append(
        "GITHUB_OUTPUT",
        f"passed={'true' if status == 0 else 'false'}\nreport-json={report}\nreport-junit={junit}\n"
        f"report-markdown={markdown}\n",
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
