#!/usr/bin/env python3
"""Test oracle for `src/gguf`: bytes produced by gguf-py / numpy, committed under `fixtures/gguf/`.

Run (from the repository root):

    /work/main/.venv/bin/python tools/gguf_oracle.py [OUT_DIR] [--ggml LLAMA_CPP_DIR]   # OUT_DIR: fixtures/gguf

`--ggml` also regenerates `ggml_verdicts.tsv`: it compiles a 20-line C harness against that llama.cpp tree's
`ggml/src/gguf.cpp` (+ the few ggml files it links against; needs gcc/g++) and records what ggml's own parser,
`gguf_init_from_file(no_alloc = true)`, says about each hostile case. The tree used for the committed file is
the llama.cpp vendored by llama-cpp-python 0.3.36 (commit 0c1e5709), whose `gguf.cpp` is identical to the one in
llama-cpp-sys-2 0.1.161.

Pinned: gguf 0.19.0 (gguf-py, the writer used by llama.cpp's `convert_lora_to_gguf.py`), numpy 2.4.x.
Everything is deterministic (fixed seeds, no timestamps), so re-running must reproduce the committed bytes.

Files written (all little-endian; `*.f32` are raw float32 arrays):

* `special.f32` → `special.f16`, `special.bf16`
  Hand-picked edge cases (ties, ±0, ±inf, quiet and signalling NaNs with payloads, f16/f32 subnormals,
  f16/bf16 overflow) followed by random normals at several scales and random bit patterns.
  f16 = `gguf.quants.quantize(x, F16)` (i.e. `ndarray.astype(np.float16)`), bf16 = `quantize(x, BF16)`.
* `q8_0.f32` → `q8_0.q8_0`
  Finite rows of 64 (2 blocks each): exact .5 ties (d = 1 and d = 2), all-zero blocks, blocks of f32
  subnormals (including the case where 1/d overflows to inf), huge values (f16(d) = inf), random rows.
  Output = `gguf.quants.quantize(x, Q8_0)`.
* `lora_tiny.gguf` — a LoRA-like adapter written by `gguf.GGUFWriter` (F32, F16, BF16, Q8_0 tensors, a 3-D
  expert pair, a 1-D norm, an aLoRA u32 array), data from `pattern()` below, which the Rust tests recompute.
* `all_types.gguf` — every GGUF value type, scalar and array, custom `general.alignment` 64, three tensors.
* `lora_tiny.json`, `all_types.json` — what gguf-py's `GGUFReader` sees in those files (version, alignment,
  data offset, keys and types in order, tensor name / ne / type / relative offset / byte size).
* `ggml_verdicts.tsv` — hostile inputs and ggml's verdict on each, one per line:
  `name <TAB> spec <TAB> verdict`; spec is `hex:<bytes>` (hand-built), `<base>:cut:<n>` (the first n bytes of
  an oracle file) or `<base>:set:<offset>=<byte>,...` (bytes overwritten); verdict is
  `OK <n_kv> <n_tensors> <data_offset>` or `ERR`.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V
from gguf.quants import quantize

EXPECTED_GGUF_PY = "0.19.0"


def pattern(n: int, salt: int) -> np.ndarray:
    """Deterministic f32 data: ((i*salt + 13) % 1999 - 999) / 977, divided in f64 then rounded to f32.

    The Rust tests compute exactly the same values (f64 division is correctly rounded in both languages).
    """
    return np.array([((i * salt + 13) % 1999 - 999) / 977.0 for i in range(n)], dtype=np.float64).astype(np.float32)


def bits(*patterns: int) -> list[float]:
    return list(np.array(patterns, dtype=np.uint32).view(np.float32))


def special_inputs() -> np.ndarray:
    hand = np.array(
        [0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 3.0, np.inf, -np.inf, 65504.0, -65504.0, 65519.0, 65520.0, -65520.0,
         65536.0, 1e30, -1e30, 3.0e38, -3.4028235e38, 1e-8, -1e-8, 6e-8, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -25,
         2.0 ** -14, 2.0 ** -14 - 2.0 ** -25, 5.9604645e-08, 1e-40, -1e-39, 1e-45, 0.1, -0.1, 1 / 3, 2 / 3],
        dtype=np.float32,
    ).tolist()
    hand += bits(
        # NaNs: quiet, signalling, payloads that vanish under the f16 shift, negative, all ones
        0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF, 0x7FFFFFFF, 0x7F802000, 0x7F801FFF,
        0x7FC00001, 0xFFFFFFFF, 0x7FA00000, 0xFF812345,
        # f16 ties: 1 + 2^-11 (to even: 1), 1 + 3·2^-11 (to even: up), just above a tie
        0x3F801000, 0x3F803000, 0x3F801001, 0x3F800FFF, 0xBF801000,
        # bf16 ties and near-ties; f32 max (bf16 → inf), f32 subnormals
        0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7FFFFF, 0x7F7F7FFF, 0x7F7F8000, 0xFF7FFFFF,
        0x00000001, 0x807FFFFF, 0x00400000, 0x00008000, 0x80018000,
    )
    rng = np.random.default_rng(20261124)
    parts = [np.array(hand, dtype=np.float32)]
    for scale in (1e-6, 1e-3, 1.0, 1e3, 1e5):
        parts.append((rng.standard_normal(512) * scale).astype(np.float32))
    parts.append(rng.integers(0, 2**32, size=1024, dtype=np.uint64).astype(np.uint32).view(np.float32))
    return np.concatenate(parts)


def q8_0_inputs() -> np.ndarray:
    rows = []
    # d = 1 exactly (amax 127): x·id = x, so every .5 is an exact tie (round half away from zero)
    ties = [127.0, -0.5, 0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 3.5, -3.5, 0.49999997, -0.50000006]
    ties += [float(k) + 0.5 for k in range(-10, 9)]
    rows.append(np.array(ties + [0.0] * (64 - len(ties)), dtype=np.float32))
    # d = 2 (amax 254): odd integers are ties; and a block whose amax is negative
    d2 = [254.0] + [float(2 * k + 1) for k in range(-15, 16)]
    rows.append(np.array(d2 + [-(v + 0.0) for v in d2], dtype=np.float32))
    # all-zero blocks, and a zero block next to a normal one
    rows.append(np.zeros(64, dtype=np.float32))
    rows.append(np.concatenate([np.zeros(32), pattern(32, 3)]).astype(np.float32))
    # f32 subnormals: d < 2^-128 so 1/d overflows to inf (x·id is ±inf / NaN); and d subnormal but 1/d finite
    tiny = np.array(bits(0x00000001, 0x80000003, 0x00001000, 0x00000000) * 8, dtype=np.float32)
    small = (pattern(32, 5) * np.float32(1e-36)).astype(np.float32)
    rows.append(np.concatenate([tiny, small]).astype(np.float32))
    mixed = (pattern(32, 7) * np.float32(3e-38)).astype(np.float32)
    rows.append(np.concatenate([mixed, np.array(bits(0x00000001) * 32, dtype=np.float32)]))
    # huge values: f16(d) overflows to inf; amax at the f32 limit
    huge = (pattern(32, 11) * np.float32(3e38)).astype(np.float32)
    big = (pattern(32, 13) * np.float32(1e7)).astype(np.float32)
    rows.append(np.concatenate([huge, big]))
    rows.append(np.concatenate([np.full(32, 3.4028235e38, dtype=np.float32), np.full(32, -65504.0 * 127)]))
    rng = np.random.default_rng(7)
    for scale in (1e-4, 1e-2, 1.0, 30.0):
        rows.extend((rng.standard_normal((16, 64)) * scale).astype(np.float32))
    x = np.stack(rows).astype(np.float32)
    assert np.isfinite(x).all()
    return x


def reader_view(path: Path) -> dict:
    r = gguf.GGUFReader(path)
    kvs = []
    for field in r.fields.values():
        entry = {"key": field.name, "type": int(field.types[0])}
        if field.types[0] == V.ARRAY:
            entry["element_type"] = int(field.types[-1])
            entry["len"] = len(field.data)
        kvs.append(entry)
    # GGUFReader exposes the header fields (GGUF.version etc.) as pseudo-keys; keep only the real KVs
    kvs = [kv for kv in kvs if not kv["key"].startswith("GGUF.")]
    tensors = [
        {
            "name": t.name,
            "ne": [int(d) for d in t.shape],
            "type": int(t.tensor_type),
            "offset": int(t.data_offset) - int(r.data_offset),
            "n_bytes": int(t.n_bytes),
            "n_elements": int(t.n_elements),
        }
        for t in r.tensors
    ]
    version = int(r.fields["GGUF.version"].parts[-1][0])
    return {
        "version": version,
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "file_size": path.stat().st_size,
        "kv": kvs,
        "tensors": tensors,
    }


def write_lora_tiny(path: Path) -> None:
    w = gguf.GGUFWriter(path, "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_name("Tiny Lora Oracle")
    w.add_float32("adapter.lora.alpha", 16.0)
    w.add_key_value("adapter.alora.invocation_tokens", [5, 17, 300000], V.ARRAY, V.UINT32)
    w.add_quantization_version(2)
    # (name, numpy shape, type, salt) — must match `LORA_TINY_TENSORS` in src/gguf/tests.rs
    for name, shape, ty, salt in LORA_TINY_TENSORS:
        x = pattern(int(np.prod(shape)), salt).reshape(shape)
        if ty == T.F32:
            w.add_tensor(name, x)
        elif ty == T.F16:
            w.add_tensor(name, quantize(x, T.F16))
        else:
            w.add_tensor(name, quantize(x, ty), raw_dtype=ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


LORA_TINY_TENSORS = [
    ("blk.0.attn_norm.weight", (5,), T.F32, 3),
    ("blk.0.attn_q.weight.lora_a", (4, 64), T.F32, 5),
    ("blk.0.attn_q.weight.lora_b", (64, 4), T.F32, 7),
    ("blk.0.attn_k.weight.lora_a", (4, 64), T.Q8_0, 11),
    ("blk.0.attn_k.weight.lora_b", (32, 4), T.F16, 17),
    ("blk.0.ffn_up_exps.weight.lora_a", (2, 4, 64), T.BF16, 19),
    ("blk.0.ffn_up_exps.weight.lora_b", (2, 96, 4), T.BF16, 23),
    ("token_embd.weight.lora_a", (272, 4), T.F16, 29),
    ("token_embd.weight.lora_b", (64, 4), T.F32, 31),
]


def write_all_types(path: Path) -> None:
    w = gguf.GGUFWriter(path, "test")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 255)
    w.add_int8("t.i8", -128)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 4294967295)
    w.add_int32("t.i32", -2147483648)
    w.add_float32("t.f32", -1.5)
    w.add_bool("t.bool_true", True)
    w.add_bool("t.bool_false", False)
    w.add_string("t.str", "h\u00e9llo \u2713")
    w.add_key_value("t.str_empty", "", V.STRING)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float64("t.f64", 3.141592653589793)
    w.add_key_value("t.arr_u8", [0, 1, 255], V.ARRAY, V.UINT8)
    w.add_key_value("t.arr_i8", [-128, 0, 127], V.ARRAY, V.INT8)
    w.add_key_value("t.arr_u16", [0, 65535], V.ARRAY, V.UINT16)
    w.add_key_value("t.arr_i16", [-32768, 32767], V.ARRAY, V.INT16)
    w.add_key_value("t.arr_u32", [0, 4294967295], V.ARRAY, V.UINT32)
    w.add_array("t.arr_i32", [-2147483648, 0, 2147483647])
    w.add_array("t.arr_f32", [0.25, -2.5, 1e-3])
    w.add_array("t.arr_bool", [True, False, True])
    w.add_array("t.arr_str", ["a", "", "\u00fc\u00df"])
    w.add_key_value("t.arr_u64", [0, 2**64 - 1], V.ARRAY, V.UINT64)
    w.add_key_value("t.arr_i64", [-(2**63), 2**63 - 1], V.ARRAY, V.INT64)
    w.add_key_value("t.arr_f64", [0.1, -1e300], V.ARRAY, V.FLOAT64)
    w.add_tensor("a", np.array([1.0, 2.0, 3.0], dtype=np.float32))
    w.add_tensor("b", np.array([[0.5, -0.25, 8.0], [1e-3, 65504.0, -0.0]], dtype=np.float32).astype(np.float16))
    w.add_tensor("c", np.arange(18, dtype=np.uint8).reshape(1, 18), raw_dtype=T.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


GGML_HARNESS_C = r"""
#include "gguf.h"
#include <stdio.h>
int main(int argc, char ** argv) {
    for (int i = 1; i < argc; i++) {
        struct gguf_init_params p = { /*no_alloc =*/ true, /*ctx =*/ NULL };
        struct gguf_context * ctx = gguf_init_from_file(argv[i], p);
        if (!ctx) { printf("ERR\n"); continue; }
        printf("OK %lld %lld %zu\n", (long long) gguf_get_n_kv(ctx), (long long) gguf_get_n_tensors(ctx),
               gguf_get_data_offset(ctx));
        gguf_free(ctx);
    }
    return 0;
}
"""


def build_ggml_harness(llama_cpp: Path, work: Path) -> Path:
    import subprocess

    g = llama_cpp / "ggml"
    (work / "ggml-version.h").write_text('#pragma once\n#define GGML_VERSION "oracle"\n#define GGML_COMMIT "oracle"\n')
    (work / "harness.c").write_text(GGML_HARNESS_C)
    flags = ["-O1", f"-I{work}", f"-I{g / 'include'}", f"-I{g / 'src'}", "-D_GNU_SOURCE"]
    objs = []
    sources = ["ggml.c", "ggml-quants.c", "ggml-alloc.c", "gguf.cpp", "ggml.cpp", "ggml-backend.cpp",
               "ggml-threading.cpp", "ggml-backend-meta.cpp"]
    for src in [*(g / "src" / f for f in sources), work / "harness.c"]:
        obj = work / (src.name + ".o")
        cc = ["gcc", "-std=gnu11"] if src.suffix == ".c" else ["g++", "-std=c++17"]
        subprocess.run([*cc, *flags, "-c", str(src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = work / "harness"
    subprocess.run(["g++", *objs, "-o", str(exe), "-lm", "-lpthread"], check=True)
    return exe


def _s(x: str | bytes) -> bytes:
    b = x if isinstance(x, bytes) else x.encode()
    return struct.pack("<Q", len(b)) + b


def _hdr(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _kv_u32(key: str | bytes, v: int) -> bytes:
    return _s(key) + struct.pack("<II", 4, v)


def _ti(name: str | bytes, dims: list[int], ty: int, offset: int) -> bytes:
    return _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ty, offset)


def _pad(b: bytes, a: int = 32) -> bytes:
    return b + b"\0" * ((-len(b)) % a)


def hostile_cases(out: Path) -> list[tuple[str, str, bytes]]:
    """(name, spec, bytes): hand-built edge cases, truncations and seeded byte corruptions of the oracle files."""
    hand = {
        "no_tensors_no_pad": _hdr(0, 1) + _kv_u32("k", 1),
        "empty_tensor_name": _pad(_hdr(1, 0) + _ti("", [4], 0, 0)) + b"\0" * 16,
        "zero_dim": _pad(_hdr(1, 0) + _ti("a", [0], 0, 0)),
        "zero_dim_unpadded": _hdr(1, 0) + _ti("a", [0], 0, 0),
        "align1": _hdr(1, 1) + _kv_u32("general.alignment", 1) + _ti("a", [1], 24, 0) + b"\0",
        "align64": _pad(_hdr(2, 1) + _kv_u32("general.alignment", 64) + _ti("a", [3], 0, 0) + _ti("b", [3], 0, 64), 64) + b"\0" * 76,
        "align64_wrong_offset": _pad(_hdr(2, 1) + _kv_u32("general.alignment", 64) + _ti("a", [3], 0, 0) + _ti("b", [3], 0, 32), 64) + b"\0" * 76,
        "align0": _hdr(0, 1) + _kv_u32("general.alignment", 0),
        "align3": _hdr(0, 1) + _kv_u32("general.alignment", 3),
        "align_u64": _hdr(0, 1) + _s("general.alignment") + struct.pack("<IQ", 10, 32),
        "bool_2": _hdr(0, 1) + _s("b") + struct.pack("<I", 7) + b"\x02",
        "version2": _hdr(0, 1, 2) + _kv_u32("k", 1),
        "version0": _hdr(0, 0, 0),
        "version1": _hdr(0, 0, 1),
        "version4": _hdr(0, 0, 4),
        "big_endian": b"GGUF" + struct.pack(">IQQ", 3, 0, 0),
        "bad_magic": b"GGML" + struct.pack("<IQQ", 3, 0, 0),
        "scalar_f32": _pad(_hdr(1, 0) + _ti("a", [], 0, 0)) + b"\0" * 4,
        "scalar_q8_0": _pad(_hdr(1, 0) + _ti("a", [], 8, 0)) + b"\0" * 34,
        "string_value_not_utf8": _hdr(0, 1) + _s("k") + struct.pack("<I", 8) + _s(b"\x80\xff"),
        "key_not_utf8": _hdr(0, 1) + _kv_u32(b"\xff", 1),
        "tensor_name_not_utf8": _pad(_hdr(1, 0) + _ti(b"\xfe", [1], 0, 0)) + b"\0" * 4,
        "empty_u8_array": _hdr(0, 1) + _s("k") + struct.pack("<IIQ", 9, 0, 0),
        "empty_str_array": _hdr(0, 1) + _s("k") + struct.pack("<IIQ", 9, 8, 0),
        "nested_array": _hdr(0, 1) + _s("k") + struct.pack("<IIQ", 9, 9, 0),
        "value_type_13": _hdr(0, 1) + _s("k") + struct.pack("<IQ", 13, 0),
        "array_longer_than_file": _hdr(0, 1) + _s("k") + struct.pack("<IIQ", 9, 6, 1 << 28) + b"\0" * 16,
        "many_kv_small_file": _hdr(0, 1000) + _kv_u32("k", 1),
        "many_tensors_small_file": _hdr(1000, 0) + b"\0" * 64,
        "string_len_huge": _hdr(0, 1) + _s("k") + struct.pack("<IQ", 8, 1 << 31),
        "empty_key": _hdr(0, 1) + _kv_u32("", 1),
        "duplicate_key": _hdr(0, 2) + _kv_u32("k", 1) + _kv_u32("k", 2),
        "duplicate_tensor": _pad(_hdr(2, 0) + _ti("a", [1], 0, 0) + _ti("a", [1], 0, 32)) + b"\0" * 36,
        "q8_0_ne0_0": _pad(_hdr(1, 0) + _ti("a", [0, 5], 8, 0)),
        "q8_0_ne0_33": _pad(_hdr(1, 0) + _ti("a", [33], 8, 0)) + b"\0" * 64,
        "elements_2_63": _pad(_hdr(1, 0) + _ti("a", [1 << 62, 2], 24, 0)) + b"\0" * 32,
        "bytes_2_64": _pad(_hdr(1, 0) + _ti("a", [1 << 62, 1], 0, 0)) + b"\0" * 32,
        "data_beyond_eof": _pad(_hdr(1, 0) + _ti("a", [1 << 61], 0, 0)) + b"\0" * 32,
        "negative_dim": _pad(_hdr(1, 0) + _ti("a", [(1 << 64) - 1], 0, 0)) + b"\0" * 32,
        "removed_type_31": _pad(_hdr(1, 0) + _ti("a", [32], 31, 0)) + b"\0" * 64,
        "type_43": _pad(_hdr(1, 0) + _ti("a", [32], 43, 0)) + b"\0" * 64,
        "name_63_bytes": _pad(_hdr(1, 0) + _ti("n" * 63, [1], 0, 0)) + b"\0" * 4,
        "name_64_bytes": _pad(_hdr(1, 0) + _ti("n" * 64, [1], 0, 0)) + b"\0" * 4,
        "dims_5": _pad(_hdr(1, 0) + _ti("a", [1] * 5, 0, 0)) + b"\0" * 4,
        "wrong_offset": _pad(_hdr(2, 0) + _ti("a", [3], 0, 0) + _ti("b", [3], 0, 12)) + b"\0" * 64,
        "trailing_bytes": _pad(_hdr(1, 0) + _ti("a", [1], 0, 0)) + b"\0" * 100,
        "last_tensor_unpadded": _pad(_hdr(1, 0) + _ti("a", [3], 0, 0)) + b"\0" * 12,
        "last_tensor_short": _pad(_hdr(1, 0) + _ti("a", [3], 0, 0)) + b"\0" * 11,
    }
    cases = [(name, "hex:" + b.hex(), b) for name, b in hand.items()]
    rng = np.random.default_rng(4242)
    for base in ("all_types", "lora_tiny"):
        data = (out / f"{base}.gguf").read_bytes()
        header_end = reader_view(out / f"{base}.gguf")["data_offset"]
        for cut in sorted({*range(0, 64), *range(0, len(data), 37), len(data) - 1}):
            cases.append((f"{base}_cut_{cut}", f"{base}:cut:{cut}", data[:cut]))
        for i in range(600):
            b = bytearray(data)
            edits = []
            for _ in range(int(rng.integers(1, 4))):
                off = int(rng.integers(0, header_end))
                kind = int(rng.integers(0, 4))
                val = [int(rng.integers(0, 256)), b[off] ^ (1 << int(rng.integers(0, 8))), 0xFF, 0][kind]
                b[off] = val
                edits.append(f"{off}={val}")
            cases.append((f"{base}_corrupt_{i}", f"{base}:set:" + ",".join(edits), bytes(b)))
    return cases


def write_ggml_verdicts(out: Path, llama_cpp: Path) -> None:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        exe = build_ggml_harness(llama_cpp, work)
        cases = hostile_cases(out)
        paths = []
        for i, (_, _, b) in enumerate(cases):
            p = work / f"case{i:05}.gguf"
            p.write_bytes(b)
            paths.append(str(p))
        verdicts = []
        for chunk in range(0, len(paths), 500):
            # ggml logs each rejection to stderr (raw bytes of the hostile names included): drop it.
            res = subprocess.run([str(exe), *paths[chunk:chunk + 500]], check=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
            verdicts += res.stdout.decode().splitlines()
    assert len(verdicts) == len(cases)
    lines = [f"{name}\t{spec}\t{verdict}" for (name, spec, _), verdict in zip(cases, verdicts)]
    (out / "ggml_verdicts.tsv").write_text("\n".join(lines) + "\n")


def main() -> None:
    from importlib.metadata import version

    if version("gguf") != EXPECTED_GGUF_PY:
        sys.exit(f"gguf-py {version('gguf')} found, the oracle is pinned to {EXPECTED_GGUF_PY}")
    args = sys.argv[1:]
    llama_cpp = None
    if "--ggml" in args:
        i = args.index("--ggml")
        llama_cpp = Path(args[i + 1])
        del args[i : i + 2]
    out = Path(args[0]) if args else Path("fixtures/gguf")
    out.mkdir(parents=True, exist_ok=True)

    with np.errstate(invalid="ignore", over="ignore"):
        x = special_inputs()
        x.tofile(out / "special.f32")
        quantize(x, T.F16).tofile(out / "special.f16")
        quantize(x, T.BF16).tofile(out / "special.bf16")

        q = q8_0_inputs()
        q.tofile(out / "q8_0.f32")
        quantize(q, T.Q8_0).tofile(out / "q8_0.q8_0")

    write_lora_tiny(out / "lora_tiny.gguf")
    write_all_types(out / "all_types.gguf")
    for name in ("lora_tiny", "all_types"):
        view = reader_view(out / f"{name}.gguf")
        (out / f"{name}.json").write_text(json.dumps(view, indent=1) + "\n")
    if llama_cpp is not None:
        write_ggml_verdicts(out, llama_cpp)
    else:
        print("ggml_verdicts.tsv left as is (pass --ggml LLAMA_CPP_DIR to regenerate it)")
    print(f"wrote oracle files to {out} (gguf-py {EXPECTED_GGUF_PY}, numpy {np.__version__})")


if __name__ == "__main__":
    main()
