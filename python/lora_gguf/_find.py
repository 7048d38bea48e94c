"""Where the installed `lora-convert` / `lora-validate` binaries are.

The wheel puts them in the scripts directory of the environment it is installed into (maturin `bindings = "bin"`),
so that is searched first, for the install scheme this interpreter uses and the user scheme (`pip install --user`),
then PATH. `LORA_GGUF_BIN_DIR` overrides all of it (a cargo build's `target/release`, say).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

BINARIES = ("lora-convert", "lora-validate")


def _exe(name: str) -> str:
    return name + (".exe" if sys.platform == "win32" else "")


def _scripts_dirs() -> list[Path]:
    dirs = [Path(sysconfig.get_path("scripts"))]
    user_scheme = {"nt": "nt_user", "posix": "posix_user"}.get(os.name)
    if sys.platform == "darwin" and sys._framework:  # type: ignore[attr-defined]
        user_scheme = "osx_framework_user"
    if user_scheme in sysconfig.get_scheme_names():
        dirs.append(Path(sysconfig.get_path("scripts", scheme=user_scheme)))
    # A venv's interpreter can be a symlink out of the venv: its own bin/ is where pip put the scripts.
    dirs.append(Path(sys.executable).parent)
    return dirs


def find_binary(name: str) -> Path:
    """The path of `lora-convert` or `lora-validate`; FileNotFoundError saying where it looked when absent."""
    if name not in BINARIES:
        raise ValueError(f"unknown binary `{name}`; lora-gguf installs {', '.join(BINARIES)}")
    override = os.environ.get("LORA_GGUF_BIN_DIR")
    if override:
        path = Path(override) / _exe(name)
        if path.is_file():
            return path
        raise FileNotFoundError(f"LORA_GGUF_BIN_DIR is `{override}`, but `{path}` does not exist")
    looked = []
    for d in _scripts_dirs():
        path = d / _exe(name)
        if path.is_file():
            return path
        looked.append(str(d))
    found = shutil.which(name)
    if found:
        return Path(found)
    raise FileNotFoundError(
        f"`{name}` is not installed: not in {', '.join(dict.fromkeys(looked))} nor on PATH. "
        "Install the package (`pip install lora-gguf`) or set LORA_GGUF_BIN_DIR to the directory holding it."
    )
