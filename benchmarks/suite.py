"""The benchmark suite the defaults are chosen on: four conditions of different information content.

    python benchmarks/suite.py                                   # everything, then the tables
    python benchmarks/suite.py --conditions b --seeds 0 1 2      # the default, three seeds, on (b)
    python benchmarks/suite.py --conditions c --configs "" "ensemble_size=1" --curve "early_stopping=False,max_epochs=24"
    python benchmarks/suite.py --table-only                       # the tables from the stored records

Every condition is the layout of a visual experiment: a movie shown 10 times, repeat-major;
the decoders train on the training frames of repeats 1-9 and are tested on the test stretches
of repeat 10, frames shown in no training repeat (``make_natural_movie_v1``'s split: 4 test
stretches, 15 frames of gap around each). Every decoder of a condition gets the same embeddings.

- **(a) low**: the repeats benchmark of issue 22 (``benchmarks/repeats.py``, which this suite
  replaced): 600 frames at 64x128, 800 simulated V1 neurons, CEBRA (the demo's model: offset10,
  32-d, temperature 0.3, PCA label, 2,000 iterations, ``random_state=0``) fitted on the
  training responses.
- **(b) middle**: 670 frames (402 training frames, 3,618 training samples) at 64x128, 3,000
  neurons, the same CEBRA recipe.
- **(c) high**: the frames of (b), embedded by the first 32 principal components of the training
  frames' pixels (each standardised) plus independent Gaussian noise of standard deviation
  ``PCA_NOISE`` in every sample: the embedding carries most of each frame, so a decoder can
  reconstruct frames it never saw, and kNN, which can only average training frames, cannot.
  Ridge is near-optimal for a linear embedding: reported, no target.
- **(d) 128x256**: (b)'s embeddings with the same movie rendered at 128x256 (the eye path is
  drawn first, so the frames are the same views at twice the resolution).

For each condition: kNN (cosine, k in {1, 5, 15, 50, 100} by ``GroupKFold(5)`` over frame ids,
so that all copies of a frame fall in one fold) and ridge (cebra's ``ridge_decoding``); each
``HalfUNetRegressor`` configuration (``--configs``, ``name=value`` pairs over the defaults) for
each of ``--seeds`` (``random_state``): fit seconds, optimizer steps, epochs, best epoch, stop
reason and the test SSIM / PSNR / pixel r / 2-way identification; and ``--curve``, one long run
scored on the test frames after every epoch (the weights that are kept: the average, if any).

Every result is a record in ``--records`` (JSON, committed: the reference runs of earlier
code stay comparable), keyed by the code's ``--label``, the condition, the configuration and
the seed; a run whose record exists is skipped, so conditions can run in separate processes
(``OMP_NUM_THREADS=1`` each; their fit seconds are then not those of a 2-core fit: the records
say how many threads). Embeddings are cached in ``--cache``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import fcntl
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, GroupKFold

from _results import markdown_table, write_section
from cebra_halfunet import CEBRAEmbedding, HalfUNetRegressor
from cebra_halfunet.baselines import ChunkedKNeighborsRegressor, ridge
from cebra_halfunet.callbacks import Callback
from cebra_halfunet.datasets import make_natural_movie_v1
from cebra_halfunet.demo import DEMO_TEMPERATURE, demo_cebra
from cebra_halfunet.metrics import identification_accuracy, reconstruction_scores
from cebra_halfunet.splits import frame_digests, frame_ids

NEIGHBOURS = (1, 5, 15, 50, 100)
REPEATS = 10
CEBRA_ITERATIONS = 2000
#: Noise of condition (c), in units of each standardised principal component.
PCA_NOISE = 0.2
RECORDS = Path(__file__).with_name("suite_records.json")


@dataclass(frozen=True)
class Condition:
    """One condition of the suite: the movie, who sees it, and how it is embedded."""

    name: str
    title: str
    n_frames: int
    size: tuple[int, int]
    n_neurons: int
    embedding: str  # "cebra" or "pca"
    simulated_at: tuple[int, int] = (64, 128)  # frame size the neurons see

    def recording(self, size: tuple[int, int], n_neurons: int):
        return make_natural_movie_v1(self.n_frames, size, n_neurons=n_neurons, n_repeats=REPEATS, seed=0)


CONDITIONS = {
    "a": Condition("a", "(a) low: 600 frames, 800 neurons, CEBRA", 600, (64, 128), 800, "cebra"),
    "b": Condition("b", "(b) middle: 670 frames, 3,000 neurons, CEBRA", 670, (64, 128), 3000, "cebra"),
    "c": Condition("c", f"(c) high: 670 frames, PCA-32 of the pixels + noise {PCA_NOISE}", 670, (64, 128), 1, "pca"),
    "d": Condition("d", "(d) 128x256: (b)'s embeddings, frames at 128x256", 670, (128, 256), 3000, "cebra"),
}


def load_condition(condition: Condition, cache: Path) -> dict:
    """Training and test data of a condition: ``z_train``, ``y_train`` ``(N, 1, H, W)``,
    ``frames_train`` (frame number of each training sample), ``z_test``, ``y_test``, ``frames_test``."""
    recording = condition.recording(condition.simulated_at, condition.n_neurons)
    train, test = np.flatnonzero(recording.is_train), np.flatnonzero(recording.is_test)
    frames = recording.frames
    if condition.size != condition.simulated_at:
        frames = condition.recording(condition.size, 1).frames  # same eye path, other resolution
    data = {
        "y_train": np.tile(frames[train], (REPEATS - 1, 1, 1, 1)),
        "frames_train": np.tile(train, REPEATS - 1),
        "y_test": frames[test],
        "frames_test": test,
    }
    if condition.embedding == "pca":
        data["z_train"], data["z_test"] = pca_embeddings(recording.frames, train, test)
    else:
        neural = recording.neural
        X_train, X_test = neural[:-1, train].reshape(-1, neural.shape[-1]), neural[-1, test]
        labels = np.tile(recording.frames[train], (REPEATS - 1, 1, 1, 1))
        key = f"cebra_{condition.n_frames}f_{condition.n_neurons}n_{condition.simulated_at[0]}x{condition.simulated_at[1]}"
        data["z_train"], data["z_test"] = cebra_embeddings(X_train, labels, X_test, cache / f"{key}.npz")
    return data


def pca_embeddings(frames: np.ndarray, train: np.ndarray, test: np.ndarray, dimension: int = 32):
    """``(z_train, z_test)``: standardised principal components of the training frames' pixels,
    plus seeded noise of ``PCA_NOISE`` drawn anew in every sample (every repeat)."""
    flat = frames.reshape(len(frames), -1)
    pca = PCA(dimension, whiten=True, random_state=0).fit(flat[train])
    rng = np.random.default_rng(0)
    z_train = np.tile(pca.transform(flat[train]), (REPEATS - 1, 1))
    z_test = pca.transform(flat[test])
    noisy = [z + PCA_NOISE * rng.standard_normal(z.shape) for z in (z_train, z_test)]
    return tuple(z.astype(np.float32) for z in noisy)


def cebra_embeddings(X_train, y_train, X_test, path: Path):
    """``(z_train, z_test)`` of the demo's CEBRA model (PCA label), cached at ``path``."""
    if path.exists():
        cached = np.load(path)
        return cached["z_train"], cached["z_test"]
    start = time.perf_counter()
    embedding = CEBRAEmbedding(demo_cebra(32, CEBRA_ITERATIONS, DEMO_TEMPERATURE), label="pca", random_state=0)
    embedding.fit(X_train, y_train.reshape(len(y_train), -1))
    z_train, z_test = embedding.transform(X_train), embedding.transform(X_test)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, z_train=z_train, z_test=z_test, seconds=time.perf_counter() - start)
    print(f"CEBRA {path.name}: {time.perf_counter() - start:.0f} s", flush=True)
    return z_train, z_test


def test_scores(data: dict, prediction: np.ndarray) -> dict:
    """SSIM, PSNR (dB), pixel r and 2-way identification of test predictions (clipped to [0, 1])."""
    prediction = np.clip(prediction, 0, 1)
    ssim, psnr, r = reconstruction_scores(data["y_test"], prediction, data_range=1.0)
    identification = identification_accuracy(data["y_test"], prediction, 2, frame_index=data["frames_test"])
    return {"ssim": ssim, "psnr": psnr, "r": r, "id2": identification}


def nearest_neighbours(data: dict) -> dict:
    """Cosine kNN, k by ``GroupKFold(5)`` over frame ids."""
    y_train = data["y_train"]
    search = GridSearchCV(
        ChunkedKNeighborsRegressor(metric="cosine"), {"n_neighbors": list(NEIGHBOURS)}, cv=GroupKFold(5), error_score="raise"
    )
    search.fit(data["z_train"], y_train.reshape(len(y_train), -1), groups=frame_ids(frame_digests(y_train)))
    prediction = search.predict(data["z_test"]).reshape(len(data["z_test"]), *y_train.shape[1:])
    return {"k": search.best_params_["n_neighbors"], **test_scores(data, prediction)}


def parse_configuration(text: str) -> dict:
    """``"a=1,b='x'"`` -> ``{"a": 1, "b": "x"}`` (empty text: the defaults)."""
    parameters = {}
    for assignment in filter(None, text.split(",")):
        name, value = assignment.split("=")
        parameters[name.strip()] = ast.literal_eval(value)
    return parameters


def fit_default(data: dict, configuration: str, seed: int) -> dict:
    """One fit of a configuration: what it cost, how it ended, how it scores."""
    return fit_record(data, HalfUNetRegressor(random_state=seed, **parse_configuration(configuration)))


def fit_record(data: dict, model: HalfUNetRegressor) -> dict:
    start = time.perf_counter()
    model.fit(data["z_train"], data["y_train"])
    seconds = time.perf_counter() - start
    return {
        "fit_s": seconds,
        "steps": training_steps(model),
        "epochs": model.n_epochs_,
        "best_epoch": model.best_epoch_,
        "stop_reason": model.stop_reason_,
        "max_epochs": model.max_epochs,
        "held_out_over_train_loss": held_out_ratio(model),
        "history": model.history_,
        **test_scores(data, model.predict(data["z_test"])),
    }


def training_steps(model: HalfUNetRegressor) -> int:
    """Optimizer steps of the fit: the first phase's epochs over the training rows, the last
    phase's over every row (code before the last phase: every epoch over the training rows)."""
    training_rows = int(np.sum(~(model.validation_mask_ | model.excluded_mask_)))
    decay = sum(record.get("phase") == "decay" for record in model.history_)
    batches = lambda rows: -(-rows // model.batch_size)  # noqa: E731
    return (model.n_epochs_ - decay) * batches(training_rows) + decay * batches(len(model.validation_mask_))


def held_out_ratio(model: HalfUNetRegressor) -> float | None:
    """Loss on the held-out frames over the loss on training rows, at the end of the fit
    (once the last phase has trained both; None where the history has no such loss)."""
    last = model.history_[-1]
    if last.get("held_out_loss") is None or not last.get("train_loss"):
        return None
    return last["held_out_loss"] / last["train_loss"]


def per_epoch_curve(data: dict, configuration: str, seed: int) -> dict:
    """One fit (as :func:`fit_default`; its seconds include the scoring) with the test
    scores after every epoch, of the weights that are kept at that point."""
    model = HalfUNetRegressor(random_state=seed, **parse_configuration(configuration))
    rows = []

    class ScoreEachEpoch(Callback):
        def on_train_begin(self, run):
            self.start = time.perf_counter()

        def on_epoch_end(self, run, record):
            scoring = copy.copy(model)
            scoring.module_ = copy.deepcopy(run.evaluated).eval()
            rows.append({"epoch": record["epoch"], "seconds": time.perf_counter() - self.start,
                         **test_scores(data, scoring.predict(data["z_test"]))})
            print(f"  epoch {record['epoch']}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()), flush=True)

    record = fit_record(data, model.set_params(callbacks=[ScoreEachEpoch()]))
    best = max(rows, key=lambda row: row["ssim"])
    return {**record, "curve": rows, "best_ssim": best["ssim"], "best_epoch_by_ssim": best["epoch"]}


# ------------------------------------------------------------------ records
def code_label() -> str:
    """The commit the code is at (with ``+changes`` when the tree differs from it)."""
    root = Path(__file__).resolve().parent.parent
    run = lambda *args: subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return run("rev-parse", "--short", "HEAD") + ("+changes" if run("status", "--porcelain", "cebra_halfunet") else "")


def load_records(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def store_record(path: Path, key: str, record: dict) -> None:
    """Add one record, under a lock: other processes of the suite write to the file too."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = load_records(path)
        records[key] = record
        path.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")


def run_once(path: Path, key: str, work, **facts) -> dict:
    """The record at ``key``, computed by ``work()`` unless it exists."""
    records = load_records(path)
    if key in records:
        return records[key]
    record = {**work(), **facts, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    store_record(path, key, record)
    print(key, {k: v for k, v in record.items() if k != "curve"}, flush=True)
    return record


# ------------------------------------------------------------------- tables
def _f(value, digits=3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def condition_table(records: dict, name: str) -> str:
    """One condition: baselines, then each label's configurations (seeds averaged), then curves."""
    rows = []
    for baseline in ("kNN", "ridge"):
        record = records.get(f"{name}|{baseline}")
        if record:
            label = f"kNN (cosine, k={record['k']})" if baseline == "kNN" else "ridge"
            rows.append([label, "", "", "", "", "", "", _f(record["ssim"]), _f(record["psnr"], 2), _f(record["r"]), _f(record["id2"])])
    fits: dict[tuple, list] = {}
    for key, record in records.items():
        parts = key.split("|")
        if parts[0] == name and len(parts) == 5 and parts[1] == "fit":
            fits.setdefault((parts[2], parts[3]), []).append(record)
    for (label, configuration), group in sorted(fits.items()):
        mean = lambda field: float(np.mean([r[field] for r in group]))  # noqa: E731
        reasons = ", ".join(sorted({f"{r['stop_reason']} ({r['epochs']}/{r['max_epochs']})" for r in group}))
        rows.append([
            f"{label}: {configuration or 'defaults'}", str(len(group)), _f(mean("fit_s"), 0), _f(mean("steps"), 0),
            _f(mean("epochs"), 1), reasons, str(sorted({r["threads"] for r in group})), _f(mean("ssim")),
            _f(mean("psnr"), 2), _f(mean("r")), _f(mean("id2")),
        ])
    header = ["decoder", "seeds", "fit (s)", "steps", "epochs", "stop reason (epochs/max)", "threads", "SSIM", "PSNR (dB)", "pixel r", "2-way id"]
    text = markdown_table(header, rows)
    for key, record in sorted(records.items()):
        parts = key.split("|")
        if parts[0] == name and parts[1] == "curve":
            ssim = " ".join(f"{row['ssim']:.3f}" for row in record["curve"])
            text += (
                f"\n\nHeld-out SSIM per epoch, {parts[2]}: {parts[3]} (seed {parts[4]}): {ssim}; best "
                f"{record['best_ssim']:.3f} at epoch {record['best_epoch_by_ssim']}."
            )
    return text


def _mean(records: list[dict], field: str) -> float:
    return float(np.mean([record[field] for record in records]))


def summary_rows(records: dict, name: str, old: str, new: str, reference: str, reference_labels: list) -> list | None:
    """One condition's row of the summary: kNN, the ``old`` and the ``new`` label's default
    fits (seeds averaged), ``R`` (the best test SSIM of the curve of ``reference`` run by the
    first of ``reference_labels`` that has one) and the targets of issue 28."""
    # the default's fits, seeds averaged: a curve of the default is a fit too (its seconds include the scoring)
    fits = lambda label: [r for k, r in records.items() if k.startswith((f"{name}|fit|{label}||", f"{name}|curve|{label}||"))]  # noqa: E731
    knn, before, after = records.get(f"{name}|kNN"), fits(old), fits(new)
    found = [(label, records[key]) for label in reference_labels if (key := f"{name}|curve|{label}|{reference}|0") in records]
    curve_label, curve = found[0] if found else (None, None)
    if not (knn and before and after):
        return None
    ssim, psnr, r = (_mean(after, field) for field in ("ssim", "psnr", "r"))
    ratios = [x["held_out_over_train_loss"] for x in after if x.get("held_out_over_train_loss")]
    untrained = [ratio for x in after if (ratio := pilot_ratio(x)) is not None]
    first = [ratio for x in after if (ratio := first_decoder_ratio(x)) is not None]
    best = curve["best_ssim"] if curve else None
    return [
        name, f"{knn['ssim']:.3f} / {knn['psnr']:.2f} / {knn['r']:.3f}",
        f"{_mean(before, 'ssim'):.3f} / {_mean(before, 'psnr'):.2f} / {_mean(before, 'r'):.3f} ({len(before)})",
        f"{ssim:.3f} / {psnr:.2f} / {r:.3f} ({len(after)})",
        f"{ssim - _mean(before, 'ssim'):+.3f}", f"{ssim - knn['ssim']:+.3f} / {psnr - knn['psnr']:+.2f} / {r - knn['r']:+.3f}",
        "" if best is None else f"{best:.3f} (epoch {curve['best_epoch_by_ssim']} of {curve['epochs']}, {curve_label})",
        "" if best is None else f"{ssim - best:+.3f}",
        ", ".join(sorted({f"{x['stop_reason']} {x['epochs']}/{x['max_epochs']}" for x in after})),
        f"{_mean(after, 'fit_s'):.0f} ({sorted({x['threads'] for x in after})})",
        "" if not ratios else f"{np.mean(untrained):.2f} -> {np.mean(first):.2f} -> {np.mean(ratios):.2f}",
    ]


def first_decoder_ratio(record: dict) -> float | None:
    """The held-out frames' loss over the other rows' after the decoder's first epoch (trained alike)."""
    decoder = [h for h in record.get("history", []) if h.get("phase") in ("stable", "decay")]
    return decoder[0]["held_out_loss"] / decoder[0]["train_loss"] if decoder and decoder[0].get("held_out_loss") else None


def pilot_ratio(record: dict) -> float | None:
    """The held-out frames' loss over the other rows' at the pilot's best epoch (not trained on)."""
    best = [h for h in record.get("history", []) if h.get("phase") == "pilot" and h["epoch"] == record.get("best_epoch")]
    return best[0]["valid_loss"] / best[0]["train_loss"] if best and best[0].get("valid_loss") else None


def write_summary(records: dict, names, old: str, new: str, reference: str, reference_labels: list) -> None:
    header = ["condition", "kNN SSIM / PSNR / r", f"{old} default (seeds)", f"{new} default (seeds)", "SSIM new - old",
              "new - kNN: SSIM / dB / r", f"R: best SSIM of {reference}", "new - R", "stop reason, epochs/max",
              "fit s (threads)", "held-out / other loss: pilot -> decoder's first epoch -> end"]
    rows = [row for name in names if (row := summary_rows(records, name, old, new, reference, reference_labels))]
    notes = (
        "The targets of issue 28: on every condition the stop rule ends the default fit; SSIM >= R - 0.005; on (b), (c) "
        "and (d) the default beats kNN by >= 0.03 SSIM and >= 0.3 dB with pixel r at most 0.005 below; on (a) SSIM, "
        "PSNR and r at least the old default's minus 0.005 / 0.05 dB / 0.005; against the old default (seeds averaged) "
        "no condition loses more than 0.005 SSIM. 'held-out / other loss': the loss on the frames the pilot held out "
        "over the loss on the other rows, at the pilot's best epoch (the pilot never trained them), after the decoder's first "
        "epoch and at the end of the fit (the decoder trains every frame alike: where the held-out stretches are easier "
        "or harder frames, the ratio stays where the first epoch put it)."
    )
    write_section("Suite: summary", markdown_table(header, rows), notes)


def write_tables(records: dict, names) -> None:
    design = (
        f"A movie shown {REPEATS} times, repeat-major; training: the training frames of repeats 1-{REPEATS - 1}; test: "
        f"the test stretches of repeat {REPEATS}, frames shown in no training repeat. Same embeddings for every "
        "decoder of a condition. Rows of a label (the code's commit) average the seeds; fit seconds are comparable "
        "only between rows run alone with 2 threads (column 'threads'). See the docstring of benchmarks/suite.py."
    )
    for name in names:
        write_section(f"Suite {CONDITIONS[name].title}", condition_table(records, name), design)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", nargs="*", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--configs", nargs="*", default=[""], help='HalfUNet parameters, e.g. "ensemble_size=1,lr=2e-3"')
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--curve", nargs="*", default=[], help="configurations to score after every epoch (seed: the first)")
    parser.add_argument("--label", default=None, help="name of the code the fits ran on (default: the commit)")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cebra_halfunet_suite"), help="embeddings")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--summary", nargs=2, metavar=("OLD", "NEW"), help="labels to compare in a summary table")
    parser.add_argument("--reference", default="early_stopping=False,max_epochs=24", help="the curve that gives R")
    parser.add_argument("--reference-label", nargs="+", help="the labels of the code that may have run that curve, "
                        "the first found per condition (default: NEW)")
    args = parser.parse_args()
    label = args.label or code_label()
    if not args.table_only:
        for name in args.conditions:
            data = load_condition(CONDITIONS[name], args.cache)
            facts = {"n_train": len(data["z_train"]), "n_test": len(data["z_test"])}
            print(f"({name}): {facts}", flush=True)
            run_once(args.records, f"{name}|kNN", lambda: nearest_neighbours(data), **facts)
            run_once(args.records, f"{name}|ridge", lambda: test_scores(data, ridge(data["z_train"], data["y_train"], data["z_test"])), **facts)
            for configuration in args.configs:
                for seed in args.seeds:
                    key = f"{name}|fit|{label}|{configuration}|{seed}"
                    run_once(args.records, key, lambda: fit_default(data, configuration, seed), **facts)
            for configuration in args.curve:
                key = f"{name}|curve|{label}|{configuration}|{args.seeds[0]}"
                run_once(args.records, key, lambda: per_epoch_curve(data, configuration, args.seeds[0]), **facts)
    write_tables(load_records(args.records), args.conditions)
    if args.summary:
        write_summary(load_records(args.records), args.conditions, *args.summary, args.reference,
                      args.reference_label or [args.summary[1]])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
