"""The installed lora-gguf package: both binaries on the venv's PATH and the `lora_gguf` module, on the fixtures.

Run by tools/test-wheel.sh with the interpreter of a fresh venv the wheel was installed into (never the source
tree). Needs LORA_GGUF_TEST_MODEL (the Gemma 3 270M Q4_K_M test model) for the validator tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import unittest
from pathlib import Path

import lora_gguf

REPO = Path(__file__).resolve().parents[2]
CASES = REPO / "fixtures" / "cases"
LLAMA_BASE = REPO / "fixtures" / "bases" / "llama" / "base.gguf"
GEMMA_ADAPTER = REPO / "fixtures" / "gemma-lora" / "adapter"
SCRIPTS = Path(sysconfig.get_path("scripts"))


def cargo_version() -> str:
    text = (REPO / "Cargo.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


class Installed(unittest.TestCase):
    def test_module_and_binaries_come_from_the_venv(self):
        module = Path(lora_gguf.__file__).resolve()
        self.assertTrue(module.is_relative_to(Path(sys.prefix).resolve()), module)
        for name in lora_gguf.BINARIES:
            self.assertEqual(lora_gguf.find_binary(name), SCRIPTS / name)

    def test_one_version_everywhere(self):
        version = cargo_version()
        self.assertEqual(lora_gguf.__version__, version)
        for name in lora_gguf.BINARIES:
            out = subprocess.run([SCRIPTS / name, "--version"], capture_output=True, text=True, check=True).stdout
            self.assertEqual(out.strip(), f"{name} {version}")

    def test_binaries_are_on_the_venv_path(self):
        # As a user of the venv runs them: by name, from PATH with the venv's bin first.
        env = dict(os.environ, PATH=f"{SCRIPTS}{os.pathsep}/usr/bin:/bin")
        for name in lora_gguf.BINARIES:
            out = subprocess.run([name, "--help"], capture_output=True, text=True, env=env, check=True).stdout
            self.assertIn("Usage:", out)

    def test_ci_gate_module_is_installed(self):
        out = subprocess.run([sys.executable, "-m", "lora_gguf.ci", "--help"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("[LORA_BASE]", out.stdout)

    def test_missing_bin_dir_override_is_named(self):
        old = os.environ.get("LORA_GGUF_BIN_DIR")
        os.environ["LORA_GGUF_BIN_DIR"] = "/nonexistent-bin"
        try:
            with self.assertRaisesRegex(FileNotFoundError, "LORA_GGUF_BIN_DIR is `/nonexistent-bin`"):
                lora_gguf.find_binary("lora-convert")
        finally:
            if old is None:
                del os.environ["LORA_GGUF_BIN_DIR"]
            else:
                os.environ["LORA_GGUF_BIN_DIR"] = old


class Convert(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_convert_matches_the_cli_and_records_a_manifest(self):
        out = self.dir / "llama.gguf"
        r = lora_gguf.convert(CASES / "llama", out, base=LLAMA_BASE, verify=True, manifest=self.dir / "m.json")
        self.assertEqual(r.output, out)
        self.assertEqual(r.size, out.stat().st_size)
        self.assertIn("verified  14 pairs: every ΔW equals PEFT's exactly", r.summary)
        self.assertEqual((r.manifest["schema"], r.manifest["status"]), ("lora-gguf.manifest/1", "written"))
        self.assertEqual(len(r.manifest["tensors"]), 28)
        # The module adds nothing of its own: the same bytes as the binary run directly.
        cli = self.dir / "cli.gguf"
        subprocess.run(
            [SCRIPTS / "lora-convert", CASES / "llama", "-o", cli, "--base", LLAMA_BASE],
            check=True,
            capture_output=True,
        )
        self.assertEqual(out.read_bytes(), cli.read_bytes())

    def test_refusal_raises_with_the_message_and_writes_nothing(self):
        out = self.dir / "dora.gguf"
        with self.assertRaises(lora_gguf.LoraGgufError) as caught:
            lora_gguf.convert(CASES / "dora", out, base=LLAMA_BASE)
        self.assertEqual(caught.exception.status, 2)
        self.assertIn("use_dora", caught.exception.message)
        self.assertFalse(out.exists())

    def test_inspect_directory_and_written_adapter(self):
        d = lora_gguf.inspect(CASES / "llama", base=LLAMA_BASE)
        self.assertEqual(
            (d["schema"], d["kind"], d["convertible"], d["fits"]), ("lora-gguf.inspect/1", "adapter_dir", True, True)
        )
        self.assertEqual(len(d["modules"]), 14)
        out = self.dir / "llama.gguf"
        lora_gguf.convert(CASES / "llama", out, base=LLAMA_BASE)
        g = lora_gguf.inspect(out, base=LLAMA_BASE)
        self.assertEqual(g["kind"], "gguf_adapter")
        self.assertEqual(len(g["tensors"]), 28)
        self.assertEqual((g["fit"]["fits"], g["fit"]["mismatches"]), (True, []))

    def test_inspect_of_a_refused_adapter_is_a_report(self):
        d = lora_gguf.inspect(CASES / "dora")
        self.assertFalse(d["convertible"])
        self.assertTrue(any("use_dora" in json.dumps(r) for r in d["refusals"]), d["refusals"])

    def test_inspect_of_nothing_raises(self):
        with self.assertRaisesRegex(lora_gguf.LoraGgufError, "does not exist"):
            lora_gguf.inspect(self.dir / "missing")


class Validate(unittest.TestCase):
    """The trained Gemma adapter on the real Q4_K_M test model, with a handful of prompts and two scales."""

    @classmethod
    def setUpClass(cls):
        if not os.environ.get("LORA_GGUF_TEST_MODEL"):
            raise RuntimeError("set LORA_GGUF_TEST_MODEL to the test model (tools/fetch-test-model.sh prints it)")
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = Path(os.environ["LORA_GGUF_TEST_MODEL"])
        cls.adapter = Path(cls.tmp.name) / "gemma-lora.gguf"
        lora_gguf.convert(GEMMA_ADAPTER, cls.adapter, base=cls.model)
        cls.prompts = [REPO / "fixtures/gemma-lora/target.jsonl", REPO / "fixtures/gemma-lora/control-smoke.jsonl"]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def run_validate(self, *extra: str, adapter=None) -> lora_gguf.ValidateResult:
        return lora_gguf.validate(
            self.model, adapter or self.adapter, prompts=self.prompts, scales=[0, 1], max_tokens=12, extra_args=extra
        )

    def test_trained_adapter_passes(self):
        r = self.run_validate()
        self.assertTrue(r.passed, r.failures)
        self.assertEqual(r.exit_status, 0)
        self.assertEqual(r.report["schema_version"], 1)
        self.assertEqual(r.report["engine"]["scale_zero_max_abs_logit_delta"], 0.0)
        self.assertEqual([s["scale"] for s in r.report["per_scale"]], [0.0, 1.0])
        self.assertGreater(r.report["per_scale"][1]["target_kl_mean"], 0.5)

    def test_gate_failure_is_a_result_not_an_exception(self):
        r = self.run_validate(adapter=(self.adapter, 4.0))
        self.assertFalse(r.passed)
        self.assertEqual(r.exit_status, 1)
        self.assertTrue({f["metric"] for f in r.failures} & {"kl_mean", "top1_agreement"}, r.failures)

    def test_adapter_for_another_base_raises_exit_2(self):
        other = Path(self.tmp.name) / "llama.gguf"
        lora_gguf.convert(CASES / "llama", other, base=LLAMA_BASE)
        with self.assertRaises(lora_gguf.LoraGgufError) as caught:
            self.run_validate(adapter=other)
        self.assertEqual(caught.exception.status, 2)
        self.assertIn("does not fit the base", caught.exception.message)


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    # The plain closing line CI reads (see .ci/run).
    print(f"python: {result.testsRun - failed} passed, {failed} failed")
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
