"""Repeated stimulus: train on repeats 1..R-1, test on movie stretches never shown in training.

    python benchmarks/repeats.py --embeddings /tmp/repeats_z.npz --configs "" --curve "" --curve-epochs 6
    python benchmarks/repeats.py --embeddings /tmp/repeats_z.npz --configs "ensemble_size=1" \
        "precision='float32',channels_last=False" --curve "ensemble_size=1" --curve-epochs 8

The first is the table in ``benchmarks/RESULTS.md``: the defaults, and the test scores at
every epoch of the default schedule run to its end (so the epoch the stop rule chose can be
compared with the best one). The CEBRA fit (2,000 iterations on 3,240 samples) is the slow
part (38 minutes when first run, on 2 cores shared with four other jobs); ``--embeddings``
keeps it for the next run.

The standard design of visual neuroscience (the Allen Brain Observatory's "natural movie one",
the CEBRA paper's movie decoding): the same movie shown ``R`` times. Data:
``make_natural_movie_v1`` (seed 0), ``R`` repeats in repeat-major order (the samples of
repeat 1, then of repeat 2, ...). The training samples are the training frames
(``is_train``: not in, nor within ``gap`` frames of, the movie's test stretches) of the first
``R - 1`` repeats; the test samples are the test stretches of the last repeat, frames no
model saw in any repeat. One CEBRA embedding (the demo's model, PCA label) is fitted on
the training responses; every decoder gets the same embeddings.

Baselines: kNN (cosine, k from {1, 5, 15, 50, 100} chosen by ``GroupKFold`` over frame ids,
``splits.frame_ids`` of the frames' hashes, so that all copies of a frame fall in one fold) and cebra's ridge decoding. Each
HalfUNet configuration (``name=value`` pairs over the defaults, ``random_state=0``) reports
its fit time, epochs run, best epoch and ``stop_reason_``. ``--curve`` trains one configuration with ``--curve-epochs`` epochs (``n_iter_no_change`` as long,
so it never stops early), and scores the test frames at every epoch with the weights that
validation sees (the weight average, if any).
"""

from __future__ import annotations

import argparse
import ast
import copy
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import GridSearchCV, GroupKFold

from _results import markdown_table, write_section
from cebra_halfunet import CEBRAEmbedding, HalfUNetRegressor
from cebra_halfunet.baselines import ChunkedKNeighborsRegressor, ridge, timed
from cebra_halfunet.callbacks import Callback
from cebra_halfunet.datasets import make_natural_movie_v1
from cebra_halfunet.demo import DEMO_TEMPERATURE, demo_cebra
from cebra_halfunet.metrics import reconstruction_scores
from cebra_halfunet.splits import frame_digests, frame_ids

NEIGHBOURS = (1, 5, 15, 50, 100)


def repeated_movie(n_frames: int, size: tuple[int, int], n_repeats: int) -> dict:
    """Samples of the benchmark, repeat-major.

    Returns a dict of ``X_train`` ``(n_train * (R-1), n_neurons)``, ``y_train``
    ``(n_train * (R-1), 1, H, W)``, ``X_test``, ``y_test`` (the test frames of the last repeat) and ``recording``.
    """
    recording = make_natural_movie_v1(n_frames, size, n_repeats=n_repeats, seed=0)
    train_frames, test_frames = np.flatnonzero(recording.is_train), np.flatnonzero(recording.is_test)
    training_repeats = recording.neural[:-1, train_frames]
    return {
        "X_train": training_repeats.reshape(-1, training_repeats.shape[-1]),
        "y_train": np.tile(recording.frames[train_frames], (n_repeats - 1, 1, 1, 1)),
        "X_test": recording.neural[-1, test_frames],
        "y_test": recording.frames[test_frames],
        "recording": recording,
    }


def cebra_embeddings(data: dict, iterations: int, path: Path | None) -> tuple[np.ndarray, np.ndarray, float]:
    """``(z_train, z_test, seconds)`` of the demo's CEBRA model, read from ``path`` if it exists."""
    if path is not None and path.exists():
        cached = np.load(path)
        return cached["z_train"], cached["z_test"], float(cached["seconds"])
    start = time.perf_counter()
    flat = data["y_train"].reshape(len(data["y_train"]), -1)
    embedding = CEBRAEmbedding(demo_cebra(32, iterations, DEMO_TEMPERATURE), label="pca", random_state=0)
    embedding.fit(data["X_train"], flat)
    z_train, z_test = embedding.transform(data["X_train"]), embedding.transform(data["X_test"])
    seconds = time.perf_counter() - start
    if path is not None:
        np.savez(path, z_train=z_train, z_test=z_test, seconds=seconds)
    return z_train, z_test, seconds


def grouped_nearest_neighbours(z_train, y_train, z_test, groups) -> tuple[np.ndarray, int]:
    """Cosine kNN with k chosen by 5-fold ``GroupKFold`` over ``groups``; ``(prediction, k)``."""
    grid = {"n_neighbors": list(NEIGHBOURS)}
    search = GridSearchCV(ChunkedKNeighborsRegressor(metric="cosine"), grid, cv=GroupKFold(5), error_score="raise")
    search.fit(z_train, y_train.reshape(len(y_train), -1), groups=groups)
    prediction = search.predict(z_test).astype(np.float32).reshape(len(z_test), *y_train.shape[1:])
    return prediction, search.best_params_["n_neighbors"]


def parse_configuration(text: str) -> dict:
    """``"a=1,b='x'"`` -> ``{"a": 1, "b": "x"}`` (empty text: the defaults)."""
    parameters = {}
    for assignment in filter(None, text.split(",")):
        name, value = assignment.split("=")
        parameters[name.strip()] = ast.literal_eval(value)
    return parameters


def scores(y_test: np.ndarray, prediction: np.ndarray) -> list[str]:
    return [f"{s:.3f}" for s in reconstruction_scores(y_test, np.clip(prediction, 0, 1), data_range=1.0)]


def per_epoch_curve(parameters: dict, z_train, y_train, z_test, y_test, epochs: int) -> list[list]:
    """Train ``epochs`` epochs (the stop rule never fires: ``n_iter_no_change=epochs``); test
    scores of the validated weights (the weight average, if any) after every epoch, rows
    ``[epoch, valid_loss, SSIM, PSNR, r]``."""
    model = HalfUNetRegressor(random_state=0, max_epochs=epochs, n_iter_no_change=epochs, **parameters)
    rows = []

    class ScoreEachEpoch(Callback):
        def on_epoch_end(self, run, record):
            scoring = copy.copy(model)
            scoring.module_ = copy.deepcopy(run.evaluated).eval()
            rows.append([record["epoch"], f"{record['valid_loss']:.4f}", *scores(y_test, scoring.predict(z_test))])
            print("epoch", rows[-1], flush=True)

    model.set_params(callbacks=[ScoreEachEpoch()]).fit(z_train, y_train)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, nargs=2, default=(64, 128))
    parser.add_argument("--frames", type=int, default=600, help="movie length (frames per repeat)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cebra-iterations", type=int, default=2000)
    parser.add_argument("--embeddings", type=Path, help="file to save the CEBRA embeddings to, or reuse them from")
    parser.add_argument("--configs", nargs="*", default=[""], help='HalfUNet parameters, e.g. "ensemble_size=1,lr=2e-3"')
    parser.add_argument("--curve", help="configuration to score at every epoch (the stop rule never fires)")
    parser.add_argument("--curve-epochs", type=int, default=20)
    args = parser.parse_args()
    size = tuple(args.size)
    data = repeated_movie(args.frames, size, args.repeats)
    z_train, z_test, cebra_seconds = cebra_embeddings(data, args.cebra_iterations, args.embeddings)
    y_train, y_test = data["y_train"], data["y_test"]
    print(f"CEBRA: {cebra_seconds:.0f} s; {len(z_train)} training and {len(z_test)} test samples", flush=True)

    rows = []
    groups = frame_ids(frame_digests(y_train))  # bit-identical frames, as the estimator will find them
    (prediction, k), seconds = timed(grouped_nearest_neighbours, z_train, y_train, z_test, groups)
    rows.append([f"kNN (cosine, k={k} by GroupKFold)", f"{seconds:.0f}", "", "", "", *scores(y_test, prediction)])
    prediction, seconds = timed(ridge, z_train, y_train, z_test)
    rows.append(["ridge (cebra ridge_decoding)", f"{seconds:.0f}", "", "", "", *scores(y_test, prediction)])
    print(rows, flush=True)
    for configuration in args.configs:
        model = HalfUNetRegressor(random_state=0, **parse_configuration(configuration))
        _, seconds = timed(model.fit, z_train, y_train)
        epochs = [model.n_epochs_, model.best_epoch_, model.stop_reason_]
        rows.append([f"HalfUNet {configuration or 'defaults'}", f"{seconds:.0f}", *epochs, *scores(y_test, model.predict(z_test))])
        print(rows[-1], flush=True)
    header = ["decoder", "fit (s)", "epochs run", "best epoch", "stop reason", "SSIM", "PSNR (dB)", "pixel r"]
    recording = data["recording"]
    design = (
        f"Built-in natural movie, {args.frames} frames at {size[0]}x{size[1]}, {args.repeats} repeats in "
        f"repeat-major order, {recording.neural.shape[-1]} simulated V1 neurons. Training: the "
        f"{recording.is_train.sum()} training frames of repeats 1-{args.repeats - 1} ({len(z_train)} samples); test: "
        f"the {recording.is_test.sum()} frames of the test stretches in repeat {args.repeats}, shown in no training "
        f"repeat. CEBRA: the demo's model, 32-d, {args.cebra_iterations} iterations, PCA label ({cebra_seconds:.0f} s). "
        "HalfUNet: random_state=0, other parameters default unless named; fit seconds on a shared 2-core CPU "
        "(compare within one run). Predictions clipped to [0, 1]; metrics are means over test frames."
    )
    write_section(f"Repeated stimulus at {size[0]}x{size[1]}", markdown_table(header, rows), design)
    if args.curve is not None:
        curve = per_epoch_curve(parse_configuration(args.curve), z_train, y_train, z_test, y_test, args.curve_epochs)
        write_section(
            f"Repeated stimulus at {size[0]}x{size[1]}: test scores per epoch",
            markdown_table(["epoch", "validation loss", "SSIM", "PSNR (dB)", "pixel r"], curve),
            f"HalfUNet {args.curve or 'defaults'}, {args.curve_epochs} epochs, n_iter_no_change {args.curve_epochs} (never stops early). " + design,
        )


if __name__ == "__main__":
    main()
