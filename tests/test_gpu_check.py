"""benchmarks/gpu_check.py: its quick mode runs on the CPU where cebra is absent (as on the
GPU machine's image) and reports every check; the checks that need a GPU run here with a
simulated out-of-memory; the package imports and fits without cebra."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cebra_halfunet import HalfUNetDecoder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

CPU = torch.device("cpu")
#: The quick plan made smaller still for the checks called in this process: a light decoder
#: stands in for the large body (``large`` is only the latent_dim the checks pass on).
TINY = dataclasses.replace(gpu_check.QUICK, large=16, shape=(8, 16), oom_shape=(8, 16), sweep_batches=(4,), sweep_images=8)


HIDE_CEBRA = """
import sys


class HideCebra:
    \"\"\"Make ``import cebra`` fail as it does where cebra is not installed.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "cebra":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HideCebra())
"""


def without_cebra(folder: Path) -> dict:
    """Environment in which ``import cebra`` fails in every Python process started with it
    (a sitecustomize that hides the package), with one torch thread: quick on a shared CPU."""
    (folder / "sitecustomize.py").write_text(HIDE_CEBRA)
    path = os.pathsep.join([str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # a subprocess that imports torch and scikit-learn
def test_the_package_imports_and_fits_without_cebra(tmp_path):
    code = """
import importlib, pkgutil
import numpy as np
import cebra_halfunet
for module in pkgutil.iter_modules(cebra_halfunet.__path__, "cebra_halfunet."):
    importlib.import_module(module.name)
try:
    import cebra
except ImportError:
    print("cebra absent")
from cebra_halfunet import HalfUNetRegressor
rng = np.random.default_rng(0)
X, y = rng.normal(size=(40, 4)).astype(np.float32), rng.random((40, 8, 16)).astype(np.float32)
print(HalfUNetRegressor(latent_dim=8, max_epochs=1, random_state=0).fit(X, y).predict(X).shape)
"""
    out = subprocess.run([sys.executable, "-c", code], env=without_cebra(tmp_path), cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cebra", "absent", "(40,", "8,", "16)"]


@pytest.mark.slow  # the quick mode in a subprocess: about 30 s on 2 cores
def test_quick_mode_reports_every_check_on_the_cpu_without_cebra(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--out", str(tmp_path)],
                         env=without_cebra(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = (tmp_path / "gpu_report.md").read_text()
    assert "Device: the CPU" in report and "torch " + torch.__version__ in report
    sections = re.findall(r"^## (.+)$", report, re.M)
    assert sections == ["1. Correctness on the device", "2. The default setting", "3. Sweeps", "4. Utilisation", "Summary"]
    checks = re.findall(r"^### (.+)$", report, re.M)
    assert checks == [check.title for _, section in gpu_check.CHECKS for check in section]
    assert len(re.findall(r"^- \*\*PASS\*\* cpu predictions match the CPU's", report, re.M)) == 8
    assert len(re.findall(r"^- \*\*PASS\*\* a decoder fitted on cpu, written with (joblib|save), predicts", report, re.M)) == 2
    assert len(re.findall(r"^- \*\*SKIPPED\*\*: needs a GPU", report, re.M)) == 2
    assert "- **SKIPPED**: quick mode: no torch.compile" in report
    assert "**FAIL**" not in report and "**ERROR**" not in report
    assert "Correctness failures: none." in report
    for header in ["| body | samples | epochs | plain loop (s) | fit (s)", "| frames | batch | float32 (img/s)",
                   "| training | img/s | vs member by member", "| training | img/s | training GFLOP / image"]:
        assert header in report
    assert "not run (budget)" not in report  # the quick plan fits in the default budget


@pytest.fixture
def report(tmp_path):
    return gpu_check.Report(tmp_path / "gpu_report.md", budget_s=600)


@pytest.fixture
def large_batches_run_out_of_memory(monkeypatch):
    """TINY's stand-in for the large body raises CUDA's OutOfMemoryError above 8 samples; the
    absurd batch is 16."""
    forward = HalfUNetDecoder.forward

    def limited(self, x):
        if self.latent_dim == TINY.large and len(x) > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, x)

    monkeypatch.setattr(HalfUNetDecoder, "forward", limited)
    monkeypatch.setattr(gpu_check, "absurd_batch", lambda plan, device: 16)


def test_out_of_memory_checks_pass_on_the_estimators_message(report, large_batches_run_out_of_memory):
    gpu_check.check_out_of_memory(report, TINY, CPU)
    gpu_check.check_grid_search_past_out_of_memory(report, TINY, CPU)
    text = report.path.read_text()
    assert "- **PASS** a real out-of-memory in fit raises the estimator's message" in text
    assert "- **PASS** the GPU memory is released after it" in text
    assert "- **PASS** GridSearchCV(error_score=np.nan) goes on past it" in text
    assert report.failures == []


def test_out_of_memory_check_fails_when_fit_does_not_run_out(report, monkeypatch):
    monkeypatch.setattr(gpu_check, "absurd_batch", lambda plan, device: 4)
    gpu_check.check_out_of_memory(report, TINY, CPU)
    assert report.failures == ["a real out-of-memory in fit raises the estimator's message"]


def test_absurd_batch_counts_the_activations_per_sample():
    small = gpu_check.activation_bytes_per_sample(8, 16, (32, 64), CPU)
    large = gpu_check.activation_bytes_per_sample(8, 16, (64, 128), CPU)
    assert 0 < small and 3 * small < large < 5 * small  # in proportion to the pixels: the weights are not counted


def test_compile_check_times_a_compiled_decoder(report, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    gpu_check.measure_compile(report, dataclasses.replace(TINY, compile=True), CPU)
    assert len(compiled) == 1 and "| torch.compile |" in report.path.read_text()
    assert any(label.startswith("one light decoder, torch.compile") for label in report.rates)


def test_checks_past_the_budget_are_skipped_and_errors_reported(tmp_path):
    report = gpu_check.Report(tmp_path / "gpu_report.md", budget_s=5)

    def broken(report, plan, device):
        raise RuntimeError("boom")

    gpu_check.run_check(report, gpu_check.Check("costly", broken, cost_s=60), TINY, CPU)
    gpu_check.run_check(report, gpu_check.Check("broken", broken, cost_s=0, correctness=True), TINY, CPU)
    text = report.path.read_text()
    assert re.search(r"### costly\n\n- \*\*SKIPPED\*\*: \d+ s of the budget left, it needs about 60 s", text)
    assert "- **ERROR**" in text and "RuntimeError: boom" in text
    assert report.failures == ["broken"]


def test_vectorised_ensemble_computes_what_the_members_compute():
    torch.manual_seed(0)
    members = [HalfUNetDecoder(4, 1, (8, 16), 8) for _ in range(3)]
    x = torch.randn(5, 4)
    expected = torch.stack([member(x) for member in members])
    np.testing.assert_allclose(gpu_check.VectorisedEnsemble(members)(x).detach(), expected.detach(), rtol=1e-5, atol=1e-6)
