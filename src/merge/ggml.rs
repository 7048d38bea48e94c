//! ggml's own quantizers and dequantizers, called through llama-cpp-sys-2: the one place `merge` reaches into C.
//!
//! `llama-quantize` quantizes every tensor with `ggml_quantize_chunk` row by row (`llama_tensor_quantize_impl` in
//! `src/llama-quant.cpp`), each row independently of the others, with the importance matrix of the tensor (of the
//! expert, for stacked experts) when one is given. Calling the same function on the same f32 rows gives the same
//! bytes, whatever the rows are grouped into; dequantizing is the type's `to_float` from `ggml_get_type_traits`,
//! what llama.cpp itself runs when it reads a quantized tensor as floats.
//!
//! Every call is checked here first (type supported, whole blocks and rows, buffer sizes, imatrix length), because
//! ggml answers a bad call with an assertion that aborts the process.
#![allow(unsafe_code)]

use llama_cpp_sys_2 as sys;

use crate::gguf::GgmlType;

/// Why ggml cannot quantize or dequantize the rows asked for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// ggml has no quantizer (or no dequantizer) for this type.
    #[error("ggml cannot {operation} {ggml_type} tensors")]
    Unsupported {
        /// The type.
        ggml_type: GgmlType,
        /// `quantize` or `dequantize`.
        operation: &'static str,
    },
    /// Rows do not split into whole blocks, or buffers do not have the sizes the rows need.
    #[error(
        "{ggml_type}: {values} values in rows of {row_len} do not fit {bytes} bytes of quantized data (blocks of {block})"
    )]
    Shape {
        /// The type.
        ggml_type: GgmlType,
        /// Values given.
        values: usize,
        /// Values per row.
        row_len: usize,
        /// Bytes given.
        bytes: usize,
        /// The type's block size.
        block: u64,
    },
    /// The type needs an importance matrix (ggml asserts without one).
    #[error(
        "{ggml_type} needs an importance matrix: ggml's {ggml_type} quantizer cannot run without one — pass --imatrix \
         (llama-imatrix makes one) or choose another type"
    )]
    NeedsImatrix {
        /// The type.
        ggml_type: GgmlType,
    },
    /// The importance matrix does not have one weight per column.
    #[error("the importance matrix has {len} values but the rows have {row_len} columns")]
    ImatrixLength {
        /// Its length.
        len: usize,
        /// The row length.
        row_len: usize,
    },
}

/// The types `ggml_quantize_chunk` writes (its `switch`; every other type hits `assert(false)`).
pub fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q1_0
            | Q2_0
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | MXFP4
            | NVFP4
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | TQ1_0
            | TQ2_0
            | IQ2_XXS
            | IQ2_XS
            | IQ3_XXS
            | IQ3_S
            | IQ2_S
            | IQ1_S
            | IQ1_M
            | IQ4_NL
            | IQ4_XS
    )
}

/// `ggml_quantize_requires_imatrix`: the types ggml refuses to quantize without importance weights.
pub fn requires_imatrix(ty: GgmlType) -> bool {
    // SAFETY: a pure function of the enum value; every GgmlType id is a valid `enum ggml_type`.
    unsafe { sys::ggml_quantize_requires_imatrix(ty.id() as sys::ggml_type) }
}

/// The types `llama-quantize` refuses to write without an importance matrix (`tensor_requires_imatrix` in
/// `src/llama-quant.cpp`, for tensors other than the embedding and output head): ggml's hard requirement plus
/// IQ3_XXS, IQ2_S and IQ1_M, whose quality collapses without one. `merge` follows llama-quantize.
pub fn needs_imatrix(ty: GgmlType) -> bool {
    use GgmlType::*;
    requires_imatrix(ty) || matches!(ty, IQ3_XXS | IQ2_XXS | IQ2_XS | IQ2_S | IQ1_M | IQ1_S)
}

/// Bytes of one row of `row_len` values (`ggml_row_size`), `None` when the row is not whole blocks.
pub fn row_bytes(ty: GgmlType, row_len: usize) -> Option<usize> {
    let block = usize::try_from(ty.block_size()).ok()?;
    if block == 0 || !row_len.is_multiple_of(block) {
        return None;
    }
    (row_len / block).checked_mul(usize::try_from(ty.type_size()).ok()?)
}

fn shape_error(ty: GgmlType, values: usize, row_len: usize, bytes: usize) -> QuantError {
    QuantError::Shape {
        ggml_type: ty,
        values,
        row_len,
        bytes,
        block: ty.block_size(),
    }
}

/// Quantize whole rows of `row_len` values from `src` into `dst` with ggml's quantizer for `ty`, as
/// `llama-quantize` does (`imatrix`: one importance weight per column, or none).
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    row_len: usize,
    imatrix: Option<&[f32]>,
    dst: &mut [u8],
) -> Result<(), QuantError> {
    if !can_quantize(ty) {
        return Err(QuantError::Unsupported {
            ggml_type: ty,
            operation: "quantize",
        });
    }
    let bad = || shape_error(ty, src.len(), row_len, dst.len());
    let row_size = row_bytes(ty, row_len)
        .filter(|_| row_len > 0)
        .ok_or_else(bad)?;
    if !src.len().is_multiple_of(row_len) {
        return Err(bad());
    }
    let rows = src.len() / row_len;
    if rows.checked_mul(row_size) != Some(dst.len()) {
        return Err(bad());
    }
    if let Some(im) = imatrix
        && im.len() != row_len
    {
        return Err(QuantError::ImatrixLength {
            len: im.len(),
            row_len,
        });
    }
    if imatrix.is_none() && requires_imatrix(ty) {
        return Err(QuantError::NeedsImatrix { ggml_type: ty });
    }
    if rows == 0 {
        return Ok(());
    }
    let (Ok(n_rows), Ok(n_per_row)) = (i64::try_from(rows), i64::try_from(row_len)) else {
        return Err(bad());
    };
    // SAFETY: ggml reads `rows × row_len` floats from `src` and writes `rows × ggml_row_size(ty, row_len)` bytes to
    // `dst`, both checked above (`row_bytes` is ggml_row_size: blocks × type size from the same table, tested
    // against it); `start` 0 satisfies its start-of-row asserts; the type has a quantizer (`can_quantize`, the
    // cases of its switch); `imatrix`, when given, holds `row_len` floats, and it is given whenever ggml requires
    // it. The quantizers keep no pointer after returning; their lazily built tables (i-quants) are initialised
    // under ggml's critical section, so concurrent calls are safe.
    let written = unsafe {
        sys::ggml_quantize_chunk(
            ty.id() as sys::ggml_type,
            src.as_ptr(),
            dst.as_mut_ptr().cast(),
            0,
            n_rows,
            n_per_row,
            imatrix.map_or(std::ptr::null(), <[f32]>::as_ptr),
        )
    };
    debug_assert_eq!(written, dst.len());
    Ok(())
}

/// Dequantize `src` (whole blocks of `ty`) into `dst` with ggml's own `to_float` for the type.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let block = usize::try_from(ty.block_size()).unwrap_or(0);
    let type_size = usize::try_from(ty.type_size()).unwrap_or(0);
    let bad = || shape_error(ty, dst.len(), block, src.len());
    if block == 0 || type_size == 0 || !src.len().is_multiple_of(type_size) {
        return Err(bad());
    }
    let blocks = src.len() / type_size;
    if blocks.checked_mul(block) != Some(dst.len()) {
        return Err(bad());
    }
    if ty == GgmlType::F32 {
        for (d, s) in dst.iter_mut().zip(src.as_chunks::<4>().0) {
            *d = f32::from_le_bytes(*s);
        }
        return Ok(());
    }
    // SAFETY: ggml_get_type_traits returns a pointer into ggml's static, immutable type table for any valid type
    // id (every GgmlType id is one).
    let to_float = unsafe { (*sys::ggml_get_type_traits(ty.id() as sys::ggml_type)).to_float };
    let Some(to_float) = to_float else {
        return Err(QuantError::Unsupported {
            ggml_type: ty,
            operation: "dequantize",
        });
    };
    let Ok(n) = i64::try_from(dst.len()) else {
        return Err(bad());
    };
    if n == 0 {
        return Ok(());
    }
    // SAFETY: `to_float(x, y, k)` reads k / block_size blocks of type_size bytes from `x` and writes k floats to `y`;
    // `src` holds exactly that many blocks and `dst` exactly k floats (checked above). It keeps no pointer.
    unsafe { to_float(src.as_ptr().cast(), dst.as_mut_ptr(), n) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's own table agrees with ours on every type it can quantize (row size, block size).
    #[test]
    fn row_sizes_are_ggml_row_size() {
        for ty in GgmlType::ALL.into_iter().filter(|t| can_quantize(*t)) {
            let row_len = 256 * 3;
            // SAFETY: a pure function of a valid type id and a length.
            let ggml = unsafe { sys::ggml_row_size(ty.id() as sys::ggml_type, row_len as i64) };
            assert_eq!(row_bytes(ty, row_len), Some(ggml), "{ty}");
        }
    }

    #[test]
    fn bad_calls_are_errors_not_aborts() {
        let src = vec![0.5f32; 64];
        let mut dst = vec![0u8; 68];
        assert!(quantize_rows(GgmlType::Q8_0, &src, 64, None, &mut dst).is_ok());
        assert_eq!(
            quantize_rows(GgmlType::Q8_0, &src, 64, None, &mut dst[..60]),
            Err(shape_error(GgmlType::Q8_0, 64, 64, 60))
        );
        assert!(matches!(
            quantize_rows(GgmlType::Q4_K, &src, 64, None, &mut dst),
            Err(QuantError::Shape { .. })
        ));
        assert_eq!(
            quantize_rows(
                GgmlType::IQ2_XXS,
                &vec![0.0; 256],
                256,
                None,
                &mut [0u8; 66]
            ),
            Err(QuantError::NeedsImatrix {
                ggml_type: GgmlType::IQ2_XXS
            })
        );
        assert_eq!(
            quantize_rows(GgmlType::Q8_1, &src, 64, None, &mut dst),
            Err(QuantError::Unsupported {
                ggml_type: GgmlType::Q8_1,
                operation: "quantize"
            })
        );
        let mut out = vec![0f32; 32];
        assert!(dequantize(GgmlType::Q8_0, &dst[..34], &mut out).is_ok());
        assert!(dequantize(GgmlType::Q8_0, &dst[..33], &mut out).is_err());
    }

    /// Q8_0 through ggml equals the project's own bit-exact Q8_0 encoder (gguf-py's), and dequantizes back.
    #[test]
    fn q8_0_matches_the_project_encoder() {
        let src: Vec<f32> = (0..4096)
            .map(|i| ((i * 7919) % 1000) as f32 / 97.0 - 5.0)
            .collect();
        let mut ours = Vec::new();
        crate::gguf::dtype::encode(GgmlType::Q8_0, &src, 128, &mut ours).unwrap();
        let mut theirs = vec![0u8; ours.len()];
        quantize_rows(GgmlType::Q8_0, &src, 128, None, &mut theirs).unwrap();
        assert_eq!(ours, theirs);
        let mut back = vec![0f32; src.len()];
        dequantize(GgmlType::Q8_0, &theirs, &mut back).unwrap();
        let mut decoded = Vec::new();
        crate::gguf::dtype::decode(GgmlType::Q8_0, &ours, &mut decoded).unwrap();
        assert_eq!(back, decoded);
    }

    /// A tiny f32 Llama whose every matrix has rows of 256 or 512 values (whole blocks of every type), written
    /// with the project's GGUF writer; returns its tensors' f32 data by name.
    fn synthetic_llama(path: &std::path::Path) -> Vec<(String, Vec<u64>, Vec<f32>)> {
        use crate::gguf::value::Array;
        use crate::gguf::{TensorSpec, Value, ValueType, Writer};
        let s = |v: &str| Value::String(v.into());
        let metadata: Vec<(String, Value)> = vec![
            ("general.architecture".into(), s("llama")),
            ("general.type".into(), s("model")),
            ("llama.context_length".into(), Value::U32(64)),
            ("llama.embedding_length".into(), Value::U32(256)),
            ("llama.block_count".into(), Value::U32(1)),
            ("llama.feed_forward_length".into(), Value::U32(512)),
            ("llama.attention.head_count".into(), Value::U32(2)),
            ("llama.attention.head_count_kv".into(), Value::U32(2)),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Value::F32(1e-5),
            ),
            ("llama.rope.dimension_count".into(), Value::U32(128)),
            ("tokenizer.ggml.model".into(), s("llama")),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(Array::new(
                    ValueType::String,
                    (0..256).map(|i| Value::String(format!("t{i}"))).collect(),
                )),
            ),
        ];
        let mut tensors = vec![("token_embd.weight".to_string(), vec![256u64, 256])];
        for (name, dims) in [
            ("attn_norm", vec![256u64]),
            ("attn_q", vec![256, 256]),
            ("attn_k", vec![256, 256]),
            ("attn_v", vec![256, 256]),
            ("attn_output", vec![256, 256]),
            ("ffn_norm", vec![256]),
            ("ffn_gate", vec![256, 512]),
            ("ffn_up", vec![256, 512]),
            ("ffn_down", vec![512, 256]),
        ] {
            tensors.push((format!("blk.0.{name}.weight"), dims));
        }
        tensors.push(("output_norm.weight".into(), vec![256]));
        tensors.push(("output.weight".into(), vec![256, 256]));
        // A deterministic, heavy-tailed spread of values (a few outliers per block, as in real weights).
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            u * u * u * 8.0 + u * 0.1
        };
        let data: Vec<(String, Vec<u64>, Vec<f32>)> = tensors
            .into_iter()
            .map(|(n, d)| {
                let len = d.iter().product::<u64>() as usize;
                let v = (0..len).map(|_| next()).collect();
                (n, d, v)
            })
            .collect();
        let specs: Vec<TensorSpec> = data
            .iter()
            .map(|(n, d, _)| TensorSpec::new(n.clone(), d.clone(), GgmlType::F32))
            .collect();
        let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        let mut w = Writer::new(file, &metadata, &specs).unwrap();
        for (n, _, v) in &data {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_tensor(n, &bytes).unwrap();
        }
        w.finish().unwrap();
        data
    }

    /// Every type ggml quantizes to, through [`quantize_rows`], is byte for byte what llama.cpp's own
    /// `llama_model_quantize` (the library behind `llama-quantize`) writes for the same f32 tensors — each type
    /// forced on every matrix by a tensor-type override, on 2 threads, with an importance matrix for the types
    /// that need one and for Q4_K (to check it is used the same way).
    #[test]
    fn every_type_is_bit_exact_with_llama_quantize() {
        use crate::gguf::GgufFile;
        use std::ffi::CString;
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("f32.gguf");
        let data = synthetic_llama(&input);
        // SAFETY: initialises llama.cpp's backends; idempotent.
        unsafe { sys::llama_backend_init() };
        let types: Vec<GgmlType> = GgmlType::ALL
            .into_iter()
            .filter(|t| can_quantize(*t) && *t != GgmlType::F32)
            .collect();
        assert_eq!(types.len(), 27);
        for ty in types {
            let with_imatrix = needs_imatrix(ty) || ty == GgmlType::Q4_K;
            let imatrix: Vec<(CString, Vec<f32>)> = data
                .iter()
                .filter(|(_, d, _)| d.len() == 2)
                .map(|(n, d, _)| {
                    let w = (0..d[0]).map(|i| 0.5 + (i % 7) as f32).collect();
                    (CString::new(n.as_str()).unwrap(), w)
                })
                .collect();
            let mut im_c: Vec<sys::llama_model_imatrix_data> = imatrix
                .iter()
                .map(|(n, w)| sys::llama_model_imatrix_data {
                    name: n.as_ptr(),
                    data: w.as_ptr(),
                    size: w.len(),
                })
                .collect();
            im_c.push(sys::llama_model_imatrix_data {
                name: std::ptr::null(),
                data: std::ptr::null(),
                size: 0,
            });
            let pattern = CString::new(".*").unwrap();
            let overrides = [
                sys::llama_model_tensor_override {
                    pattern: pattern.as_ptr(),
                    type_: ty.id() as sys::ggml_type,
                },
                sys::llama_model_tensor_override {
                    pattern: std::ptr::null(),
                    type_: 0,
                },
            ];
            let output = dir.path().join(format!("{ty}.gguf"));
            // SAFETY: default parameters by value.
            let mut params = unsafe { sys::llama_model_quantize_default_params() };
            params.nthread = 2;
            params.ftype = sys::LLAMA_FTYPE_MOSTLY_Q8_0;
            params.pure_ = true;
            params.quantize_output_tensor = true;
            params.tt_overrides = overrides.as_ptr();
            if with_imatrix {
                params.imatrix = im_c.as_ptr();
            }
            let (inp, out) = (
                CString::new(input.to_str().unwrap()).unwrap(),
                CString::new(output.to_str().unwrap()).unwrap(),
            );
            // SAFETY: NUL-terminated paths; `params` points at the override and imatrix arrays, both terminated
            // by a null name and alive until the call returns.
            let rc = unsafe { sys::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params) };
            assert_eq!(rc, 0, "llama_model_quantize to {ty} failed");
            let q = GgufFile::open(&output).unwrap();
            let mut checked = 0;
            for (name, dims, values) in data.iter().filter(|(_, d, _)| d.len() == 2) {
                let info = q.tensor(name).unwrap();
                assert_eq!(info.ggml_type, ty, "{name}: llama.cpp chose another type");
                let row_len = dims[0] as usize;
                let mut ours = vec![0u8; info.n_bytes() as usize];
                let im = imatrix
                    .iter()
                    .find(|(n, _)| n.to_str().unwrap() == name)
                    .map(|(_, w)| w.as_slice())
                    .filter(|_| with_imatrix);
                quantize_rows(ty, values, row_len, im, &mut ours).unwrap();
                assert!(
                    ours == q.read_tensor_bytes(name).unwrap(),
                    "{ty} {name}: bytes differ from llama_model_quantize's"
                );
                checked += 1;
            }
            assert_eq!(checked, 9, "{ty}");
        }
    }
}
