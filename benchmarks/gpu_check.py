"""The GPU check: correctness on the device, the default setting's speed, sweeps and
utilisation, in one command that keeps to a time budget (issue 24).

The one device call (the GPU image has torch 2.11 + CUDA 13 and no cebra; run it from the
repository root, with ``timeout_s`` about 450 so that a 15-minute lease leaves time for a rerun
with a smaller ``--budget-s``)::

    set -o pipefail; PYTHONPATH=. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --budget-s 360 --out $OUT 2>&1 | tee $OUT/gpu_check.log

Nothing needs to be carried: the check imports only torch, numpy, scikit-learn, joblib,
safetensors, tqdm and their dependencies (all in that image) and the package from the source
tree; no matplotlib, no cebra. Its report then goes into ``benchmarks/RESULTS.md`` ("GPU
check") and the README's "On a GPU" table.

Quick mode, on the CPU at tiny sizes in under a minute (``tests/test_gpu_check.py`` runs it)::

    python benchmarks/gpu_check.py --quick --out /tmp/gpu_check

``DIR/gpu_report.md`` grows section by section (appended and flushed after each check), so a
run cut off by its time limit still reports what it did; a check that does not fit in what is
left of the budget is reported as skipped. Checks, most important first:

1. correctness: device predictions against CPU predictions (float32 with TF32 allowed, bf16,
   channels_last; relative error <= 1e-3 in float32, <= 1e-2 in bf16); ``predict`` from 8 threads
   at once equals serial calls bit for bit and leaves the weights unchanged; a decoder fitted on the
   device, pickled with joblib and saved with ``save``, predicts in a subprocess that sees no
   GPU; a real out-of-memory in ``fit`` gives the estimator's message and releases the GPU
   memory; ``GridSearchCV(error_score=np.nan)`` goes on past it;
2. the default setting: ``fit`` against a plain PyTorch loop doing the same work (light and
   large body), prediction throughput, peak GPU memory; one epoch over 10,000 frames;
3. sweeps as time allows: float32 / bf16 autocast / channels_last at several batch and frame
   sizes; the ensemble member by member against vectorised (``torch.func.vmap``);
   ``torch.compile``; fp16 with a gradient scaler;
4. utilisation: training images/s x 3 x forward FLOPs against a bf16 matrix product timed
   first, in the same run.

Targets (issue 24, on one H100, default setting): ``fit`` >= 0.95 of the plain loop; the light
body at 128x256 >= 25% of the bf16 matrix-product rate; one epoch over 10,000 frames at
128x256 < 15 s. Correctness failures make the exit status 1; missed targets do not.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import gc
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import joblib
import numpy as np
import torch
from sklearn.model_selection import GridSearchCV
from torch.func import functional_call, stack_module_state
from torch.utils.flop_counter import FlopCounterMode

from _results import machine
from cebra_halfunet import HalfUNetDecoder, HalfUNetRegressor
from cebra_halfunet.networks import DecoderEnsemble


@dataclass(frozen=True)
class Plan:
    """Sizes of every check: :data:`FULL` on a GPU, :data:`QUICK` on a CPU in under a minute."""

    embedding: int = 32
    light: int = 512  # latent_dim of the light body (the default)
    large: int = 1024  # latent_dim from which the large body is used
    correctness_shape: tuple[int, int] = (64, 128)
    correctness_samples: int = 256
    shape: tuple[int, int] = (128, 256)  # frames of the default-setting checks
    light_samples: int = 2048
    large_samples: int = 1024
    long_epochs: int = 3
    repeats: int = 3
    epoch_samples: int = 10_000
    oom_shape: tuple[int, int] = (256, 512)
    sweep_shapes: tuple[tuple[int, int], ...] = ((128, 256), (64, 128), (256, 512))
    sweep_batches: tuple[int, ...] = (32, 128, 512)
    sweep_images: int = 2048  # images per timed repeat at 128x256, scaled by the pixels at other sizes
    ensemble_size: int = 3
    compile: bool = True
    matmul_size: int = 8192


FULL = Plan()
QUICK = Plan(
    light=32, ensemble_size=2, correctness_shape=(16, 32), correctness_samples=64, shape=(16, 32), light_samples=64,
    large_samples=16, long_epochs=2, repeats=1, epoch_samples=128, oom_shape=(16, 32),
    sweep_shapes=((16, 32), (8, 16)), sweep_batches=(8, 32), sweep_images=64, compile=False, matmul_size=256,
)

#: Plain training variants of the sweep: autocast dtype (None: float32), channels_last, and
#: cudnn.benchmark (cuDNN times its algorithms on the first batch of each shape; off by default).
VARIANTS = {
    "float32": (None, False, False),
    "bf16 autocast": (torch.bfloat16, False, False),
    "channels_last": (None, True, False),
    "bf16 + channels_last": (torch.bfloat16, True, False),
    "bf16 + channels_last + cudnn.benchmark": (torch.bfloat16, True, True),
}


class Skipped(Exception):
    """A check that cannot run here; its message says why."""


# ----------------------------------------------------------------------------- report
class Report:
    """The Markdown report, appended to and flushed after every line written (and echoed to
    stdout), so that a run stopped at its time limit leaves what it measured so far.

    ``rates`` collects training images/s with forward GFLOPs per image for the utilisation
    section; ``failures`` the correctness checks that failed.
    """

    def __init__(self, path: Path, budget_s: float):
        self.path, self.deadline = path, time.monotonic() + budget_s
        self.reserve_s = 0.0  # budget the checks after the current one need
        self.rates: dict[str, tuple[float, float]] = {}
        self.failures: list[str] = []
        self.matmul_tflops = float("nan")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def remaining(self) -> float:
        """Seconds left of the budget."""
        return self.deadline - time.monotonic()

    def spare(self) -> float:
        """Seconds the current check may use beyond its own minimum, leaving the later checks theirs."""
        return self.remaining() - self.reserve_s

    def add(self, text: str = "") -> None:
        with self.path.open("a") as file:
            file.write(text + "\n")
        print(text, flush=True)

    def section(self, title: str) -> None:
        self.add(f"\n## {title}\n")

    def table(self, header: list[str], rows: list[list], notes: str = "") -> None:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
        self.add("\n".join(lines) + "\n" + (f"\n{notes}\n" if notes else ""))

    def verdict(self, name: str, passed: bool, detail: str, target: bool = False) -> None:
        """One result line: PASS/FAIL for a correctness check, MET/MISSED for a speed target."""
        word = ("MET" if passed else "MISSED") if target else ("PASS" if passed else "FAIL")
        if not (passed or target):
            self.failures.append(name)
        self.add(f"- **{word}** {name}: {detail}")


class Check(NamedTuple):
    title: str
    function: Callable
    cost_s: float  # about what it needs on an H100; skipped when less is left
    correctness: bool = False
    needs_gpu: bool = False


def run_check(report: Report, check: Check, plan: Plan, device: torch.device) -> None:
    """Run one check within the budget; an exception is reported and the run goes on."""
    report.add(f"### {check.title}\n")
    if check.needs_gpu and device.type != "cuda":
        report.add("- **SKIPPED**: needs a GPU (a real out-of-memory cannot happen on the CPU; "
                   "tests/test_out_of_memory.py and tests/test_gpu_check.py simulate one).")
        return
    if report.remaining() < check.cost_s:
        report.add(f"- **SKIPPED**: {report.remaining():.0f} s of the budget left, it needs about {check.cost_s:.0f} s.")
        return
    started = time.monotonic()
    try:
        check.function(report, plan, device)
    except Skipped as reason:
        report.add(f"- **SKIPPED**: {reason}")
    except Exception:
        if check.correctness:
            report.failures.append(check.title)
        report.add(f"- **ERROR**:\n\n```\n{traceback.format_exc(limit=-8)}```")
    finally:
        release(device)
    report.add(f"\n({time.monotonic() - started:.1f} s)")


# ------------------------------------------------------------------ timing and memory
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def median_seconds(
    calls: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 0
) -> dict[str, float]:
    """Median wall time of each call over ``repeats`` interleaved rounds, after ``warmup``
    untimed rounds; the device is synchronized before and after each call, since its work is
    asynchronous."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory_mib(device: torch.device, call: Callable[[], object]) -> float | None:
    """Peak GPU memory allocated by tensors during ``call()``, in MiB; None on the CPU."""
    if device.type != "cuda":
        call()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def gpu_memory_mib(device: torch.device) -> tuple[float, float]:
    """(allocated, reserved) GPU memory of this process in MiB; zeros on the CPU."""
    if device.type != "cuda":
        return 0.0, 0.0
    return torch.cuda.memory_allocated(device) / 2**20, torch.cuda.memory_reserved(device) / 2**20


@contextmanager
def backend_flags(backend, **values):
    """Set flags of a ``torch.backends`` module (e.g. ``torch.backends.cudnn``) within a block."""
    saved = {name: getattr(backend, name) for name in values}
    for name, value in values.items():
        setattr(backend, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(backend, name, value)


def matmul_tflops(device: torch.device, size: int) -> float:
    """bf16 matrix-product rate, TFLOP/s: median of 5 rounds of 10 products of random
    ``size x size`` matrices, after a warm-up round."""
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator) for _ in range(2))
    out = torch.empty_like(a)
    seconds = median_seconds({"matmul": lambda: [torch.matmul(a, b, out=out) for _ in range(10)]}, device, 5, warmup=1)
    return 10 * 2 * size**3 / seconds["matmul"] / 1e12


@functools.lru_cache
def forward_gflops(embedding: int, latent: int, shape: tuple[int, int]) -> float:
    """Forward GFLOPs per image of one HalfUNetDecoder (multiply-add = 2), as model_size.py counts them."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        HalfUNetDecoder(embedding, 1, shape, latent)(torch.randn(1, embedding))
    return counter.get_total_flops() / 1e9


# --------------------------------------------------------------------------- data
def make_data(
    n: int, shape: tuple[int, int], embedding: int, seed: int = 0, dtype=np.uint8
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(n, embedding)`` float32 and frames ``(n, 1, H, W)`` that depend on them:
    a random linear map of the embedding to a coarse 4 x 8 grid of brightness, enlarged to
    ``(H, W)``; uint8 (0-255) or float32 (0-1)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, embedding)).astype(np.float32)
    coarse = 1 / (1 + np.exp(-X @ rng.normal(size=(embedding, 32)) / np.sqrt(embedding)))
    coarse = (coarse * 255).astype(np.uint8) if dtype == np.uint8 else coarse.astype(np.float32)
    height, width = shape
    frames = coarse.reshape(n, 1, 4, 8).repeat(-(-height // 4), axis=2).repeat(-(-width // 8), axis=3)
    return X, np.ascontiguousarray(frames[:, :, :height, :width])


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    """||value - reference|| / ||reference|| in float64 (NaN anywhere gives NaN)."""
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


# ------------------------------------------------------------- plain PyTorch training
def train_steps(model: Callable, optimizer, X: torch.Tensor, Y: torch.Tensor, batches, device: torch.device,
                autocast: torch.dtype | None = None, scaler=None) -> torch.Tensor:
    """Plain training steps on the index tensors ``batches`` of ``X`` ``(N, D)`` and uint8
    frames ``Y`` ``(N, C, H, W)``: forward (under autocast when given), L1 against the frames
    scaled to [0, 1] (an ensemble's ``(K, B, C, H, W)`` output scores each member),
    backward, optimizer step (through ``scaler`` when given). Returns the last loss."""
    for index in batches:
        with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            output = model(X[index])
        loss = (output.float() - Y[index].float() / 255).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    return loss.detach()


def plain_training(module: torch.nn.Module, X: np.ndarray, Y: np.ndarray, epochs: int, batch_size: int, lr: float,
                   weight_decay: float, device: torch.device, autocast: torch.dtype | None = None,
                   memory_format: torch.memory_format = torch.contiguous_format) -> None:
    """What ``fit`` does, as a plain loop on a copy of ``module`` (on the CPU, as ``fit``'s
    network starts): data moved to the device once, a shuffled permutation per epoch, AdamW,
    L1 on uint8 frames scaled to [0, 1], in the fit's precision and memory format. No
    validation, no weight average, no learning-rate schedule, no checks of the input."""
    module = copy.deepcopy(module).to(device, memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    X, Y = torch.from_numpy(X).to(device), torch.from_numpy(Y).to(device)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=generator).to(device)
        train_steps(module, optimizer, X, Y, order.split(batch_size), device, autocast)


@torch.no_grad()
def plain_prediction(module: torch.nn.Module, X: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """What ``predict`` does for uint8 frames, as a plain loop: batches to the device, the
    output rounded to uint8 and copied into one preallocated array."""
    module.to(device).eval()
    out = np.empty((len(X), *module(torch.from_numpy(X[:1]).to(device)).shape[1:]), dtype=np.uint8)
    for start in range(0, len(X), batch_size):
        batch = module(torch.from_numpy(X[start : start + batch_size]).to(device))
        out[start : start + batch_size] = (batch * 255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    return out


class VectorisedEnsemble:
    """Decoders of one architecture run as one: their weights stacked
    (``torch.func.stack_module_state``) and the forward pass vectorised over them with
    ``torch.func.vmap``, so that each layer runs once for all members (convolutions become
    grouped convolutions). Called like ``DecoderEnsemble`` in training mode:
    ``(B, D) -> (K, B, C, H, W)``; ``parameters`` are the stacked weights to optimise."""

    def __init__(self, members: list[torch.nn.Module]):
        stacked, self.buffers = stack_module_state(members)
        self.parameters = list(stacked.values())
        self.names = list(stacked)
        template = copy.deepcopy(members[0]).to("meta")
        self._forward = torch.vmap(lambda p, b, x: functional_call(template, (p, b), (x,)), in_dims=(0, 0, None))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(dict(zip(self.names, self.parameters)), self.buffers, x)


class Rate(NamedTuple):
    images_per_s: float
    warmup_s: float  # the first two steps (with torch.compile: its compilation)
    loss: float  # after the last step


def training_rate(model: Callable, parameters, plan: Plan, device: torch.device, shape: tuple[int, int], batch: int,
                  autocast: torch.dtype | None = None, scaler=None) -> Rate:
    """Images/s of plain training steps of ``model`` (on ``device``) at batch ``batch`` on
    frames of ``shape`` held on the device, median of ``plan.repeats`` timed runs of about
    ``plan.sweep_images`` images (scaled by the pixels of ``shape``), after two warm-up steps."""
    X, Y = (torch.from_numpy(a).to(device) for a in make_data(2 * batch, shape, plan.embedding))
    steps = int(np.clip(round(plan.sweep_images * plan.shape[0] * plan.shape[1] / (shape[0] * shape[1]) / batch), 2, 64))
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(len(X), (batch,), generator=generator).to(device) for _ in range(steps)]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=1e-4)
    run = functools.partial(train_steps, model, optimizer, X, Y, device=device, autocast=autocast, scaler=scaler)
    warmup = median_seconds({"warm-up": functools.partial(run, batches[:2])}, device, 1)["warm-up"]
    seconds = median_seconds({"steps": functools.partial(run, batches)}, device, plan.repeats)["steps"]
    return Rate(steps * batch / seconds, warmup, float(run(batches[:1])))


def light_decoder(plan: Plan, shape: tuple[int, int], device: torch.device) -> HalfUNetDecoder:
    torch.manual_seed(0)
    return HalfUNetDecoder(plan.embedding, 1, shape, plan.light).to(device)


def utilisation(report: Report, images_per_s: float, gflops: float) -> tuple[float, float]:
    """Training TFLOP/s at ``images_per_s`` (3 x the forward ``gflops`` per image) and its
    percentage of the bf16 matrix-product rate measured at the start."""
    tflops = images_per_s * 3 * gflops / 1e3
    return tflops, 100 * tflops / report.matmul_tflops


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:,.{digits}f}"


# ------------------------------------------------------------------ 1. correctness
def check_predictions_match_cpu(report: Report, plan: Plan, device: torch.device) -> None:
    """Fit on the CPU, then predict on the device in each precision and layout; compare with
    the CPU's float32 predictions."""
    X, Y = make_data(plan.correctness_samples, plan.correctness_shape, plan.embedding, dtype=np.float32)
    rows = []
    for body, params in (("light", dict(latent_dim=plan.light)), ("large", dict(latent_dim=plan.large, ensemble_size=1))):
        model = HalfUNetRegressor(max_epochs=1, device="cpu", random_state=0, **params).fit(X, Y)
        reference = model.predict(X)
        mean_frame = reference.mean(axis=0)
        with (backend_flags(torch.backends.cuda.matmul, allow_tf32=True),
              backend_flags(torch.backends.cudnn, allow_tf32=True)):
            for (precision, channels_last), limit in zip(
                [("float32", False), ("float32", True), ("bfloat16", False), ("bfloat16", True)], [1e-3, 1e-3, 1e-2, 1e-2]
            ):
                model.set_params(device=str(device), precision=precision, channels_last=channels_last)
                prediction = model.predict(X)
                error = relative_error(prediction, reference)
                rows.append([body, precision, "channels_last" if channels_last else "standard", f"{error:.1e}",
                             f"{relative_error(prediction - mean_frame, reference - mean_frame):.1e}", f"{limit:.0e}"])
                report.verdict(f"{device.type} predictions match the CPU's ({body}, {precision}, {rows[-1][2]})",
                               error <= limit, f"relative error {error:.1e} (limit {limit:.0e})")
    report.table(["body", "precision", "layout", "relative error", "of the deviations from the mean frame", "limit"], rows,
                 f"Decoders fitted on the CPU ({plan.correctness_shape[0]}x{plan.correctness_shape[1]}, "
                 f"{plan.correctness_samples} samples, 1 epoch; light: default ensemble of 3); predictions on "
                 f"{device.type} with TF32 allowed, against the CPU's float32 predictions. The last column leaves out "
                 "the mean frame, which dominates the first.")


def check_threaded_predict(report: Report, plan: Plan, device: torch.device) -> None:
    """``predict`` on the device from 8 threads at once (as a web service or joblib's threading
    backend calls it): bit-identical to serial calls, the fitted weights unchanged."""
    X, Y = make_data(plan.correctness_samples, plan.correctness_shape, plan.embedding, dtype=np.float32)
    model = HalfUNetRegressor(latent_dim=plan.light, max_epochs=1, device="cpu", random_state=0).fit(X, Y)
    weights = {name: value.clone() for name, value in model.module_.state_dict().items()}
    for precision, channels_last in (("float32", True), ("bfloat16", True)):
        model.set_params(device=str(device), precision=precision, channels_last=channels_last)
        inputs = [X[start : start + 16] for start in range(0, len(X), 16)] * 10
        serial = [model.predict(x) for x in inputs]
        with ThreadPoolExecutor(8) as pool:
            threaded = list(pool.map(model.predict, inputs))
        differing = sum(not np.array_equal(a, b) for a, b in zip(serial, threaded))
        report.verdict(f"{device.type} predict from 8 threads equals serial predict ({precision}, channels_last)",
                       differing == 0, f"{differing} of {len(inputs)} calls differ")
    changed = [name for name, value in model.module_.state_dict().items() if not torch.equal(value, weights[name])]
    report.verdict("threaded predict leaves the fitted weights unchanged", not changed, f"changed: {changed or 'none'}")


def check_loads_without_cuda(report: Report, plan: Plan, device: torch.device) -> None:
    """Fit on the device, pickle with joblib and ``save``; predict in a subprocess that sees
    no GPU; compare with this process's CPU and device predictions."""
    X, Y = make_data(plan.correctness_samples, plan.correctness_shape, plan.embedding, dtype=np.float32)
    model = HalfUNetRegressor(latent_dim=plan.light, max_epochs=1, device=str(device), random_state=0).fit(X, Y)
    on_device = model.predict(X)
    with tempfile.TemporaryDirectory() as folder:
        paths = {"joblib": Path(folder, "decoder.joblib"), "save": Path(folder, "decoder.safetensors")}
        joblib.dump(model, paths["joblib"])
        model.save(paths["save"])
        np.save(Path(folder, "X.npy"), X)
        on_cpu = model.set_params(device="cpu").predict(X)
        out = subprocess.run(
            [sys.executable, __file__, "--predict-with", str(Path(folder, "X.npy")), *map(str, paths.values())],
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300,
        )
        no_cuda = out.stdout.strip().endswith("cuda available: False")
        for how, path in paths.items():
            name = f"a decoder fitted on {device.type}, written with {how}, predicts in a process without CUDA"
            if out.returncode != 0:
                report.verdict(name, False, f"the subprocess failed:\n\n```\n{out.stderr[-3000:]}```")
                continue
            prediction = np.load(f"{path}.npy")
            errors = relative_error(prediction, on_cpu), relative_error(prediction, on_device)
            report.verdict(name, no_cuda and errors[0] <= 1e-5 and errors[1] <= 1e-3,
                           f"subprocess saw CUDA: {not no_cuda}; relative error against this process's CPU prediction "
                           f"{errors[0]:.1e} (limit 1e-5), against its {device.type} prediction {errors[1]:.1e} (limit 1e-3)")


def predict_in_this_process(inputs_path: str, *model_paths: str) -> None:
    """The subprocess of :func:`check_loads_without_cuda`: load each decoder file (joblib or
    ``save``), predict the inputs into ``<file>.npy``; say whether CUDA is visible."""
    X = np.load(inputs_path)
    for path in model_paths:
        model = joblib.load(path) if path.endswith(".joblib") else HalfUNetRegressor.load(path)
        np.save(f"{path}.npy", model.predict(X))
    print(f"cuda available: {torch.cuda.is_available()}")


def activation_bytes_per_sample(embedding: int, latent: int, shape: tuple[int, int], device: torch.device) -> int:
    """Bytes of the tensors autograd saves for the backward pass of one HalfUNetDecoder, per
    sample: batch 2 minus batch 1, so that the weights are not counted."""
    decoder = HalfUNetDecoder(embedding, 1, shape, latent).to(device)
    saved = []
    for batch in (1, 2):
        total = [0]

        def count(tensor):
            total[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
            decoder(torch.randn(batch, embedding, device=device))
        saved.append(total[0])
    return saved[1] - saved[0]


def absurd_batch(plan: Plan, device: torch.device) -> int:
    """A batch size whose activations, for the default ensemble of large bodies at
    ``plan.oom_shape``, need about twice the GPU's memory. Spread over the members, each
    tensor stays small: at 256x512 the largest holds about 2 M elements per sample, so fewer
    than 2^31 (where some kernels refuse to run rather than run out of memory) up to a batch
    of 1,000, about what a 141 GB GPU gets."""
    per_sample = activation_bytes_per_sample(plan.embedding, plan.large, plan.oom_shape, device)
    return int(np.ceil(2 * torch.cuda.get_device_properties(device).total_memory / (plan.ensemble_size * per_sample)))


def out_of_memory_model(plan: Plan, device: torch.device, batch: int) -> HalfUNetRegressor:
    return HalfUNetRegressor(latent_dim=plan.large, batch_size=batch, max_epochs=1, early_stopping=False,
                             device=str(device), random_state=0)


def check_out_of_memory(report: Report, plan: Plan, device: torch.device) -> None:
    """Fit with a batch that cannot fit: the estimator's OutOfMemoryError, and the memory released."""
    batch = absurd_batch(plan, device)
    X, Y = make_data(batch, plan.oom_shape, plan.embedding)
    release(device)
    before = gpu_memory_mib(device)
    message = None
    try:
        out_of_memory_model(plan, device, batch).fit(X, Y)
    except torch.cuda.OutOfMemoryError as error:
        message = str(error)
    after = gpu_memory_mib(device)
    report.add(f"Large body (latent_dim={plan.large}), ensemble of {plan.ensemble_size}, {plan.oom_shape[0]}x"
               f"{plan.oom_shape[1]}, batch_size={batch}. GPU memory allocated / reserved before fit: {before[0]:.0f} / "
               f"{before[1]:.0f} MiB, after the error: {after[0]:.0f} / {after[1]:.0f} MiB. Message: {message!r}\n")
    report.verdict("a real out-of-memory in fit raises the estimator's message",
                   message is not None and "ran out of GPU memory" in message and "batch_size" in message,
                   "torch.cuda.OutOfMemoryError saying what to change" if message else "fit did not run out of memory")
    report.verdict("the GPU memory is released after it", after[0] <= before[0] + 1 and after[1] <= before[1] + 64,
                   f"allocated {after[0] - before[0]:+.0f} MiB, reserved {after[1] - before[1]:+.0f} MiB "
                   "(limits +1 and +64 MiB)")


def check_grid_search_past_out_of_memory(report: Report, plan: Plan, device: torch.device) -> None:
    """GridSearchCV(error_score=np.nan) over the absurd batch and a small decoder: the first
    setting scores NaN, the second a number."""
    batch = absurd_batch(plan, device)
    X, Y = make_data(batch + 64, plan.oom_shape, plan.embedding)
    split = [(np.arange(batch), np.arange(batch, batch + 64))]  # training fold as large as the batch
    grid = [{"batch_size": [batch]}, {"batch_size": [32], "latent_dim": [64], "ensemble_size": [1]}]
    search = GridSearchCV(out_of_memory_model(plan, device, batch), grid, cv=split, error_score=np.nan, refit=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search.fit(X, Y)
    scores = search.cv_results_["mean_test_score"]
    said = any("ran out of GPU memory" in str(w.message) for w in caught)
    passed = bool(np.isnan(scores[0]) and np.isfinite(scores[1]) and said)
    report.verdict("GridSearchCV(error_score=np.nan) goes on past it", passed,
                   f"scores {scores.tolist()}; the FitFailedWarning carries the estimator's message: {said}")


# --------------------------------------------------------------- 2. default setting
def measure_fit_against_plain_loop(report: Report, plan: Plan, device: torch.device) -> None:
    """``fit`` (default setting, early stopping off) against a plain loop over the same network
    for 1 and ``plan.long_epochs`` epochs, interleaved; prediction throughput; peak GPU memory."""
    speed_rows, predict_rows, ratios = [], [], []
    for body, latent, n in (("light", plan.light, plan.light_samples), ("large", plan.large, plan.large_samples)):
        if report.spare() < 0:
            report.add(f"- **SKIPPED** {body} body: the budget is spent.")
            continue
        X, Y = make_data(n, plan.shape, plan.embedding)
        model = HalfUNetRegressor(latent_dim=latent, max_epochs=1, early_stopping=False, device=str(device), random_state=0)
        model.fit(X[:64], Y[:64])  # warm-up; its network (with the output scaling) is the plain loop's
        module, params = model.module_, model.get_params()
        setting = {"autocast": torch.bfloat16 if model.precision_ == "bfloat16" else None,
                   "memory_format": torch.channels_last if model.channels_last_ else torch.contiguous_format}
        fits = {e: HalfUNetRegressor(**{**params, "max_epochs": e}) for e in (1, plan.long_epochs)}
        calls = {}
        for e in (1, plan.long_epochs):
            calls[f"plain {e}"] = functools.partial(plain_training, module, X, Y, e, params["batch_size"], params["lr"],
                                                    params["weight_decay"], device, **setting)
            calls[f"fit {e}"] = functools.partial(fits[e].fit, X, Y)
        seconds = median_seconds(calls, device, plan.repeats)
        epochs = plan.long_epochs
        per_epoch = [(seconds[f"{how} {epochs}"] - seconds[f"{how} 1"]) / (epochs - 1) for how in ("plain", "fit")]
        gflops = plan.ensemble_size * forward_gflops(plan.embedding, latent, plan.shape)
        for label, plain, fit in ((1, seconds["plain 1"], seconds["fit 1"]),
                                  (epochs, seconds[f"plain {epochs}"], seconds[f"fit {epochs}"]),
                                  ("per further epoch", *per_epoch)):
            tflops, share = utilisation(report, n * (1 if label == "per further epoch" else label) / fit, gflops)
            speed_rows.append([body, n, label, fmt(plain, 2), fmt(fit, 2), fmt(plain / fit, 2),
                               f"{fmt(tflops, 2)} ({fmt(share, 1)}%)"])
        share = utilisation(report, n * epochs / seconds[f"fit {epochs}"], gflops)[1]
        ratios.append((body, seconds[f"plain {epochs}"] / seconds[f"fit {epochs}"], share))
        report.rates[f"fit, default setting, {body} body, {epochs} epochs"] = (n * epochs / seconds[f"fit {epochs}"], gflops)
        report.rates[f"plain loop, same network, {body} body"] = (n * epochs / seconds[f"plain {epochs}"], gflops)

        plain_predict = functools.partial(plain_prediction, copy.deepcopy(module), X, params["batch_size"], device)
        ours_predict = functools.partial(fits[1].predict, X)
        predict = median_seconds({"ours": ours_predict, "plain": plain_predict}, device, plan.repeats, warmup=1)
        fit_peak = peak_memory_mib(device, functools.partial(fits[1].fit, X, Y))
        predict_peak = peak_memory_mib(device, ours_predict)
        predict_rows.append([body, fmt(n / predict["ours"], 0), fmt(n / predict["plain"], 0),
                             fmt(predict["plain"] / predict["ours"], 2), fmt(fit_peak, 0), fmt(predict_peak, 0)])
    shape = f"{plan.shape[0]}x{plan.shape[1]}"
    report.table(["body", "samples", "epochs", "plain loop (s)", "fit (s)", "fit speed / plain loop",
                  "fit TFLOP/s (% of bf16 matmul)"], speed_rows,
                 f"Default setting at {shape} (ensemble of {plan.ensemble_size}, batch {params['batch_size']}, "
                 f"{model.precision_}{', channels_last' if model.channels_last_ else ''}, L1, AdamW; the plain loop "
                 "in the same precision and memory format, at a constant rate), uint8 "
                 f"frames, early stopping off; median of {plan.repeats} interleaved rounds. fit also checks the data, "
                 "computes the mean frame, averages the weights (ema_decay) and returns the network to the CPU; the "
                 "plain loop does only the training steps. 'per further epoch' is the difference of the two fits. "
                 "Training FLOPs: 3 x the forward FLOPs of every member per image.")
    report.table(["body", "predict (img/s)", "plain predict (img/s)", "predict speed / plain", "peak GPU memory, fit (MiB)",
                  "peak GPU memory, predict (MiB)"], predict_rows,
                 f"predict at batch_size {params['batch_size']} on the same {shape} frames, uint8 out, median of {plan.repeats} after a warm-up.")
    for body, ratio, share in ratios:
        report.verdict(f"fit >= 0.95 of the plain loop ({body} body, {plan.long_epochs} epochs)", ratio >= 0.95,
                       f"{ratio:.2f}", target=True)
        if body == "light":
            report.verdict(f"the light body at {shape} (fit, {plan.long_epochs} epochs, default setting) reaches 25% of the bf16 "
                           "matrix-product rate", share >= 25, f"{share:.1f}%", target=True)


def measure_epoch(report: Report, plan: Plan, device: torch.device) -> None:
    """One epoch of the default setting over ``plan.epoch_samples`` frames (``max_epochs=1``: no
    room for a pilot, every frame trains)."""
    X, Y = make_data(plan.epoch_samples, plan.shape, plan.embedding)
    model = HalfUNetRegressor(latent_dim=plan.light, max_epochs=1, device=str(device), random_state=0)
    model.fit(X[:64], Y[:64])  # warm-up
    seconds = median_seconds({"fit": functools.partial(model.fit, X, Y)}, device, 1)["fit"]
    epoch = model.history_[0]["duration_s"]
    shape = f"{plan.shape[0]}x{plan.shape[1]}"
    report.add(f"fit(max_epochs=1) over {plan.epoch_samples:,} uint8 frames at {shape}, default setting: {seconds:.1f} s "
               f"in all, of which {epoch:.1f} s the epoch (every frame trains: max_epochs=1 leaves no room for a pilot).\n")
    report.verdict(f"one epoch over {plan.epoch_samples:,} frames at {shape} in under 15 s", seconds < 15,
                   f"{seconds:.1f} s", target=True)
    report.rates[f"fit, default setting, light body, {plan.epoch_samples:,} frames"] = (
        plan.epoch_samples / epoch, plan.ensemble_size * forward_gflops(plan.embedding, plan.light, plan.shape))


# ------------------------------------------------------------------------ 3. sweeps
def sweep_precision_and_layout(report: Report, plan: Plan, device: torch.device) -> None:
    """Plain training steps of one light decoder in each variant, over batch and frame sizes, while the budget lasts."""
    rows, best_cell = [], None
    for shape in plan.sweep_shapes:
        for batch in plan.sweep_batches:
            if report.spare() < 0:
                rows.append([f"{shape[0]}x{shape[1]}", batch, *["not run (budget)"] * len(VARIANTS), ""])
                continue
            rates = {}
            for name, (autocast, channels_last, benchmark) in VARIANTS.items():
                decoder = light_decoder(plan, shape, device)
                if channels_last:
                    decoder = decoder.to(memory_format=torch.channels_last)
                try:
                    with backend_flags(torch.backends.cudnn, benchmark=benchmark):
                        rate = training_rate(decoder, decoder.parameters(), plan, device, shape, batch, autocast)
                    rates[name] = rate.images_per_s
                except torch.cuda.OutOfMemoryError:
                    rates[name] = None
                del decoder
                release(device)
            best = max(rates, key=lambda name: rates[name] or 0)
            cells = [fmt(rates[name], 0) if rates[name] else "out of memory" for name in VARIANTS]
            gain = (rates[best] or 0) / (rates["float32"] or np.nan)
            rows.append([f"{shape[0]}x{shape[1]}", batch, *cells, f"{best}: {fmt(gain, 2)}"])
            gflops = forward_gflops(plan.embedding, plan.light, shape)
            if shape == plan.shape and batch == plan.sweep_batches[0]:
                for name in VARIANTS:
                    if rates[name]:
                        report.rates[f"one light decoder, {name}, batch {batch}"] = (rates[name], gflops)
            if rates[best] and (best_cell is None or rates[best] * gflops > best_cell[1] * best_cell[2]):
                label = f"one light decoder, highest FLOP rate of the sweep: {best}, {shape[0]}x{shape[1]}, batch {batch}"
                best_cell = (label, rates[best], gflops)
    if best_cell:
        report.rates[best_cell[0]] = best_cell[1:]
    report.table(["frames", "batch", *(f"{name} (img/s)" for name in VARIANTS), "best / float32"], rows,
                 f"Plain training steps (AdamW, L1) of one light decoder (latent_dim {plan.light}) on uint8 frames held on "
                 f"the device; median of {plan.repeats} runs of about {plan.sweep_images} images at "
                 f"{plan.shape[0]}x{plan.shape[1]} (fewer at larger frames), after 2 warm-up steps.")


def measure_ensemble(report: Report, plan: Plan, device: torch.device) -> None:
    """The ensemble member by member (as ``fit`` trains it) against vectorised with vmap, and one decoder."""
    torch.manual_seed(0)
    members = [HalfUNetDecoder(plan.embedding, 1, plan.shape, plan.light) for _ in range(plan.ensemble_size)]
    sequential = DecoderEnsemble(copy.deepcopy(members)).to(device).train()
    vectorised = VectorisedEnsemble([copy.deepcopy(member).to(device) for member in members])
    x = torch.randn(8, plan.embedding, device=device)
    with torch.no_grad():
        error = relative_error(vectorised(x).cpu(), sequential(x).cpu())
    single = copy.deepcopy(members[0]).to(device)
    batch = plan.sweep_batches[0]
    models = {
        "one decoder": (single, single.parameters()),
        "member by member (DecoderEnsemble, as fit)": (sequential, sequential.parameters()),
        "vectorised (stack_module_state + vmap)": (vectorised, vectorised.parameters),
    }
    rates = {name: training_rate(*model, plan, device, plan.shape, batch).images_per_s for name, model in models.items()}
    base = rates["member by member (DecoderEnsemble, as fit)"]
    report.table(["training", "img/s", "vs member by member"],
                 [[name, fmt(rate, 0), fmt(rate / base, 2)] for name, rate in rates.items()],
                 f"{plan.ensemble_size} light decoders at {plan.shape[0]}x{plan.shape[1]}, batch {batch}, float32, plain steps; "
                 f"images/s count each frame once (through every member). Vectorised output against member by member: "
                 f"relative error {error:.1e}.")
    gflops = plan.ensemble_size * forward_gflops(plan.embedding, plan.light, plan.shape)
    report.rates[f"ensemble of {plan.ensemble_size}, vectorised, batch {batch}"] = (
        rates["vectorised (stack_module_state + vmap)"], gflops)


def measure_compile(report: Report, plan: Plan, device: torch.device) -> None:
    """One light decoder, eager against ``torch.compile`` (default mode); compilation timed apart."""
    if not plan.compile:
        raise Skipped("quick mode: no torch.compile (it takes minutes on a small CPU).")
    batch = plan.sweep_batches[0]
    eager = light_decoder(plan, plan.shape, device)
    compiled = torch.compile(light_decoder(plan, plan.shape, device))
    rates = {"eager": training_rate(eager, eager.parameters(), plan, device, plan.shape, batch),
             "torch.compile": training_rate(compiled, compiled.parameters(), plan, device, plan.shape, batch)}
    report.table(["training", "img/s", "vs eager", "first 2 steps (s)"],
                 [[name, fmt(rate.images_per_s, 0), fmt(rate.images_per_s / rates["eager"].images_per_s, 2),
                   fmt(rate.warmup_s, 1)] for name, rate in rates.items()],
                 f"One light decoder at {plan.shape[0]}x{plan.shape[1]}, batch {batch}, float32; the first 2 steps of "
                 "torch.compile include its compilation (a fixed batch size: no recompilation).")
    report.rates[f"one light decoder, torch.compile, batch {batch}"] = (
        rates["torch.compile"].images_per_s, forward_gflops(plan.embedding, plan.light, plan.shape))


def measure_fp16(report: Report, plan: Plan, device: torch.device) -> None:
    """fp16 autocast with a gradient scaler (GPUs without bf16 units) against float32 and bf16."""
    batch = plan.sweep_batches[0]
    variants = {"float32": (None, None), "bf16 autocast": (torch.bfloat16, None),
                "fp16 autocast + GradScaler": (torch.float16, torch.amp.GradScaler(device.type))}
    rows, base, rate = [], None, None
    for name, (autocast, scaler) in variants.items():
        decoder = light_decoder(plan, plan.shape, device)
        rate = training_rate(decoder, decoder.parameters(), plan, device, plan.shape, batch, autocast, scaler)
        base = base or rate.images_per_s
        rows.append([name, fmt(rate.images_per_s, 0), fmt(rate.images_per_s / base, 2), f"{rate.loss:.4f}",
                     f"{scaler.get_scale():g}" if scaler else ""])
    report.table(["training", "img/s", "vs float32", "loss after the last step", "loss scale"], rows,
                 f"One light decoder at {plan.shape[0]}x{plan.shape[1]}, batch {batch}, plain steps.")
    report.verdict("fp16 with a gradient scaler trains to a finite loss", bool(np.isfinite(rate.loss)), f"{rate.loss:.4f}",
                   target=True)


# ------------------------------------------------------------------- 4. utilisation
def measure_utilisation(report: Report, plan: Plan, device: torch.device) -> None:
    """Every training rate measured above, in TFLOP/s (3 x forward FLOPs per image) and as a
    share of the bf16 matrix-product rate measured at the start."""
    if not report.rates:
        raise Skipped("no training rate was measured.")
    rows = []
    for label, (images_per_s, gflops) in report.rates.items():
        tflops, share = utilisation(report, images_per_s, gflops)
        rows.append([label, fmt(images_per_s, 0), fmt(3 * gflops, 2), fmt(tflops, 2), fmt(share, 1)])
    report.table(["training", "img/s", "training GFLOP / image", "TFLOP/s", "% of bf16 matmul"], rows,
                 f"bf16 matrix product {plan.matmul_size}^3 on this device: {report.matmul_tflops:.3g} TFLOP/s "
                 "(random data, median of 5 x 10 products, measured first). FLOPs counted by torch's FlopCounterMode "
                 "(multiply-add = 2); the 25% target is judged in section 2.")


CHECKS = [
    ("1. Correctness on the device", [
        Check("Device predictions against CPU predictions", check_predictions_match_cpu, 30, correctness=True),
        Check("predict from many threads", check_threaded_predict, 15, correctness=True),
        Check("A decoder fitted on the device loads and predicts without CUDA", check_loads_without_cuda, 30,
              correctness=True),
        Check("A real out-of-memory in fit", check_out_of_memory, 20, correctness=True, needs_gpu=True),
        Check("GridSearchCV past an out-of-memory", check_grid_search_past_out_of_memory, 30, correctness=True,
              needs_gpu=True),
    ]),
    ("2. The default setting", [
        Check("fit against a plain PyTorch loop; prediction; peak memory", measure_fit_against_plain_loop, 40),
        Check("One epoch over 10,000 frames", measure_epoch, 20),
    ]),
    ("3. Sweeps", [
        Check("Precision and memory layout, by batch and frame size", sweep_precision_and_layout, 20),
        Check("Ensemble: member by member against vectorised", measure_ensemble, 15),
        Check("torch.compile", measure_compile, 90),
        Check("fp16 with a gradient scaler", measure_fp16, 10),
    ]),
    ("4. Utilisation", [Check("Training FLOP rate against the bf16 matrix product", measure_utilisation, 1)]),
]


def installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def describe(device: torch.device, budget_s: float, argv: list[str]) -> str:
    """The report's header: command, date, device, versions."""
    packages = ("numpy", "scikit-learn", "safetensors", "joblib", "cebra")
    versions = ", ".join(f"{name} {installed_version(name)}" for name in packages)
    lines = [
        f"Command: `python {' '.join(['benchmarks/gpu_check.py', *argv])}`",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; budget {budget_s:.0f} s",
        f"Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}), {versions}",
        f"Machine: {machine()}; {torch.get_num_threads()} torch threads",
    ]
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        lines.append(f"Device: {properties.name}, {properties.total_memory / 2**30:.1f} GiB, "
                     f"{properties.multi_processor_count} multiprocessors, bf16 {torch.cuda.is_bf16_supported()}; "
                     f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN {torch.backends.cudnn.allow_tf32}, "
                     f"cudnn.benchmark {torch.backends.cudnn.benchmark}")
    else:
        lines.append("Device: the CPU (no GPU: the device checks compare the CPU with itself, exercising the code only)")
    return "  \n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_check", help="folder of gpu_report.md (default: ./gpu_check)")
    parser.add_argument("--budget-s", type=float, default=360.0, help="seconds the checks may take in all (default 360)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, no compile: the same code on a CPU in under a minute")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--predict-with", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.predict_with:
        predict_in_this_process(*args.predict_with)
        return 0
    plan = QUICK if args.quick else FULL
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = Report(Path(args.out) / "gpu_report.md", args.budget_s)
    report.add(f"# GPU check{' (quick mode)' if args.quick else ''}\n\n{describe(device, args.budget_s, argv)}")
    report.matmul_tflops = matmul_tflops(device, plan.matmul_size)
    report.add(f"\nbf16 matrix product {plan.matmul_size}^3: {report.matmul_tflops:.3g} TFLOP/s")
    checks = [check for _, section in CHECKS for check in section]
    for title, section in CHECKS:
        report.section(title)
        for check in section:
            report.reserve_s = sum(later.cost_s for later in checks[checks.index(check) + 1 :])
            run_check(report, check, plan, device)
    report.section("Summary")
    report.add(f"Correctness failures: {', '.join(report.failures) or 'none'}. "
               f"{report.remaining():.0f} s of the budget left.")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
