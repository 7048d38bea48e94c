#!/usr/bin/env python3
"""Check src/arch/generated.rs (made from the llama-cpp-python sdist's gguf-py) against the llama.cpp the tests build.

Usage: python tools/check_arch_names.py LLAMA_CPP_SYS_DIR
    (e.g. ~/.cargo/registry/src/*/llama-cpp-sys-2-0.1.161)

The name tables come from the sdist's llama.cpp (its revision is recorded in generated.rs), while the tests run the
llama.cpp that the llama-cpp-sys-2 crate vendors, which ships neither gguf-py nor conversion/ and records no llama.cpp
commit. llama.cpp's loader knows a tensor by the name in src/llama-arch.cpp's LLM_TENSOR_NAMES: every GGUF tensor
name the generated tables can produce for a text model must be one of those, or an adapter for it would not load.
Prints the names missing from the crate's table; exit status 1 if any.
"""
import re
import sys
from pathlib import Path


MMPROJ = ("v.", "a.", "mm.", "resampler.")


def main() -> None:
    crate = Path(sys.argv[1])
    arch_cpp = (crate / "llama.cpp" / "src" / "llama-arch.cpp").read_text()
    known = set(re.findall(r'\{\s*LLM_TENSOR_\w+,\s*"([^"]+)"\s*\}', arch_cpp))
    generated = (Path(__file__).resolve().parent.parent / "src" / "arch" / "generated.rs").read_text()
    # mmproj (vision/audio tower) names live in tools/mtmd, not in llama-arch.cpp, and carry no text-model LoRA
    ours = {n for n in re.findall(r'gguf: "([^"]+)"', generated) if not n.startswith(MMPROJ)}
    missing = sorted(n for n in ours if n.replace("{bid}", "%d") not in known)
    print(f"{len(ours)} GGUF names in generated.rs, {len(known)} in {crate.name}'s llama-arch.cpp")
    for n in missing:
        print(f"missing: {n}")
    sys.exit(1 if missing else 0)


if __name__ == "__main__":
    main()
