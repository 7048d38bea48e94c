//! The support table (src/arch/support.rs): the README shows exactly it, every fixture it names exists and says
//! what the table claims, and `inspect` reports the adapter's family entry.

use crate::common::*;
use lora_gguf::arch::support::{self, Status};

const BEGIN: &str = "<!-- support table: rendered from src/arch/support.rs, checked by tests/support_table.rs -->\n";
const END: &str = "<!-- end of support table -->";

#[test]
fn readme_shows_the_support_table() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find(BEGIN)
        .expect("README has the support table's start marker")
        + BEGIN.len();
    let len = readme[start..]
        .find(END)
        .expect("README has the end marker");
    assert_eq!(
        &readme[start..start + len],
        support::markdown_table(),
        "README's support table differs from src/arch/support.rs"
    );
}

/// A verified feature's fixtures convert and have a logits test (an ok case, or one refused by default for pairs
/// llama.cpp ignores, whose logits test converts it with those pairs dropped); a refused feature's fixtures are
/// refused cases.
#[test]
fn every_fixture_in_the_support_table_backs_its_status() {
    for s in support::SUPPORT {
        for f in s.features {
            for fixture in f.fixtures {
                let info = case_info(fixture);
                let expect = info["expect"].as_str().unwrap();
                let ok = match f.status {
                    Status::Verified => expect == "ok" || info.get("no_effect").is_some(),
                    Status::Refused => expect == "refused",
                    Status::Mapped => false,
                };
                assert!(
                    ok,
                    "{}: `{}` is {:?} but fixture {fixture} expects {expect}",
                    s.arch, f.feature, f.status
                );
            }
        }
    }
}

#[test]
fn inspect_reports_the_support_of_the_family() {
    let out = lora_convert()
        .args(["inspect", "--json", "--base"])
        .arg(base_gguf("qwen35moe-fused"))
        .arg(case_dir("qwen35moe-fused"))
        .assert()
        .success();
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let support = &report["support"];
    assert_eq!(support["arch"], "qwen35moe");
    assert_eq!(support["status"], "verified");
    let features = support["features"].as_array().unwrap();
    assert!(
        features.iter().any(|f| f["status"] == "verified"
            && f["fixtures"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == "qwen35moe-fused")),
        "{support}"
    );
    let text = lora_convert()
        .arg("inspect")
        .arg(case_dir("qwen35moe-fused"))
        .arg("--base")
        .arg(base_gguf("qwen35moe-fused"))
        .assert()
        .success();
    let text = String::from_utf8_lossy(&text.get_output().stdout).into_owned();
    assert!(
        text.contains(
            "support   verified (features below checked against PyTorch in llama.cpp by fixtures)\n"
        ) && text.contains(
            "          verified: experts on a --fuse-gate-up-exps base (ffn_gate_up_exps) (qwen35moe-fused)\n"
        ),
        "{text}"
    );
}
