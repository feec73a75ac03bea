"""Training and prediction speed of HalfUNetRegressor against a plain PyTorch loop and a
DataLoader loop with the same module, plus accelerations and peak memory.

    python benchmarks/speed.py

Training: images/s over one epoch of float32 frames, batch 32, MSE; each method is timed in
two interleaved rounds and its best round kept. "plain loop": tensors sliced by a permutation,
Adam (the framework's limit on this machine). "DataLoader loop": ``TensorDataset`` +
``DataLoader(shuffle=True)``, as in ``cebra.integrations.decoders.mlp_decoding``. "ours":
``HalfUNetRegressor.fit`` (validation scan, mean image, training; early stopping off).
Achieved GFLOP/s count a training step as 3 forward passes. Peak RSS: separate processes.
"""

import argparse
import copy
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from _results import markdown_table, peak_rss_mib, reset_peak_rss, rss_mib, write_section
from cebra_halfunet import HalfUNetDecoder, HalfUNetRegressor
from cebra_halfunet.networks import ImageOutput

BATCH = 32
EMBEDDING = 32
SPEED_HEADER = ["latent_dim", "body", "output", "train ours (img/s)", "train plain loop", "train DataLoader loop",
                "ours / plain", "ours / DataLoader", "ours GFLOP/s (% of matmul)", "predict ours (img/s)", "predict plain",
                "ours / plain"]


def matmul_gflops(size=2048, repeats=10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def forward_gflops(module) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.randn(1, EMBEDDING))
    return counter.get_total_flops() / 1e9


def plain_epoch(module, X, Y, autocast=False):
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.train()
    for index in torch.randperm(len(X)).split(BATCH):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.mse_loss(module(X[index]).float(), Y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def dataloader_epoch(module, X, Y):
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.train()
    for inputs, targets in DataLoader(TensorDataset(X, Y), batch_size=BATCH, shuffle=True):
        loss = torch.nn.functional.mse_loss(module(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def training_and_prediction(latent_dim, size, n, matmul):
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(n, EMBEDDING)).astype(np.float32))
    Y = torch.from_numpy(rng.random((n, 1, *size), dtype=np.float32))
    torch.manual_seed(0)
    module = ImageOutput(HalfUNetDecoder(EMBEDDING, 1, size, latent_dim), np.full((1, *size), 0.5, np.float32), 0.25)
    estimator = HalfUNetRegressor(latent_dim=latent_dim, ensemble_size=1, loss="mse", max_epochs=1, early_stopping=False,
                                  batch_size=BATCH, device="cpu", random_state=0)
    methods = {
        "ours": lambda: estimator.fit(X.numpy(), Y.numpy()),
        "plain": lambda: plain_epoch(copy.deepcopy(module), X, Y),
        "dataloader": lambda: dataloader_epoch(copy.deepcopy(module), X, Y),
    }
    plain_epoch(copy.deepcopy(module), X[: 2 * BATCH], Y[: 2 * BATCH])  # warm-up
    seconds = {name: timed(method) for name, method in methods.items()}
    for name, method in methods.items():  # second interleaved round
        seconds[name] = min(seconds[name], timed(method))
    speed = {name: n / s for name, s in seconds.items()}

    def plain_predict():
        with torch.no_grad():
            module.eval()
            for start in range(0, n, BATCH):
                module(X[start : start + BATCH]).numpy()

    predict = {"ours": n / min(timed(lambda: estimator.predict(X.numpy())) for _ in range(2)),
               "plain": n / min(timed(plain_predict) for _ in range(2))}
    achieved = 3 * forward_gflops(module) * speed["ours"]
    return [latent_dim, type(module.decoder.body).__name__, f"{size[0]}x{size[1]}",
            f"{speed['ours']:.1f}", f"{speed['plain']:.1f}", f"{speed['dataloader']:.1f}",
            f"{speed['ours'] / speed['plain']:.2f}", f"{speed['ours'] / speed['dataloader']:.2f}",
            f"{achieved:.0f} ({100 * achieved / matmul:.0f}%)",
            f"{predict['ours']:.0f}", f"{predict['plain']:.0f}", f"{predict['ours'] / predict['plain']:.2f}"]


def accelerations(n=256, size=(64, 128)):
    """Plain loop on the light body at 64x128 with each acceleration, images/s."""
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(n, EMBEDDING)).astype(np.float32))
    Y = torch.from_numpy(rng.random((n, 1, *size), dtype=np.float32))
    torch.manual_seed(0)
    module = ImageOutput(HalfUNetDecoder(EMBEDDING, 1, size, 512), np.full((1, *size), 0.5, np.float32), 0.25)
    rows, base = [], None
    variants = {
        "float32 (default)": (lambda: copy.deepcopy(module), False),
        "bf16 autocast": (lambda: copy.deepcopy(module), True),
        "channels_last": (lambda: copy.deepcopy(module).to(memory_format=torch.channels_last), False),
        "bf16 autocast + channels_last": (lambda: copy.deepcopy(module).to(memory_format=torch.channels_last), True),
        "torch.compile": (lambda: torch.compile(copy.deepcopy(module)), False),
    }
    for name, (make, autocast) in variants.items():
        network = make()
        first = timed(lambda: plain_epoch(network, X[: 2 * BATCH], Y[: 2 * BATCH], autocast))  # warm-up / compilation
        speed = n / min(timed(lambda: plain_epoch(network, X, Y, autocast)) for _ in range(2))
        base = base or speed
        rows.append([name, f"{speed:.1f}", f"{speed / base:.2f}", f"{first:.1f}"])
    return rows


def peak_rss(stage: str, n: int, size) -> None:
    """Child process: fit on ``n`` uint8 frames (stopped by Ctrl-C after 20 s, well past the
    first batches, where the loop's memory is reached) or predict ``n`` frames; prints the
    RSS before the call and the peak RSS during it, in MiB."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, EMBEDDING)).astype(np.float32)
    frames = n if stage == "fit" else 64
    y = np.frombuffer(rng.bytes(frames * size[0] * size[1]), dtype=np.uint8).reshape(frames, *size)
    model = HalfUNetRegressor(ensemble_size=1, loss="mse", max_epochs=1, early_stopping=False, device="cpu", random_state=0)
    if stage == "predict":
        model.fit(X[:64], y)
    before = rss_mib()
    reset_peak_rss()
    if stage == "fit":
        threading.Timer(20, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            model.fit(X, y)
        except KeyboardInterrupt:
            pass
    else:
        model.predict(X)
    print(before, peak_rss_mib())


def memory_rows(size=(128, 256)):
    rows = []
    for stage, n in (("fit", 10_000), ("predict", 2_500), ("predict", 10_000)):
        out = subprocess.run([sys.executable, __file__, "--rss", stage, str(n)], capture_output=True, text=True, check=True)
        before, peak = (float(value) for value in out.stdout.split()[-2:])
        frames_mib = n * size[0] * size[1] / 2**20
        extra = peak - before - (frames_mib if stage == "predict" else 0)
        rows.append([stage, n, f"{frames_mib:.0f}", f"{before:.0f}", f"{peak:.0f}", f"{extra:.0f}"])
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rss", nargs=2, metavar=("STAGE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--overhead", action="store_true", help="only the per-batch overhead rows (tiny decoders)")
    parser.add_argument("--memory", action="store_true", help="only the peak-memory rows")
    args = parser.parse_args()
    if args.rss:
        return peak_rss(args.rss[0], int(args.rss[1]), (128, 256))
    if args.overhead:
        matmul = matmul_gflops()
        rows = [training_and_prediction(latent, size, n, matmul) for latent, size, n in [(32, (8, 16), 4096), (64, (16, 32), 2048)]]
        return write_section("Per-batch overhead (tiny decoders)", markdown_table(SPEED_HEADER, rows),
                             "Decoders so small that the loop around them, not the convolutions, sets the pace: "
                             "where the DataLoader's per-sample collation shows. Batch 32, float32, CPU.")
    if args.memory:
        return write_memory_section()
    matmul = matmul_gflops()
    rows = [training_and_prediction(latent, size, n, matmul)
            for latent, size, n in [(512, (64, 128), 512), (1024, (64, 128), 256), (512, (128, 256), 256), (1024, (128, 256), 128)]]
    speed_table = markdown_table(SPEED_HEADER, rows)
    write_section("Training and prediction speed", speed_table,
                  f"fp32 matmul (2048x2048) on this machine: {matmul:.0f} GFLOP/s. Batch 32, float32 targets, MSE; one "
                  "epoch of 512/256/256/128 samples per method, best of two interleaved rounds. No GPU was available.")
    write_section("Accelerations (CPU)", markdown_table(
        ["variant", "train img/s", "vs float32", "first 2 batches (s)"], accelerations()),
        "Plain loop, light body (latent 512) at 64x128, batch 32; 'first 2 batches' includes compilation.")
    write_memory_section()


def write_memory_section():
    write_section("Peak memory (RSS)", markdown_table(
        ["stage", "frames (128x256 uint8)", "frames (MiB)", "RSS before (MiB)", "peak RSS during the call (MiB)",
         "beyond the input / output frames (MiB)"], memory_rows()),
        "One process per row, light body (latent 512), batch 32, CPU; peak = VmHWM, reset just before the call. "
        "fit: the uint8 targets are in memory before the call (in 'RSS before'); stopped by Ctrl-C after 20 s. "
        "predict: writes into one preallocated uint8 output of the size in 'frames (MiB)', which the last column "
        "subtracts: what predict needs beyond its output.")


if __name__ == "__main__":
    main()
