#!/usr/bin/env python3
"""Seed inputs for the fuzz targets, cut from the committed fixtures (python3, standard library only).

    python3 fuzz/seeds.py        # writes fuzz/seeds/<target>/ (not committed; deterministic)

The fuzzer starts from these, and `cargo fuzz cmin` keeps the inputs that add coverage in fuzz/corpus/<target>/
(committed, replayed by tests/fuzz_replay.rs). Big fixtures are cut down so mutations land in headers, not in
tensor data: safetensors files keep the factors of two modules and two other tensors; GGUF adapters keep two
pairs; GGUF bases keep their metadata and the tensors their fixture adapter targets, stored as zero Q4_0 blocks
where the row length allows (a base's tensor data is never read by the converter or the fit check).
"""

import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "fixtures")
OUT = os.path.join(ROOT, "fuzz", "seeds")

# Keep in step with fuzz/targets.rs.
PEFT_CASES = ["llama", "llama-patterns", "llama-rslora", "llama-embed-lmhead", "mixtral", "qwen2moe",
              "deepseek2-mla", "gemma3", "phi3", "dora", "modules-to-save", "lora-bias"]
MLX_CASES = ["mlx-llama", "mlx-llama-keys", "mlx-mixtral", "mlx-gemma3", "mlx-qwen3moe", "mlx-phi3", "mlx-dora"]
BASE_ADAPTERS = ["llama", "gemma3", "phi3"]
N_OUTTYPES = 5


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(*parts):
    with open(os.path.join(*parts), "rb") as f:
        return f.read()


# ---- safetensors ----

def st_parse(data):
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    return header, data[8 + n:]


def st_write(header, blobs):
    """header: {key: info without offsets} in order; blobs: {key: bytes}."""
    out_header, offset, body = {}, 0, b""
    for key, info in header.items():
        if key == "__metadata__":
            out_header[key] = info
            continue
        blob = blobs[key]
        out_header[key] = {"dtype": info["dtype"], "shape": info["shape"],
                           "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        body += blob
    text = json.dumps(out_header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def module_of(key):
    for marker in (".lora_A", ".lora_B", ".lora_a", ".lora_b", ".lora_embedding_A", ".lora_embedding_B"):
        if marker in key:
            return key.split(marker)[0]
    return None


def st_cut(data, modules=2, others=2):
    header, body = st_parse(data)
    keep_modules, kept_others, out, blobs = [], 0, {}, {}
    for key in sorted(k for k in header if k != "__metadata__"):
        m = module_of(key)
        if m is None:
            if kept_others >= others:
                continue
            kept_others += 1
        else:
            if m not in keep_modules:
                if len(keep_modules) >= modules:
                    continue
                keep_modules.append(m)
        info = header[key]
        start, end = info["data_offsets"]
        out[key] = info
        blobs[key] = body[start:end]
    if "__metadata__" in header:
        out = {"__metadata__": header["__metadata__"], **out}
    return st_write(out, blobs)


# ---- GGUF ----

FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
BLOCK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 8: (32, 34), 30: (1, 2)}  # f32, f16, q4_0, q8_0, bf16


class Reader:
    def __init__(self, data):
        self.d, self.p = data, 0

    def take(self, n):
        b = self.d[self.p:self.p + n]
        self.p += n
        return b

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def string(self):
        return self.take(self.u64())

    def value(self, ty):
        if ty in FIXED:
            return self.take(FIXED[ty])
        if ty == 8:
            return self.string()
        assert ty == 9
        et, n = self.u32(), self.u64()
        return [self.value(et) for _ in range(n)]


def gguf_parse(data):
    """(version, raw metadata bytes, [(name, dims, type)], data offset, alignment)."""
    r = Reader(data)
    assert r.take(4) == b"GGUF"
    version, n_t, n_kv = r.u32(), r.u64(), r.u64()
    kv_start = r.p
    alignment = 32
    for _ in range(n_kv):
        key = r.string()
        ty = r.u32()
        v = r.value(ty)
        if key == b"general.alignment":
            alignment = struct.unpack("<I", v)[0]
    kv_raw = data[kv_start:r.p]
    tensors = []
    for _ in range(n_t):
        name = r.string().decode()
        dims = [r.u64() for _ in range(r.u32())]
        ty, off = r.u32(), r.u64()
        tensors.append((name, dims, ty, off))
    data_off = r.p + (-r.p % alignment)
    return version, n_kv, kv_raw, tensors, data_off, alignment


def nbytes(dims, ty):
    n = 1
    for d in dims:
        n *= d
    block, size = BLOCK[ty]
    return n // block * size


def gguf_write(version, n_kv, kv_raw, tensors, alignment):
    """tensors: [(name, dims, type, data bytes)]."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors), n_kv) + kv_raw
    offset, infos, body = 0, b"", b""
    for name, dims, ty, blob in tensors:
        n = name.encode()
        infos += struct.pack("<Q", len(n)) + n + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ty, offset)
        padded = blob + b"\0" * (-len(blob) % alignment)
        body += padded
        offset += len(padded)
    out = head + infos
    out += b"\0" * (-len(out) % alignment)
    return out + body


def gguf_cut_adapter(data, pairs=2):
    version, n_kv, kv_raw, tensors, data_off, alignment = gguf_parse(data)
    targets = []
    for name, *_ in tensors:
        t = name.rsplit(".lora_", 1)[0]
        if t not in targets:
            targets.append(t)
    keep = set(targets[:pairs])
    kept = [(name, dims, ty, data[data_off + off:data_off + off + nbytes(dims, ty)])
            for name, dims, ty, off in tensors if name.rsplit(".lora_", 1)[0] in keep]
    return gguf_write(version, n_kv, kv_raw, kept, alignment)


def gguf_cut_base(data, targets):
    version, n_kv, kv_raw, tensors, _, alignment = gguf_parse(data)
    kept = []
    for name, dims, ty, _ in tensors:
        if name not in targets and name != "token_embd.weight":
            continue
        ty = 2 if dims[0] % 32 == 0 else ty
        kept.append((name, dims, ty, b"\0" * nbytes(dims, ty)))
    return gguf_write(version, n_kv, kv_raw, kept, alignment)


def main():
    if os.path.isdir(OUT):
        for d, _, files in os.walk(OUT, topdown=False):
            for f in files:
                os.remove(os.path.join(d, f))
            os.rmdir(d)

    cases = sorted(os.listdir(os.path.join(FIX, "cases")))
    for case in cases:
        cfg = os.path.join(FIX, "cases", case, "adapter_config.json")
        if os.path.exists(cfg):
            write("mlx_config" if case.startswith("mlx-") else "peft_config", case + ".json", read(cfg))
    write("peft_config", "gemma-lora.json", read(FIX, "gemma-lora", "adapter", "adapter_config.json"))

    for target, table, weights in (("safetensors_peft", PEFT_CASES, "adapter_model.safetensors"),
                                   ("safetensors_mlx", MLX_CASES, "adapters.safetensors")):
        for i, case in enumerate(table):
            cut = st_cut(read(FIX, "cases", case, weights))
            for outtype in (0, 4, 0x80):  # auto, q8_0, bf16 with --drop-ignored-pairs
                write(target, f"{case}-{outtype}.bin", bytes([i, outtype]) + cut)
            write(target, f"{case}-full.bin", bytes([i, 1]) + read(FIX, "cases", case, weights))

    for case in cases:
        for f in sorted(os.listdir(os.path.join(FIX, "cases", case))):
            if f.endswith(".gguf"):
                write("gguf_adapter", f"{case}-{f}", gguf_cut_adapter(read(FIX, "cases", case, f)))
    for f in ("lora_tiny.gguf", "all_types.gguf"):
        write("gguf_adapter", f, read(FIX, "gguf", f))
        write("gguf_base", f, read(FIX, "gguf", f))

    for case in BASE_ADAPTERS:
        adapter = read(FIX, "cases", case, "reference-converter-f32.gguf")
        targets = {t[0].rsplit(".lora_", 1)[0] for t in gguf_parse(adapter)[3]}
        info = json.loads(read(FIX, "cases", case, "case.json"))
        write("gguf_base", f"{case}.gguf", gguf_cut_base(read(FIX, "bases", info["base"], "base.gguf"), targets))
    with open(os.path.join(FIX, "gguf", "ggml_verdicts.tsv")) as f:
        for line in f:
            name, value, *_ = line.rstrip("\n").split("\t")
            if value.startswith("hex:"):
                write("gguf_base", f"ggml-{name}.gguf", bytes.fromhex(value[4:]))

    for d in (os.path.join(ROOT, "golden-prompts"), os.path.join(ROOT, "golden-prompts", "examples"),
              os.path.join(FIX, "gemma-lora")):
        for f in sorted(os.listdir(d)):
            if f.endswith(".jsonl"):
                write("golden", f"{os.path.basename(d)}-{f}", read(d, f))

    write("limits", "default.json", json.dumps({
        "control_max_kl_mean": 0.25, "control_max_kl_max": 5.0, "control_min_top1_agreement": 0.6,
        "target_min_kl_mean": 0.05, "require_monotone": True}, indent=2).encode())
    write("limits", "partial.json", b'{"control_max_kl_mean": 1e-3, "require_monotone": false}\n')
    write("limits", "unknown.json", b'{"max_kl": 1}\n')
    print("seeds in", OUT, file=sys.stderr)


if __name__ == "__main__":
    main()
