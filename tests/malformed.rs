//! Malformed input through the real binaries: safetensors and GGUF files cut at every section boundary, hostile
//! sizes, overlapping offsets, wrong dtypes, NaN and infinity, and outputs that exist or cannot be written. Each
//! must end with exit 2 and a message naming the file and the key or tensor — never a panic, never a partial or
//! temporary file, never a changed previous output — in bounded memory.

use std::path::{Path, PathBuf};

use std::process::Command;

use crate::common::{base_gguf, case_dir};

/// Address space a run on hostile input may use: far above what these small files need, far below what the
/// sizes they claim would take.
const MEMORY_LIMIT: u64 = 1 << 30;

/// `lora-convert ARGS…` as a std Command (common's assert_cmd helpers cannot set the memory limit before exec).
fn lora_convert() -> Command {
    Command::new(assert_cmd::cargo::cargo_bin!("lora-convert"))
}

/// `lora-convert ADAPTER -o OUT`.
fn convert_cmd(adapter: impl AsRef<Path>, out: impl AsRef<Path>) -> Command {
    let mut c = lora_convert();
    c.arg(adapter.as_ref()).arg("-o").arg(out.as_ref());
    c
}

/// `lora-convert ADAPTER -o OUT --base <fixture base `base`>`.
fn convert_on(adapter: impl AsRef<Path>, out: impl AsRef<Path>, base: &str) -> Command {
    let mut c = convert_cmd(adapter, out);
    c.arg("--base").arg(base_gguf(base));
    c
}

/// Run `cmd` with its address space limited to [`MEMORY_LIMIT`]; expect exit 2 and no panic; return stderr.
fn refused(mut cmd: Command) -> String {
    limit_memory(&mut cmd);
    let out = cmd.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{cmd:?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[cfg(target_os = "linux")]
fn limit_memory(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: between fork and exec the closure only calls setrlimit, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: MEMORY_LIMIT,
                rlim_max: MEMORY_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn limit_memory(_: &mut Command) {}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A copy of fixture case `case` in `dir` whose weights file is `weights`.
fn adapter_with(dir: &Path, case: &str, weights: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for f in std::fs::read_dir(case_dir(case)).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name == "adapter_config.json" {
            std::fs::copy(&f, dir.join(name)).unwrap();
        } else if name.ends_with(".safetensors") && !name.starts_with("reference") {
            std::fs::write(dir.join(name), weights).unwrap();
        }
    }
    dir.to_path_buf()
}

// ---- safetensors ----

/// A safetensors file: header JSON and data.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The llama fixture's weights and its header: (bytes, header length, [(key, start, end)] by offset).
fn llama_weights() -> (Vec<u8>, usize, Vec<(String, usize, usize)>) {
    let bytes = std::fs::read(case_dir("llama").join("adapter_model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut tensors: Vec<(String, usize, usize)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            (
                k.clone(),
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            )
        })
        .collect();
    tensors.sort_by_key(|t| t.1);
    (bytes, n, tensors)
}

#[test]
fn safetensors_cut_at_every_section_boundary_is_refused_naming_the_file() {
    let (bytes, n, tensors) = llama_weights();
    let data = 8 + n;
    // inside the length, after it, inside the header, after it, then each tensor's first byte and last byte
    let mut cuts = vec![0, 1, 7, 8, 9, 8 + n / 2, data - 1, data];
    for (_, start, end) in &tensors {
        cuts.extend([data + start + 1, data + end - 1]);
    }
    cuts.extend(
        tensors
            .iter()
            .map(|t| data + t.2)
            .filter(|&c| c < bytes.len()),
    );
    cuts.sort_unstable();
    cuts.dedup();
    assert!(cuts.len() > 2 * tensors.len(), "{cuts:?}");
    let tmp = tempfile::tempdir().unwrap();
    for cut in cuts {
        let dir = adapter_with(
            &tmp.path().join(format!("cut{cut}")),
            "llama",
            &bytes[..cut],
        );
        let out = tmp.path().join("out.gguf");
        let stderr = refused(convert_on(&dir, &out, "llama"));
        let file = dir.join("adapter_model.safetensors");
        assert!(
            stderr.contains(&format!("`{}`", file.display())),
            "cut at {cut}: {stderr}"
        );
        assert!(!out.exists(), "cut at {cut}: output written");
    }
    assert!(
        listing(tmp.path()).iter().all(|n| n.starts_with("cut")),
        "{:?}",
        listing(tmp.path())
    );
}

#[test]
fn safetensors_hostile_sizes_are_refused_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // a header length beyond the file, and beyond any memory
        ("header-huge", {
            let mut b = u64::MAX.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        ("header-beyond-file", {
            let mut b = (1u64 << 40).to_le_bytes().to_vec();
            b.extend_from_slice(b"{}");
            b
        }),
        // a shape whose element count overflows, over 8 bytes of data
        (
            "shape-overflow",
            safetensors(
                &format!(
                    r#"{{"{key}":{{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}}}"#
                ),
                &[0; 8],
            ),
        ),
        // a shape of 2^40 elements claiming data the file does not have
        (
            "shape-huge",
            safetensors(
                &format!(
                    r#"{{"{key}":{{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]}}}}"#
                ),
                &[0; 8],
            ),
        ),
    ];
    for (name, weights) in cases {
        let dir = adapter_with(&tmp.path().join(name), "llama", &weights);
        let out = tmp.path().join("out.gguf");
        let stderr = refused(convert_on(&dir, &out, "llama"));
        let file = dir.join("adapter_model.safetensors");
        assert!(
            stderr.contains(&format!("`{}`", file.display())),
            "{name}: {stderr}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn safetensors_overlapping_offsets_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    let header = format!(
        r#"{{"{a}":{{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}},"{b}":{{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}}}}"#
    );
    let dir = adapter_with(
        &tmp.path().join("overlap"),
        "llama",
        &safetensors(&header, &[0; 24]),
    );
    let stderr = refused(convert_on(&dir, tmp.path().join("out.gguf"), "llama"));
    let file = dir.join("adapter_model.safetensors");
    assert!(
        stderr.contains(&format!("`{}`", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains(b), "{stderr}");
}

#[test]
fn safetensors_factors_of_a_wrong_dtype_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    for dtype in ["F64", "I64", "I32", "U8", "BOOL", "F8_E4M3"] {
        let size = match dtype {
            "F64" | "I64" => 8,
            "I32" => 4,
            _ => 1,
        };
        let header = format!(
            r#"{{"{a}":{{"dtype":"{dtype}","shape":[8,64],"data_offsets":[0,{}]}},"{b}":{{"dtype":"F32","shape":[64,8],"data_offsets":[{},{}]}}}}"#,
            512 * size,
            512 * size,
            512 * size + 2048
        );
        let weights = safetensors(&header, &vec![0; 512 * size + 2048]);
        let dir = adapter_with(&tmp.path().join(dtype), "llama", &weights);
        let stderr = refused(convert_on(&dir, tmp.path().join("out.gguf"), "llama"));
        let file = dir.join("adapter_model.safetensors");
        assert!(
            stderr.contains(&format!(
                "`{}`: tensor `{a}` has dtype {dtype}",
                file.display()
            )),
            "{dtype}: {stderr}"
        );
    }
}

#[test]
fn non_finite_factors_are_refused_naming_the_tensor_and_element() {
    // (case, dtype size, bytes of the value)
    let cases: [(&str, usize, &[u8]); 4] = [
        ("llama", 4, &f32::INFINITY.to_le_bytes()),
        ("llama", 4, &f32::NEG_INFINITY.to_le_bytes()),
        ("llama-bf16", 2, &[0x80, 0x7f]), // +inf
        ("llama-f16", 2, &[0x01, 0x7e]),  // a NaN
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (i, (case, size, value)) in cases.into_iter().enumerate() {
        let file = case_dir(case).join("adapter_model.safetensors");
        let mut bytes = std::fs::read(&file).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let key = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight";
        let start = header[key]["data_offsets"][0].as_u64().unwrap() as usize;
        let element = 5;
        let at = 8 + n + start + element * size;
        bytes[at..at + size].copy_from_slice(value);
        let dir = adapter_with(&tmp.path().join(format!("{i}")), case, &bytes);
        let stderr = refused(convert_on(&dir, tmp.path().join("out.gguf"), "llama"));
        assert!(stderr.contains(key), "{case}: {stderr}");
        assert!(
            stderr.contains(&format!("element {element}")),
            "{case}: {stderr}"
        );
        assert!(!tmp.path().join("out.gguf").exists());
    }
}

// ---- GGUF ----

/// Where each section of a GGUF header ends, and where each tensor's data starts and ends: (offset, what).
fn gguf_boundaries(b: &[u8]) -> Vec<(usize, String)> {
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
    fn skip_value(b: &[u8], p: usize, ty: u32) -> usize {
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap()) as usize;
        match ty {
            0 | 1 | 7 => p + 1,
            2 | 3 => p + 2,
            4..=6 => p + 4,
            10..=12 => p + 8,
            8 => p + 8 + u64_at(p),
            9 => {
                let et = u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
                let n = u64_at(p + 4);
                (0..n).fold(p + 12, |q, _| skip_value(b, q, et))
            }
            _ => panic!("value type {ty}"),
        }
    }
    let mut out = vec![
        (4, "magic".to_string()),
        (8, "version".into()),
        (16, "tensor count".into()),
        (24, "key-value count".into()),
    ];
    let (n_tensors, n_kv) = (u64_at(8), u64_at(16));
    let mut p = 24;
    let mut alignment = 32;
    for i in 0..n_kv {
        let key_len = u64_at(p);
        let key = String::from_utf8_lossy(&b[p + 8..p + 8 + key_len]).into_owned();
        p += 8 + key_len;
        out.push((p, format!("key #{i} `{key}`")));
        let ty = u32_at(p);
        p += 4;
        out.push((p, format!("type of `{key}`")));
        if key == "general.alignment" {
            alignment = u32_at(p) as usize;
        }
        p = skip_value(b, p, ty);
        out.push((p, format!("value of `{key}`")));
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let len = u64_at(p);
        let name = String::from_utf8_lossy(&b[p + 8..p + 8 + len]).into_owned();
        p += 8 + len;
        out.push((p, format!("name `{name}`")));
        let n_dims = u32_at(p) as usize;
        p += 4 + 8 * n_dims;
        out.push((p, format!("dims of `{name}`")));
        let ty = u32_at(p);
        p += 4;
        let offset = u64_at(p);
        p += 8;
        out.push((p, format!("offset of `{name}`")));
        let ne: usize = (0..n_dims)
            .map(|d| u64_at(p - 12 - 8 * (n_dims - d)))
            .product();
        let bytes = match ty {
            0 => ne * 4,
            1 | 30 => ne * 2,
            8 => ne / 32 * 34,
            _ => panic!("tensor type {ty}"),
        };
        tensors.push((name, offset, bytes));
    }
    let data = p.div_ceil(alignment) * alignment;
    for (name, offset, bytes) in tensors {
        out.push((data + offset + 1, format!("first byte of `{name}`")));
        out.push((data + offset + bytes - 1, format!("last byte of `{name}`")));
    }
    out
}

#[test]
fn base_gguf_cut_at_every_section_boundary_is_refused_naming_the_file() {
    let bytes = std::fs::read(base_gguf("llama")).unwrap();
    let cuts = gguf_boundaries(&bytes);
    assert!(cuts.len() > 50, "{}", cuts.len());
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.gguf");
    let out = tmp.path().join("out.gguf");
    for (cut, what) in cuts {
        std::fs::write(&base, &bytes[..cut]).unwrap();
        let mut cmd = convert_cmd(case_dir("llama"), &out);
        cmd.arg("--base").arg(&base);
        let stderr = refused(cmd);
        assert!(
            stderr.contains(&format!("`{}`", base.display())),
            "cut after the {what} ({cut}): {stderr}"
        );
        assert_eq!(listing(tmp.path()), ["base.gguf"], "cut after the {what}");
    }
}

#[test]
fn adapter_gguf_cut_at_every_section_boundary_is_refused_naming_the_file() {
    let bytes = std::fs::read(case_dir("llama").join("reference-converter-q8_0.gguf")).unwrap();
    let cuts = gguf_boundaries(&bytes);
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter.gguf");
    for (cut, what) in cuts {
        std::fs::write(&adapter, &bytes[..cut]).unwrap();
        let mut cmd = lora_convert();
        cmd.arg("inspect")
            .arg(&adapter)
            .arg("--base")
            .arg(base_gguf("llama"));
        let stderr = refused(cmd);
        assert!(
            stderr.contains(&format!("`{}`", adapter.display())),
            "cut after the {what} ({cut}): {stderr}"
        );
    }
}

/// A GGUF header: version 3, `n_tensors`, then `kv` (already encoded key-value pairs, `n_kv` of them), then `rest`.
fn gguf(n_tensors: u64, n_kv: u64, kv: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b.extend(kv);
    b.extend(rest);
    b
}

fn gguf_str(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

#[test]
fn gguf_hostile_sizes_are_refused_in_bounded_memory_naming_the_key_or_tensor() {
    let arch = [
        gguf_str("general.architecture"),
        8u32.to_le_bytes().to_vec(),
        gguf_str("llama"),
    ]
    .concat();
    let tensor = |dims: &[u64], ty: u32, offset: u64| {
        let mut b = gguf_str("blk.0.attn_q.weight.lora_a");
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "tensor-count",
            gguf(u64::MAX, 0, &[], &[]),
            "the tensor count",
        ),
        (
            "tensor-count-2^60",
            gguf(1 << 60, 0, &[], &[0; 64]),
            "the tensor count",
        ),
        (
            "kv-count",
            gguf(0, 1 << 40, &[], &[]),
            "the key-value count",
        ),
        (
            "key-length",
            gguf(0, 1, &(1u64 << 62).to_le_bytes(), &[0; 64]),
            "key #0",
        ),
        (
            "string-length",
            gguf(
                0,
                1,
                &[
                    gguf_str("general.name"),
                    8u32.to_le_bytes().to_vec(),
                    (1u64 << 62).to_le_bytes().to_vec(),
                ]
                .concat(),
                &[0; 64],
            ),
            "`general.name`",
        ),
        (
            "array-length",
            gguf(
                0,
                1,
                &[
                    gguf_str("tokenizer.ggml.tokens"),
                    9u32.to_le_bytes().to_vec(),
                    8u32.to_le_bytes().to_vec(),
                    (1u64 << 40).to_le_bytes().to_vec(),
                ]
                .concat(),
                &[0; 64],
            ),
            "`tokenizer.ggml.tokens`",
        ),
        (
            "dims-overflow",
            gguf(1, 1, &arch, &tensor(&[1 << 40, 1 << 40], 0, 0)),
            "`blk.0.attn_q.weight.lora_a`",
        ),
        (
            "data-beyond-file",
            gguf(
                1,
                1,
                &arch,
                &[tensor(&[1 << 20, 1 << 10], 0, 0), vec![0; 64]].concat(),
            ),
            "`blk.0.attn_q.weight.lora_a`",
        ),
        (
            "too-many-dims",
            gguf(1, 1, &arch, &tensor(&[1, 1, 1, 1, 1], 0, 0)),
            "`blk.0.attn_q.weight.lora_a`",
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes, subject) in cases {
        let path = tmp.path().join(format!("{name}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        let mut cmd = lora_convert();
        cmd.arg("inspect").arg(&path);
        let stderr = refused(cmd);
        assert!(
            stderr.contains(&format!("`{}`", path.display())),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(subject), "{name}: {stderr}");
        // the same file given as the base of a conversion
        let mut cmd = convert_cmd(case_dir("llama"), tmp.path().join("out.gguf"));
        cmd.arg("--base").arg(&path);
        let stderr = refused(cmd);
        assert!(
            stderr.contains(&format!("`{}`", path.display())),
            "{name} as base: {stderr}"
        );
    }
}

#[test]
fn gguf_overlapping_offsets_are_refused_naming_the_tensor() {
    // Two tensor infos of 32 f32 each, the second at the first one's offset.
    let tmp = tempfile::tempdir().unwrap();
    let arch = [
        gguf_str("general.architecture"),
        8u32.to_le_bytes().to_vec(),
        gguf_str("llama"),
    ]
    .concat();
    let info = |name: &str, offset: u64| {
        let mut b = gguf_str(name);
        b.extend(1u32.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(offset.to_le_bytes());
        b
    };
    let mut rest = [info("a.lora_a", 0), info("a.lora_b", 0)].concat();
    let header_len = 24 + arch.len() + rest.len();
    rest.extend(vec![0; header_len.div_ceil(32) * 32 - header_len + 256]);
    let path = tmp.path().join("overlap.gguf");
    std::fs::write(&path, gguf(2, 1, &arch, &rest)).unwrap();
    let mut cmd = lora_convert();
    cmd.arg("inspect").arg(&path);
    let stderr = refused(cmd);
    assert!(
        stderr.contains(&format!("`{}`", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("`a.lora_b`"), "{stderr}");
}

// ---- outputs ----

/// A previous output (any bytes) and the directory holding it.
fn previous_output(tmp: &Path) -> (PathBuf, Vec<u8>) {
    let out = tmp.join("adapter.gguf");
    let previous = b"previous output, not to be touched".to_vec();
    std::fs::write(&out, &previous).unwrap();
    (out, previous)
}

#[test]
fn an_existing_output_is_kept_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, previous) = previous_output(tmp.path());
    let stderr = refused(convert_on(case_dir("llama"), &out, "llama"));
    assert!(stderr.contains(&format!("`{}`", out.display())), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), previous);
    assert_eq!(listing(tmp.path()), ["adapter.gguf"]);
}

#[test]
fn a_refused_conversion_with_force_keeps_the_existing_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, previous) = previous_output(tmp.path());
    // refused by the weights (NaN), by the configuration (DoRA), by a tensor (a full weight)
    for case in ["nan", "dora", "modules-to-save"] {
        let mut cmd = convert_on(case_dir(case), &out, "llama");
        cmd.arg("--force");
        let stderr = refused(cmd);
        assert!(
            stderr.contains(&case_dir(case).display().to_string()),
            "{case}: {stderr}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), previous, "{case}");
        assert_eq!(listing(tmp.path()), ["adapter.gguf"], "{case}");
    }
}

#[test]
fn force_replaces_an_existing_output_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let (out, _) = previous_output(tmp.path());
    for (dir, force) in [(tmp.path(), true), (fresh.path(), false)] {
        let mut cmd = convert_on(case_dir("llama"), dir.join("adapter.gguf"), "llama");
        cmd.args(["--outtype", "f32"]);
        if force {
            cmd.arg("--force");
        }
        assert!(cmd.output().unwrap().status.success());
    }
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fresh.path().join("adapter.gguf")).unwrap()
    );
    assert_eq!(listing(tmp.path()), ["adapter.gguf"]);
}

#[test]
fn an_output_that_cannot_be_written_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let dir = tmp.path().join("a-dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"y").unwrap();
    let outs = [
        file.join("adapter.gguf"),                       // the parent is a file
        tmp.path().join("missing").join("adapter.gguf"), // the parent does not exist
        PathBuf::from("/proc/lora-gguf-test.gguf"),      // not writable, even by root
        dir.clone(),                                     // a directory
    ];
    for out in outs {
        for force in [false, true] {
            let mut cmd = convert_on(case_dir("llama"), &out, "llama");
            if force {
                cmd.arg("--force");
            }
            let stderr = refused(cmd);
            assert!(
                stderr.contains(&format!("`{}`", out.display())),
                "{} (force {force}): {stderr}",
                out.display()
            );
        }
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert_eq!(listing(&dir), ["inside"]);
    assert_eq!(listing(tmp.path()), ["a-dir", "a-file"]);
}

#[test]
fn the_manifest_of_a_refused_conversion_does_not_replace_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, previous) = previous_output(tmp.path());
    let manifest = tmp.path().join("manifest.json");
    let mut cmd = convert_on(case_dir("nan"), &out, "llama");
    cmd.arg("--force").arg("--manifest").arg(&manifest);
    refused(cmd);
    assert_eq!(std::fs::read(&out).unwrap(), previous);
    assert_eq!(listing(tmp.path()), ["adapter.gguf", "manifest.json"]);
    let _: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).expect("the manifest is JSON");
}

#[test]
fn finite_factors_beyond_the_output_type_are_refused_naming_the_tensor() {
    // 1e7 is beyond f16 (65504); as q8_0 its block scale 1e7 / 127 is too.
    let file = case_dir("llama").join("adapter_model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let key = "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight";
    let start = header[key]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + n + start + 5 * 4;
    bytes[at..at + 4].copy_from_slice(&1e7f32.to_le_bytes());
    let tmp = tempfile::tempdir().unwrap();
    let dir = adapter_with(&tmp.path().join("big"), "llama", &bytes);
    let weights = dir.join("adapter_model.safetensors");
    // q8_0 names the first value of the block whose scale overflows
    for (outtype, index) in [("f16", 5), ("q8_0", 0)] {
        let out = tmp.path().join("out.gguf");
        let mut cmd = convert_on(&dir, &out, "llama");
        cmd.args(["--outtype", outtype]);
        assert_eq!(
            refused(cmd),
            format!(
                "error: `{}`: module `model.layers.1.mlp.up_proj` → `blk.1.ffn_up.weight.lora_a`: value #{index} is \
                 too large for {outtype} once scaled (it would be written as infinity); convert with `--outtype f32`\n",
                weights.display()
            ),
        );
        assert!(!out.exists(), "{outtype}: output written");
        assert_eq!(listing(tmp.path()), ["big"], "{outtype}");
    }
    // f32 holds it: the same adapter converts.
    let out = tmp.path().join("out.gguf");
    let mut cmd = convert_on(&dir, &out, "llama");
    cmd.args(["--outtype", "f32"]);
    assert!(cmd.status().unwrap().success());
}

/// fixtures/cases/llama's reference adapter rewritten with `blk.0.attn_q.weight`'s `lora_a` changed by `change`
/// (its dims, type and bytes).
fn llama_adapter_with(
    out: &Path,
    change: impl Fn(&mut Vec<u64>, &mut lora_gguf::gguf::GgmlType, &mut Vec<u8>),
) {
    use lora_gguf::gguf::{GgufFile, TensorSpec, Writer};
    let f = GgufFile::open(&case_dir("llama").join("reference-converter-f32.gguf")).unwrap();
    let tensors: Vec<_> = f
        .tensors
        .iter()
        .map(|t| {
            let (mut dims, mut ty) = (t.dims.clone(), t.ggml_type);
            let mut bytes = f.read_tensor_bytes(&t.name).unwrap();
            if t.name == "blk.0.attn_q.weight.lora_a" {
                change(&mut dims, &mut ty, &mut bytes);
            }
            (TensorSpec::new(t.name.clone(), dims, ty), bytes)
        })
        .collect();
    let specs: Vec<TensorSpec> = tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = Writer::new(std::fs::File::create(out).unwrap(), &f.metadata, &specs).unwrap();
    for (spec, bytes) in &tensors {
        w.write_tensor(&spec.name, bytes).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn adapters_llama_cpp_would_crash_on_are_refused_by_the_pre_check() {
    use lora_gguf::gguf::GgmlType;
    let tmp = tempfile::tempdir().unwrap();
    // lora_a [64, 8] as [64, 8, 2]: llama.cpp compares ne[0] and ne[1] only, then ggml_mul_mat asserts.
    let extra_dim = tmp.path().join("extra-dim.gguf");
    llama_adapter_with(&extra_dim, |dims, _, bytes| {
        dims.push(2);
        bytes.extend_from_within(..);
    });
    // lora_a as I32 (same size as F32): ggml's CPU backend has no dot product for it.
    let int_type = tmp.path().join("i32.gguf");
    llama_adapter_with(&int_type, |_, ty, _| *ty = GgmlType::I32);
    let cases = [
        (
            &extra_dim,
            "blk.0.attn_q.weight",
            "lora_a ne [64, 8, 2] and lora_b ne [8, 64] have more dimensions than the base tensor ne [64, 64]: \
             llama.cpp loads them and aborts at the first decode (ggml_mul_mat)",
        ),
        (
            &int_type,
            "blk.0.attn_q.weight.lora_a",
            "is i32, which llama.cpp loads but cannot multiply (ggml's CPU backend has no dot product for it): it \
             would crash at the first decode; reconvert with --outtype f32, f16, bf16 or q8_0",
        ),
    ];
    for (file, subject, message) in cases {
        let out = lora_convert()
            .arg("inspect")
            .arg(file)
            .arg("--base")
            .arg(base_gguf("llama"))
            .arg("--json")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", file.display());
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["fit"]["fits"], false);
        assert_eq!(
            j["fit"]["mismatches"],
            serde_json::json!([{"subject": subject, "message": message}]),
            "{}",
            file.display()
        );
    }
}
