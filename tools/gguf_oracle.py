#!/usr/bin/env python3
"""Write the oracle files the GGUF module is tested against, with llama.cpp's own gguf-py (gguf==0.19.0).

Usage: python tools/gguf_oracle.py fixtures/gguf
Outputs (small, committed):
  dtype_input.f32   f32 LE values, rows of 64 (ties, zeros, subnormals, large values, ±inf/NaN in the last rows)
  dtype_f16.bin     numpy astype(float16) of all rows
  dtype_bf16.bin    gguf.quants.quantize(BF16) of all rows
  dtype_q8_0.bin    gguf.quants.quantize(Q8_0) of the finite rows only (ggml's quantizer is undefined on inf/NaN)
  tiny_lora.gguf    GGUFWriter output for the LoRA-like file that src/gguf/write/tests.rs builds the same way
"""
import os
import sys

import numpy as np
import gguf
from gguf import quants, GGMLQuantizationType as Q

ROWS_FINITE = 40
ROW = 64


def inputs() -> np.ndarray:
    rng = np.random.default_rng(1234)
    rows = [rng.normal(0, 1, ROW).astype(np.float32) * np.float32(10.0 ** (i % 7 - 3)) for i in range(30)]
    ties = np.zeros(ROW, np.float32)
    ties[0] = 127.0                              # d = 1: every x.5 is an exact tie for roundf
    ties[1:16] = np.arange(1, 16) + 0.5
    ties[16:32] = -(np.arange(1, 17) + 0.5)
    ties[32:] = rng.integers(-127, 127, 32)
    rows.append(ties)
    rows.append(np.zeros(ROW, np.float32))       # all-zero blocks: d = 0, id = 0
    sub = np.full(ROW, 1e-40, np.float32)        # subnormal f32
    sub[::2] = -3e-8                             # f16 subnormal range
    rows.append(sub)
    big = np.full(ROW, 65504.0, np.float32)
    big[1::2] = 70000.0                          # overflows f16 to inf
    rows.append(big)
    bf_ties = np.frombuffer((np.arange(ROW, dtype=np.uint32) * 0x8000 + 0x3F808000).astype(np.uint32).tobytes(), np.float32)
    rows.append(bf_ties.copy())
    while len(rows) < ROWS_FINITE:
        rows.append(rng.uniform(-1e-3, 1e-3, ROW).astype(np.float32))
    special = np.array([np.inf, -np.inf, np.nan, -np.nan] * (ROW // 4), np.float32)
    nan_payload = np.frombuffer(np.full(ROW, 0x7F800001, np.uint32).tobytes(), np.float32)
    return np.stack(rows + [special, nan_payload.copy()])


def tiny_lora(path: str) -> None:
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_string("general.name", "Tiny")
    w.add_float32("adapter.lora.alpha", 16.0)
    w.add_array("adapter.alora.invocation_tokens", [1, 2, 3])
    w.add_uint32("general.quantization_version", 2)
    for i, (name, shape) in enumerate([("blk.0.attn_q.weight.lora_a", (8, 64)), ("blk.0.attn_q.weight.lora_b", (64, 8)),
                                       ("blk.0.ffn_up.weight.lora_a", (4, 96)), ("blk.0.ffn_up.weight.lora_b", (33, 4))]):
        n = shape[0] * shape[1]
        data = ((np.arange(n, dtype=np.float32) * (i + 1)) % 17 - 8) / 4
        w.add_tensor(name, data.reshape(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    x = inputs()
    x.tofile(os.path.join(out, "dtype_input.f32"))
    x.astype(np.float16).tofile(os.path.join(out, "dtype_f16.bin"))
    quants.quantize(x, Q.BF16).tofile(os.path.join(out, "dtype_bf16.bin"))
    quants.quantize(x[:ROWS_FINITE], Q.Q8_0).tofile(os.path.join(out, "dtype_q8_0.bin"))
    tiny_lora(os.path.join(out, "tiny_lora.gguf"))


if __name__ == "__main__":
    main()
