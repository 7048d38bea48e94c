//! Tests across the module: files written by gguf-py (byte-identical output, same parse), write → read round
//! trips, hostile inputs, layouts beyond 4 GiB. Per-variant error tests live beside the code that raises them
//! (`read.rs`, `write.rs`, `dtype.rs`); the byte builder they use is [`Raw`].
//!
//! Oracle files are in `fixtures/gguf/` (made by `tools/gguf_oracle.py`, see its docstring) and are embedded
//! with `include_bytes!`, so the tests need no working directory.
//!
//! ggml's own parser is a second oracle: `ggml_verdicts.tsv` holds its verdict on ~1,700 hostile inputs (made
//! and judged by `tools/gguf_oracle.py --ggml`), and [`accepts_what_ggml_accepts_and_rejects_what_it_rejects`]
//! holds our reader to it. Not done here: running our *output* through `gguf_init_from_file` in-process
//! (llama-cpp-sys-2); our output is byte-identical to gguf-py's for the oracle files, which ggml reads.

use std::io::{Cursor, Seek, SeekFrom, Write};
use std::path::Path;

use super::dtype::{self, GgmlType};
use super::value::{Array, Value, ValueType};
use super::write::{Layout, TensorSpec, Writer};
use super::{Error, GgufFile};

pub(super) const LORA_TINY: &[u8] = include_bytes!("../../fixtures/gguf/lora_tiny.gguf");
pub(super) const LORA_TINY_JSON: &str = include_str!("../../fixtures/gguf/lora_tiny.json");
pub(super) const ALL_TYPES: &[u8] = include_bytes!("../../fixtures/gguf/all_types.gguf");
pub(super) const ALL_TYPES_JSON: &str = include_str!("../../fixtures/gguf/all_types.json");

/// Name used for in-memory files in messages.
pub(super) const NAME: &str = "t.gguf";

/// Parse an in-memory file.
pub(super) fn parse(bytes: &[u8]) -> Result<GgufFile, Error> {
    GgufFile::read_from(bytes, bytes.len() as u64, Path::new(NAME))
}

/// A little-endian byte builder for hand-made (hostile) GGUF files.
#[derive(Clone, Debug, Default)]
pub(super) struct Raw(pub Vec<u8>);

impl Raw {
    /// Magic, version and counts.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw(b"GGUF".to_vec()).u32(version).u64(n_tensors).u64(n_kv)
    }
    pub fn u32(mut self, v: u32) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    /// A GGUF string.
    pub fn str(self, s: &str) -> Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// A u32 key-value pair.
    pub fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key).u32(4).u32(v)
    }
    /// A string key-value pair.
    pub fn kv_str(self, key: &str, v: &str) -> Raw {
        self.str(key).u32(8).str(v)
    }
    /// A tensor info.
    pub fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Zero bytes up to a multiple of `align`.
    pub fn pad(mut self, align: usize) -> Raw {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    pub fn zeros(mut self, n: usize) -> Raw {
        self.0.resize(self.0.len() + n, 0);
        self
    }
}

/// The data of `tools/gguf_oracle.py`'s `pattern(n, salt)`, bit for bit.
fn pattern(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((((i * salt + 13) % 1999) as f64 - 999.0) / 977.0) as f32)
        .collect()
}

/// `LORA_TINY_TENSORS` of the oracle script: name, numpy shape, type, salt.
const LORA_TINY_TENSORS: [(&str, &[u64], GgmlType, usize); 9] = [
    ("blk.0.attn_norm.weight", &[5], GgmlType::F32, 3),
    ("blk.0.attn_q.weight.lora_a", &[4, 64], GgmlType::F32, 5),
    ("blk.0.attn_q.weight.lora_b", &[64, 4], GgmlType::F32, 7),
    ("blk.0.attn_k.weight.lora_a", &[4, 64], GgmlType::Q8_0, 11),
    ("blk.0.attn_k.weight.lora_b", &[32, 4], GgmlType::F16, 17),
    (
        "blk.0.ffn_up_exps.weight.lora_a",
        &[2, 4, 64],
        GgmlType::BF16,
        19,
    ),
    (
        "blk.0.ffn_up_exps.weight.lora_b",
        &[2, 96, 4],
        GgmlType::BF16,
        23,
    ),
    ("token_embd.weight.lora_a", &[272, 4], GgmlType::F16, 29),
    ("token_embd.weight.lora_b", &[64, 4], GgmlType::F32, 31),
];

fn kv(key: &str, value: Value) -> (String, Value) {
    (key.to_string(), value)
}

fn array(element_type: ValueType, values: Vec<Value>) -> Value {
    Value::Array(Array::new(element_type, values))
}

/// The metadata `convert_lora_to_gguf.py` would write for the oracle adapter, in gguf-py's order.
fn lora_tiny_metadata() -> Vec<(String, Value)> {
    use super::keys::*;
    vec![
        kv(GENERAL_ARCHITECTURE, "llama".into()),
        kv(GENERAL_TYPE, "adapter".into()),
        kv(ADAPTER_TYPE, "lora".into()),
        kv(GENERAL_NAME, "Tiny Lora Oracle".into()),
        kv(ADAPTER_LORA_ALPHA, Value::F32(16.0)),
        kv(
            ADAPTER_ALORA_INVOCATION_TOKENS,
            array(
                ValueType::U32,
                vec![Value::U32(5), Value::U32(17), Value::U32(300000)],
            ),
        ),
        kv(GENERAL_QUANTIZATION_VERSION, Value::U32(2)),
    ]
}

fn lora_tiny_specs() -> Vec<TensorSpec> {
    LORA_TINY_TENSORS
        .iter()
        .map(|(name, shape, ty, _)| {
            TensorSpec::new(*name, shape.iter().rev().copied().collect(), *ty)
        })
        .collect()
}

/// Our writer on the oracle adapter's inputs, encoding the f32 data ourselves.
fn write_lora_tiny() -> Vec<u8> {
    let specs = lora_tiny_specs();
    let mut w = Writer::new(Vec::new(), &lora_tiny_metadata(), &specs).unwrap();
    for ((_, shape, ty, salt), spec) in LORA_TINY_TENSORS.iter().zip(&specs) {
        let n = shape.iter().product::<u64>() as usize;
        let mut bytes = Vec::new();
        dtype::encode(*ty, &pattern(n, *salt), spec.dims[0] as usize, &mut bytes).unwrap();
        w.write_tensor(&spec.name, &bytes).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn lora_tiny_is_byte_identical_to_gguf_py() {
    let ours = write_lora_tiny();
    assert_eq!(ours.len(), LORA_TINY.len());
    if let Some(i) = ours.iter().zip(LORA_TINY).position(|(a, b)| a != b) {
        panic!(
            "first difference at byte {i}: ours {:#04x}, gguf-py {:#04x}",
            ours[i], LORA_TINY[i]
        );
    }
}

fn all_types_metadata() -> Vec<(String, Value)> {
    use Value as V;
    use ValueType as T;
    vec![
        kv("general.architecture", "test".into()),
        kv("general.alignment", V::U32(64)),
        kv("t.u8", V::U8(255)),
        kv("t.i8", V::I8(-128)),
        kv("t.u16", V::U16(65535)),
        kv("t.i16", V::I16(-32768)),
        kv("t.u32", V::U32(u32::MAX)),
        kv("t.i32", V::I32(i32::MIN)),
        kv("t.f32", V::F32(-1.5)),
        kv("t.bool_true", V::Bool(true)),
        kv("t.bool_false", V::Bool(false)),
        kv("t.str", "h\u{e9}llo \u{2713}".into()),
        kv("t.str_empty", "".into()),
        kv("t.u64", V::U64(u64::MAX)),
        kv("t.i64", V::I64(i64::MIN)),
        kv("t.f64", V::F64(std::f64::consts::PI)),
        kv(
            "t.arr_u8",
            array(T::U8, vec![V::U8(0), V::U8(1), V::U8(255)]),
        ),
        kv(
            "t.arr_i8",
            array(T::I8, vec![V::I8(-128), V::I8(0), V::I8(127)]),
        ),
        kv("t.arr_u16", array(T::U16, vec![V::U16(0), V::U16(65535)])),
        kv(
            "t.arr_i16",
            array(T::I16, vec![V::I16(-32768), V::I16(32767)]),
        ),
        kv(
            "t.arr_u32",
            array(T::U32, vec![V::U32(0), V::U32(u32::MAX)]),
        ),
        kv(
            "t.arr_i32",
            array(T::I32, vec![V::I32(i32::MIN), V::I32(0), V::I32(i32::MAX)]),
        ),
        kv(
            "t.arr_f32",
            array(T::F32, vec![V::F32(0.25), V::F32(-2.5), V::F32(1e-3)]),
        ),
        kv(
            "t.arr_bool",
            array(T::Bool, vec![V::Bool(true), V::Bool(false), V::Bool(true)]),
        ),
        kv(
            "t.arr_str",
            array(
                T::String,
                vec!["a".into(), "".into(), "\u{fc}\u{df}".into()],
            ),
        ),
        kv(
            "t.arr_u64",
            array(T::U64, vec![V::U64(0), V::U64(u64::MAX)]),
        ),
        kv(
            "t.arr_i64",
            array(T::I64, vec![V::I64(i64::MIN), V::I64(i64::MAX)]),
        ),
        kv(
            "t.arr_f64",
            array(T::F64, vec![V::F64(0.1), V::F64(-1e300)]),
        ),
    ]
}

#[test]
fn all_types_is_byte_identical_to_gguf_py() {
    let specs = [
        TensorSpec::new("a", vec![3], GgmlType::F32),
        TensorSpec::new("b", vec![3, 2], GgmlType::F16),
        TensorSpec::new("c", vec![32, 1], GgmlType::Q4_0),
    ];
    let mut w = Writer::new(Vec::new(), &all_types_metadata(), &specs).unwrap();
    assert_eq!(w.layout().alignment, 64);
    let mut a = Vec::new();
    dtype::encode(GgmlType::F32, &[1.0, 2.0, 3.0], 3, &mut a).unwrap();
    w.write_tensor("a", &a).unwrap();
    let mut b = Vec::new();
    dtype::encode(
        GgmlType::F16,
        &[0.5, -0.25, 8.0, 1e-3, 65504.0, -0.0],
        3,
        &mut b,
    )
    .unwrap();
    w.write_tensor("b", &b).unwrap();
    w.write_tensor("c", &(0u8..18).collect::<Vec<_>>()).unwrap();
    assert_eq!(w.finish().unwrap(), ALL_TYPES);
}

/// Compare our parse with what gguf-py's GGUFReader saw (the `.json` next to each oracle file).
fn check_against_gguf_py_reader(file: &GgufFile, json: &str) {
    let view: serde_json::Value = serde_json::from_str(json).unwrap();
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    assert_eq!(u64::from(file.version), n(&view["version"]));
    assert_eq!(file.alignment, n(&view["alignment"]));
    assert_eq!(file.data_offset, n(&view["data_offset"]));
    assert_eq!(file.file_size, n(&view["file_size"]));
    let kvs = view["kv"].as_array().unwrap();
    assert_eq!(file.metadata.len(), kvs.len());
    for ((key, value), expected) in file.metadata.iter().zip(kvs) {
        assert_eq!(key, expected["key"].as_str().unwrap());
        assert_eq!(
            u64::from(value.value_type().id()),
            n(&expected["type"]),
            "{key}"
        );
        if let Some(a) = value.as_array() {
            assert_eq!(
                u64::from(a.element_type.id()),
                n(&expected["element_type"]),
                "{key}"
            );
            assert_eq!(a.len() as u64, n(&expected["len"]), "{key}");
        }
    }
    let tensors = view["tensors"].as_array().unwrap();
    assert_eq!(file.tensors.len(), tensors.len());
    for (t, expected) in file.tensors.iter().zip(tensors) {
        assert_eq!(t.name, expected["name"].as_str().unwrap());
        let ne: Vec<u64> = expected["ne"].as_array().unwrap().iter().map(n).collect();
        assert_eq!(t.dims, ne, "{}", t.name);
        assert_eq!(
            u64::from(t.ggml_type.id()),
            n(&expected["type"]),
            "{}",
            t.name
        );
        assert_eq!(t.offset, n(&expected["offset"]), "{}", t.name);
        assert_eq!(t.n_bytes(), n(&expected["n_bytes"]), "{}", t.name);
        assert_eq!(t.n_elements(), n(&expected["n_elements"]), "{}", t.name);
    }
}

#[test]
fn gguf_py_files_parse_as_gguf_py_reads_them() {
    let lora = parse(LORA_TINY).unwrap();
    check_against_gguf_py_reader(&lora, LORA_TINY_JSON);
    assert_eq!(lora.metadata, lora_tiny_metadata());
    assert_eq!(lora.architecture(), Some("llama"));
    assert_eq!(lora.get_f64(super::keys::ADAPTER_LORA_ALPHA), Some(16.0));
    assert_eq!(
        lora.get_u64(super::keys::GENERAL_QUANTIZATION_VERSION),
        Some(2)
    );
    assert_eq!(
        lora.tensor("token_embd.weight.lora_a")
            .map(|t| t.dims.clone()),
        Some(vec![4, 272])
    );
    assert_eq!(
        lora.tensor("token_embd.weight.lora_a").map(|t| t.ggml_type),
        Some(GgmlType::F16)
    );
    let experts = lora.tensor("blk.0.ffn_up_exps.weight.lora_b").unwrap();
    assert_eq!(
        (experts.dims.as_slice(), experts.ggml_type),
        ([4, 96, 2].as_slice(), GgmlType::BF16)
    );

    let all = parse(ALL_TYPES).unwrap();
    check_against_gguf_py_reader(&all, ALL_TYPES_JSON);
    assert_eq!(all.metadata, all_types_metadata());
}

#[test]
fn tensors_of_the_gguf_py_file_decode_to_their_source_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lora_tiny.gguf");
    std::fs::write(&path, LORA_TINY).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.path, path);
    for (name, shape, ty, salt) in LORA_TINY_TENSORS {
        let src = pattern(shape.iter().product::<u64>() as usize, salt);
        let got = file.read_tensor_f32(name).unwrap();
        assert_eq!(got.len(), src.len(), "{name}");
        for (i, (g, x)) in got.iter().zip(&src).enumerate() {
            let tolerance = match ty {
                GgmlType::F32 => 0.0,
                GgmlType::F16 => x.abs() * 2f32.powi(-11),
                GgmlType::BF16 => x.abs() * 2f32.powi(-8),
                // |x| < 1.03, so d < 1.03/127 and the error is at most d/2 plus f16(d)'s rounding.
                _ => 1.03 / 127.0 * (0.5 + 127.0 * 2f32.powi(-11)),
            };
            assert!((g - x).abs() <= tolerance, "{name}[{i}]: {g} vs {x}");
        }
        let (start, len) = file.tensor_range(name).unwrap();
        assert_eq!(
            file.read_tensor_bytes(name).unwrap(),
            &LORA_TINY[start as usize..(start + len) as usize]
        );
    }
}

/// Metadata and tensors, as given to [`Writer::new`].
type Description = (Vec<(String, Value)>, Vec<TensorSpec>);

/// A deterministic set of descriptions covering every value type, 0–4 dimensions, zero-sized tensors,
/// quantized types and alignments 1, 32 and 4096.
fn round_trip_cases() -> Vec<Description> {
    let mut cases = vec![
        (lora_tiny_metadata(), lora_tiny_specs()),
        (all_types_metadata(), Vec::new()),
    ];
    let specs = vec![
        TensorSpec::new("scalar", vec![], GgmlType::F32),
        TensorSpec::new("empty", vec![0, 7], GgmlType::F16),
        TensorSpec::new("q4k", vec![256, 3], GgmlType::Q4_K),
        TensorSpec::new("iq2xxs", vec![512, 1, 2], GgmlType::IQ2_XXS),
        TensorSpec::new("mxfp4", vec![32, 2, 2, 2], GgmlType::MXFP4),
        TensorSpec::new("i8", vec![3], GgmlType::I8),
        TensorSpec::new("x".repeat(63), vec![1], GgmlType::F64),
    ];
    for alignment in [1u32, 32, 4096] {
        let mut metadata = vec![
            kv("general.architecture", "rt".into()),
            kv("general.alignment", Value::U32(alignment)),
        ];
        metadata.extend(all_types_metadata().into_iter().skip(2));
        metadata.push(kv("t.arr_empty", array(ValueType::F64, Vec::new())));
        cases.push((metadata, specs.clone()));
    }
    cases.push((Vec::new(), Vec::new()));
    cases
}

#[test]
fn round_trip_keeps_metadata_order_tensor_infos_and_data() {
    for (metadata, specs) in round_trip_cases() {
        let mut w = Writer::new(Vec::new(), &metadata, &specs).unwrap();
        let layout = w.layout().clone();
        for (i, s) in specs.iter().enumerate() {
            let n = s.n_bytes().unwrap() as usize;
            let data: Vec<u8> = (0..n).map(|k| (k * 31 + i * 7) as u8).collect();
            w.write_tensor(&s.name, &data).unwrap();
        }
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() as u64, layout.file_len());
        let file = parse(&bytes).unwrap();
        assert_eq!(file.version, 3);
        assert_eq!(file.metadata, metadata);
        assert_eq!(file.alignment, layout.alignment);
        let expected_offset = if specs.is_empty() {
            layout.header_len
        } else {
            layout.data_offset
        };
        assert_eq!(file.data_offset, expected_offset);
        assert_eq!(file.tensors.len(), specs.len());
        for (i, (t, s)) in file.tensors.iter().zip(&specs).enumerate() {
            assert_eq!(
                (&t.name, &t.dims, t.ggml_type),
                (&s.name, &s.dims, s.ggml_type)
            );
            assert_eq!(t.offset, layout.offsets[i]);
            let (start, len) = file.tensor_range(&t.name).unwrap();
            let data: Vec<u8> = (0..len as usize).map(|k| (k * 31 + i * 7) as u8).collect();
            assert_eq!(
                &bytes[start as usize..(start + len) as usize],
                data.as_slice(),
                "{}",
                t.name
            );
        }
        // Padding is zeros, including after the last tensor.
        let mut data_bytes = vec![false; bytes.len()];
        for t in &file.tensors {
            let (start, len) = file.tensor_range(&t.name).unwrap();
            data_bytes[start as usize..(start + len) as usize].fill(true);
        }
        let header_end = layout.header_len as usize;
        assert!(
            bytes[header_end..]
                .iter()
                .zip(&data_bytes[header_end..])
                .all(|(b, is_data)| *is_data || *b == 0)
        );
    }
}

#[test]
fn truncated_at_every_byte_boundary_is_an_error_until_the_last_tensor_ends() {
    // all_types' last tensor (18 bytes) is followed by 46 bytes of padding: llama.cpp does not need the
    // padding after the last tensor, and neither do we; every shorter prefix must fail cleanly.
    for (bytes, last) in [(ALL_TYPES, "c"), (LORA_TINY, "token_embd.weight.lora_b")] {
        let full = parse(bytes).unwrap();
        let (start, len) = full.tensor_range(last).unwrap();
        let data_end = (start + len) as usize;
        assert!(data_end <= bytes.len());
        for cut in 0..bytes.len() {
            let result = parse(&bytes[..cut]);
            if cut < data_end {
                let err = result.expect_err(&format!("prefix of {cut} bytes parsed"));
                assert!(err.to_string().starts_with("`t.gguf`"), "{err}");
            } else {
                assert_eq!(result.unwrap().tensors, full.tensors);
            }
        }
    }
}

#[test]
fn random_corruption_never_panics() {
    // Flip bytes at pseudo-random places of valid files; any result is fine, a panic is not.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for base in [ALL_TYPES, LORA_TINY] {
        for _ in 0..3000 {
            let mut bytes = base.to_vec();
            for _ in 0..1 + next() % 4 {
                let i = (next() % bytes.len() as u64) as usize;
                bytes[i] = next() as u8;
            }
            let _ = parse(&bytes);
        }
    }
}

#[test]
fn version_2_files_are_read() {
    let mut bytes = ALL_TYPES.to_vec();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let file = parse(&bytes).unwrap();
    assert_eq!(file.version, 2);
    assert_eq!(file.metadata, all_types_metadata());
}

/// A writer that counts bytes and keeps only the first `keep` of them.
#[derive(Debug)]
struct HeadSink {
    head: Vec<u8>,
    keep: usize,
    count: u64,
}

impl Write for HeadSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.keep.saturating_sub(self.head.len());
        self.head.extend_from_slice(&buf[..room.min(buf.len())]);
        self.count += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A 4 GiB + 32 B tensor, then a small one whose offset is past `u32::MAX`.
fn beyond_4_gib() -> Description {
    let metadata = vec![kv("general.architecture", "big".into())];
    let specs = vec![
        TensorSpec::new("big", vec![(1 << 30) + 8], GgmlType::F32),
        TensorSpec::new("small", vec![32, 2], GgmlType::Q8_0),
    ];
    (metadata, specs)
}

#[test]
fn layouts_beyond_4_gib_use_64_bit_offsets() {
    let (metadata, specs) = beyond_4_gib();
    let layout = Layout::of(&metadata, &specs).unwrap();
    assert_eq!(layout.offsets, vec![0, (1u64 << 32) + 32]);
    assert_eq!(layout.sizes, vec![(1u64 << 32) + 32, 68]);
    assert_eq!(layout.data_len, (1u64 << 32) + 32 + 96);
    let mut sink = HeadSink {
        head: Vec::new(),
        keep: 4096,
        count: 0,
    };
    let w = Writer::new(&mut sink, &metadata, &specs).unwrap();
    assert_eq!(w.bytes_written(), layout.data_offset);
    assert_eq!(w.next_tensor(), Some("big"));
    match w.finish() {
        Err(Error::MissingTensors { missing: 2, next }) => assert_eq!(next, "big"),
        other => panic!("{other:?}"),
    }
    // Only the header was written; read it back with the file size the layout promises.
    assert_eq!(sink.count, layout.data_offset);
    let file = GgufFile::read_from(
        Cursor::new(&sink.head),
        layout.file_len(),
        Path::new("big.gguf"),
    )
    .unwrap();
    assert_eq!(file.tensors[1].offset, (1u64 << 32) + 32);
    assert_eq!(file.data_offset, layout.data_offset);
    assert_eq!(
        file.tensor_range("small").unwrap(),
        (layout.data_offset + (1u64 << 32) + 32, 68)
    );
}

#[test]
fn sparse_file_with_a_tensor_beyond_4_gib_is_read() {
    let (metadata, specs) = beyond_4_gib();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.gguf");
    let mut file = std::fs::File::create(&path).unwrap();
    let w = Writer::new(&mut file, &metadata, &specs).unwrap();
    let layout = w.layout().clone();
    drop(w);
    let mut small = Vec::new();
    dtype::encode(GgmlType::Q8_0, &pattern(64, 3), 32, &mut small).unwrap();
    file.seek(SeekFrom::Start(layout.data_offset + layout.offsets[1]))
        .unwrap();
    file.write_all(&small).unwrap();
    // No padding after the last tensor: allowed. The 4 GiB before it is a hole.
    file.set_len(layout.data_offset + layout.offsets[1] + 68)
        .unwrap();
    drop(file);
    let gguf = GgufFile::open(&path).unwrap();
    assert!(gguf.file_size > u64::from(u32::MAX));
    assert_eq!(gguf.read_tensor_bytes("small").unwrap(), small);
    let decoded = gguf.read_tensor_f32("small").unwrap();
    assert_eq!(decoded.len(), 64);
    // One byte short: the small tensor no longer fits.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(gguf.file_size - 1)
        .unwrap();
    match GgufFile::open(&path) {
        Err(Error::TensorBeyondEof { tensor, end, .. }) => {
            assert_eq!((tensor.as_str(), end), ("small", gguf.file_size))
        }
        other => panic!("{other:?}"),
    }
}

/// Hostile inputs and the verdict of ggml's own parser (`gguf_init_from_file`, no_alloc) on each; see
/// `tools/gguf_oracle.py --ggml`.
const GGML_VERDICTS: &str = include_str!("../../fixtures/gguf/ggml_verdicts.tsv");

/// The bytes of one case of `ggml_verdicts.tsv`.
fn hostile_bytes(spec: &str) -> Vec<u8> {
    if let Some(hex) = spec.strip_prefix("hex:") {
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
    }
    let (base, rest) = spec.split_once(':').unwrap();
    let base = match base {
        "all_types" => ALL_TYPES,
        "lora_tiny" => LORA_TINY,
        other => panic!("unknown base {other}"),
    };
    if let Some(cut) = rest.strip_prefix("cut:") {
        return base[..cut.parse::<usize>().unwrap()].to_vec();
    }
    let mut bytes = base.to_vec();
    for edit in rest.strip_prefix("set:").unwrap().split(',') {
        let (offset, value) = edit.split_once('=').unwrap();
        bytes[offset.parse::<usize>().unwrap()] = value.parse().unwrap();
    }
    bytes
}

#[test]
fn accepts_what_ggml_accepts_and_rejects_what_it_rejects() {
    let mut stricter = Vec::new();
    let mut cases = 0;
    for line in GGML_VERDICTS.lines() {
        let mut fields = line.split('\t');
        let (name, spec, verdict) = (
            fields.next().unwrap(),
            fields.next().unwrap(),
            fields.next().unwrap(),
        );
        cases += 1;
        let ours = parse(&hostile_bytes(spec));
        match (verdict.strip_prefix("OK "), ours) {
            (Some(expected), Ok(file)) => {
                let got = format!(
                    "{} {} {}",
                    file.metadata.len(),
                    file.tensors.len(),
                    file.data_offset
                );
                assert_eq!(got, expected, "{name}: n_kv n_tensors data_offset");
            }
            // Our documented extra checks: UTF-8 keys and tensor names, tensor data inside the file (which
            // llama.cpp's loaders check after ggml's parser).
            (Some(_), Err(e @ (Error::InvalidUtf8 { .. } | Error::TensorBeyondEof { .. }))) => {
                stricter.push((name, e))
            }
            (Some(_), Err(e)) => panic!("{name}: ggml accepts, we reject: {e}"),
            (None, Ok(file)) => panic!("{name}: ggml rejects, we accept: {file:?}"),
            (None, Err(_)) => {}
        }
    }
    assert!(cases > 1500, "{cases}");
    let names: Vec<&str> = stricter.iter().map(|(n, _)| *n).collect();
    for expected in [
        "key_not_utf8",
        "tensor_name_not_utf8",
        "data_beyond_eof",
        "last_tensor_short",
    ] {
        assert!(names.contains(&expected), "{expected} not among {names:?}");
    }
}
