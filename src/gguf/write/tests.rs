//! Writer and reader tests against gguf-py's own output (fixtures/gguf, made by tools/gguf_oracle.py) and hostile
//! inputs. Named after the error or property they check.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::super::dtype::{self, GgmlType};
use super::super::value::{Array, Value, ValueType};
use super::super::{Error, GgufFile};
use super::{TensorSpec, Writer, file_size, header_bytes};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/gguf")
        .join(name)
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The same metadata and tensors tools/gguf_oracle.py gives gguf-py's GGUFWriter.
type Metadata = Vec<(String, Value)>;
type Tensors = Vec<(TensorSpec, Vec<f32>)>;

fn tiny_lora() -> (Metadata, Tensors) {
    let s = |x: &str| Value::String(x.into());
    let metadata = vec![
        ("general.architecture".into(), s("llama")),
        ("general.type".into(), s("adapter")),
        ("adapter.type".into(), s("lora")),
        ("general.name".into(), s("Tiny")),
        ("adapter.lora.alpha".into(), Value::F32(16.0)),
        (
            "adapter.alora.invocation_tokens".into(),
            Value::Array(Array {
                element_type: ValueType::I32,
                values: vec![Value::I32(1), Value::I32(2), Value::I32(3)],
            }),
        ),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    let shapes = [
        ("blk.0.attn_q.weight.lora_a", 8, 64),
        ("blk.0.attn_q.weight.lora_b", 64, 8),
        ("blk.0.ffn_up.weight.lora_a", 4, 96),
        ("blk.0.ffn_up.weight.lora_b", 33, 4),
    ];
    let tensors = shapes
        .iter()
        .enumerate()
        .map(|(i, &(name, rows, cols))| {
            let data: Vec<f32> = (0..rows * cols)
                .map(|k| (((k * (i + 1)) % 17) as f32 - 8.0) / 4.0)
                .collect();
            (
                TensorSpec {
                    name: name.into(),
                    dims: vec![cols as u64, rows as u64],
                    ggml_type: GgmlType::F32,
                },
                data,
            )
        })
        .collect();
    (metadata, tensors)
}

fn write_tiny() -> Vec<u8> {
    let (metadata, tensors) = tiny_lora();
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = Writer::new(Vec::new(), &metadata, &specs).unwrap();
    for (spec, data) in &tensors {
        let mut bytes = Vec::new();
        dtype::encode(spec.ggml_type, data, spec.dims[0] as usize, &mut bytes).unwrap();
        w.write_tensor(&spec.name, &bytes).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn writer_is_byte_identical_to_gguf_py() {
    let ours = write_tiny();
    let theirs = std::fs::read(fixture("tiny_lora.gguf")).unwrap();
    assert_eq!(ours.len(), theirs.len());
    assert!(
        ours == theirs,
        "first difference at byte {:?}",
        ours.iter().zip(&theirs).position(|(a, b)| a != b)
    );
    let (metadata, tensors) = tiny_lora();
    let specs: Vec<TensorSpec> = tensors.into_iter().map(|(s, _)| s).collect();
    assert_eq!(file_size(&metadata, &specs).unwrap(), ours.len() as u64);
}

#[test]
fn reader_parses_gguf_py_output() {
    let f = GgufFile::open(&fixture("tiny_lora.gguf")).unwrap();
    let (metadata, tensors) = tiny_lora();
    assert_eq!(f.metadata, metadata);
    assert_eq!(f.version, 3);
    assert_eq!(f.tensors.len(), 4);
    for (info, (spec, data)) in f.tensors.iter().zip(&tensors) {
        assert_eq!(
            (&info.name, &info.dims, info.ggml_type),
            (&spec.name, &spec.dims, spec.ggml_type)
        );
        assert_eq!(&f.read_tensor_f32(&info.name).unwrap(), data);
    }
    assert_eq!(f.architecture(), Some("llama"));
    assert_eq!(f.get_f64("adapter.lora.alpha"), Some(16.0));
}

fn oracle(name: &str, ty: GgmlType, rows: usize) {
    let input = read_f32(&fixture("dtype_input.f32"));
    let mut ours = Vec::new();
    dtype::encode(ty, &input[..rows * 64], 64, &mut ours).unwrap();
    let theirs = std::fs::read(fixture(name)).unwrap();
    assert_eq!(ours.len(), theirs.len(), "{name}");
    if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
        panic!("{name}: first difference at byte {i}");
    }
}

#[test]
fn f16_matches_numpy_including_subnormals_overflow_inf_nan() {
    oracle("dtype_f16.bin", GgmlType::F16, 42);
}

#[test]
fn bf16_matches_gguf_py_including_ties_inf_nan() {
    oracle("dtype_bf16.bin", GgmlType::BF16, 42);
}

#[test]
fn q8_0_matches_gguf_py_including_ties_and_zero_blocks() {
    oracle("dtype_q8_0.bin", GgmlType::Q8_0, 40);
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}

fn open_bytes(bytes: &[u8]) -> Result<GgufFile, Error> {
    let f = temp_file(bytes);
    GgufFile::open(f.path())
}

#[test]
fn truncated_at_every_byte_is_an_error_never_a_panic() {
    let bytes = write_tiny();
    for len in 0..bytes.len() {
        let r = open_bytes(&bytes[..len]);
        // Cutting only trailing padding of the last tensor still leaves every tensor's data in bounds.
        let last = bytes.len() - bytes.iter().rev().take_while(|&&b| b == 0).count();
        if len < last.max(1) {
            assert!(r.is_err(), "accepted a file truncated to {len} bytes");
        }
    }
}

#[test]
fn bad_magic() {
    let e = open_bytes(b"GGML\x03\0\0\0").unwrap_err();
    assert!(matches!(e, Error::BadMagic { .. }), "{e}");
}

#[test]
fn big_endian() {
    let e = open_bytes(b"GGUF\0\0\0\x03").unwrap_err();
    assert!(matches!(e, Error::BigEndian { .. }), "{e}");
}

#[test]
fn version() {
    let e = open_bytes(b"GGUF\x01\0\0\0").unwrap_err();
    assert!(
        e.to_string().contains("GGUF version 1 is not supported"),
        "{e}"
    );
}

fn header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut h = b"GGUF\x03\0\0\0".to_vec();
    h.extend_from_slice(&n_tensors.to_le_bytes());
    h.extend_from_slice(&n_kv.to_le_bytes());
    h
}

#[test]
fn limit_on_tensor_count() {
    let e = open_bytes(&header(u64::MAX, 0)).unwrap_err();
    assert!(matches!(e, Error::Limit { .. }), "{e}");
}

#[test]
fn truncated_on_huge_string_length() {
    let mut h = header(0, 1);
    h.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    let e = open_bytes(&h).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
}

#[test]
fn truncated_on_huge_array_count() {
    let mut h = header(0, 1);
    h.extend_from_slice(&1u64.to_le_bytes());
    h.push(b'k');
    h.extend_from_slice(&9u32.to_le_bytes()); // array
    h.extend_from_slice(&4u32.to_le_bytes()); // of u32
    h.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let e = open_bytes(&h).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
}

fn one_tensor(dims: &[u64], ty: u32, offset: u64, alignment: Option<u32>) -> Vec<u8> {
    let mut h = header(1, u64::from(alignment.is_some()));
    if let Some(a) = alignment {
        let key = b"general.alignment";
        h.extend_from_slice(&(key.len() as u64).to_le_bytes());
        h.extend_from_slice(key);
        h.extend_from_slice(&4u32.to_le_bytes());
        h.extend_from_slice(&a.to_le_bytes());
    }
    h.extend_from_slice(&1u64.to_le_bytes());
    h.push(b't');
    h.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        h.extend_from_slice(&d.to_le_bytes());
    }
    h.extend_from_slice(&ty.to_le_bytes());
    h.extend_from_slice(&offset.to_le_bytes());
    h.resize(h.len().div_ceil(32) * 32 + 256, 0);
    h
}

#[test]
fn invalid_dims_overflow() {
    let e = open_bytes(&one_tensor(&[2, u64::MAX / 2], 0, 0, None)).unwrap_err();
    assert!(
        e.to_string().contains("negative dimension") || e.to_string().contains("overflows"),
        "{e}"
    );
    let e = open_bytes(&one_tensor(&[1 << 40, 1 << 30], 0, 0, None)).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
}

#[test]
fn invalid_offset() {
    let e = open_bytes(&one_tensor(&[4], 0, 32, None)).unwrap_err();
    assert!(
        e.to_string()
            .contains("tensor `t` has offset 32, expected 0"),
        "{e}"
    );
}

#[test]
fn invalid_alignment() {
    for a in [0, 3] {
        let e = open_bytes(&one_tensor(&[4], 0, 0, Some(a))).unwrap_err();
        assert!(e.to_string().contains("power of two"), "{a}: {e}");
    }
    assert!(open_bytes(&one_tensor(&[4], 0, 0, Some(64))).is_ok());
}

#[test]
fn invalid_block_size_and_type() {
    let e = open_bytes(&one_tensor(&[48, 2], 8, 0, None)).unwrap_err();
    assert!(e.to_string().contains("block size 32"), "{e}");
    let e = open_bytes(&one_tensor(&[4], 31, 0, None)).unwrap_err();
    assert!(e.to_string().contains("unknown ggml type 31"), "{e}");
}

#[test]
fn data_out_of_bounds() {
    let e = open_bytes(&one_tensor(&[1024], 0, 0, None)).unwrap_err();
    assert!(matches!(e, Error::DataOutOfBounds { .. }), "{e}");
}

#[test]
fn writer_rejects_long_names_duplicates_and_bad_blocks() {
    let spec = |name: &str, dims: Vec<u64>, ty| TensorSpec {
        name: name.into(),
        dims,
        ggml_type: ty,
    };
    let long = "x".repeat(64);
    assert!(header_bytes(&[], &[spec(&long, vec![4], GgmlType::F32)]).is_err());
    assert!(
        header_bytes(
            &[],
            &[
                spec("a", vec![4], GgmlType::F32),
                spec("a", vec![4], GgmlType::F32)
            ]
        )
        .is_err()
    );
    assert!(header_bytes(&[], &[spec("a", vec![48], GgmlType::Q8_0)]).is_err());
    let mut w = Writer::new(Vec::new(), &[], &[spec("a", vec![4], GgmlType::F32)]).unwrap();
    assert!(w.write_tensor("a", &[0; 12]).is_err());
    assert!(w.write_tensor("b", &[0; 16]).is_err());
    let w = Writer::new(Vec::new(), &[], &[spec("a", vec![4], GgmlType::F32)]).unwrap();
    assert!(
        w.finish()
            .unwrap_err()
            .to_string()
            .contains("never written")
    );
}

#[test]
fn offsets_beyond_4_gib_are_64_bit() {
    // A 5 GiB first tensor: the second's offset must exceed u32::MAX. Only the header is built; nothing is written.
    let big = TensorSpec {
        name: "big".into(),
        dims: vec![1 << 16, 5 << 14],
        ggml_type: GgmlType::F32,
    };
    let small = TensorSpec {
        name: "small".into(),
        dims: vec![8],
        ggml_type: GgmlType::F32,
    };
    let h = header_bytes(&[], &[big.clone(), small.clone()]).unwrap();
    // Sparse file: header, then a hole up to the end of the second tensor.
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &h).unwrap();
    let total = file_size(&[], &[big, small]).unwrap();
    assert!(total > 5 << 30);
    std::fs::OpenOptions::new()
        .write(true)
        .open(f.path())
        .unwrap()
        .set_len(total)
        .unwrap();
    let g = GgufFile::open(f.path()).unwrap();
    assert_eq!(g.tensors[1].offset, 5 << 32);
    assert!(g.tensors[1].offset > u64::from(u32::MAX));
    assert_eq!(g.file_size, total);
}
