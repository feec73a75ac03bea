"""Reconstruction quality on frames never seen in training: baselines vs HalfUNetRegressor.

    python benchmarks/quality.py --size 64 128
    python benchmarks/quality.py --size 128 256 --frames 1000 --epochs 6 --decoders 512:l1 1024:l1_ssim:ensemble_size=1
    python benchmarks/quality.py --decoders 512:mse 512:mse:ema_decay=0 512:l1:embedding_noise=1,lr=3e-4

Data: ``make_natural_movie_v1`` (scikit-image photographs panned and jumped across, a
simulated V1 population, held-out stretches of the movie). One CEBRA embedding
(``CEBRAEmbedding``, PCA label, the demo's CEBRA model) is fitted on the training
responses; every decoder gets the same embeddings and is scored on the held-out frames
(single trials of every repeat): SSIM, PSNR, pixel correlation, 2-way identification and
1-s window accuracy (``cebra_halfunet.metrics``).
"""

import argparse
import ast
import time
from pathlib import Path

import numpy as np

from _results import markdown_table, write_section
from cebra_halfunet import CEBRAEmbedding, HalfUNetRegressor
from cebra_halfunet.baselines import BASELINES, timed
from cebra_halfunet.datasets import make_natural_movie_v1
from cebra_halfunet.demo import DEMO_TEMPERATURE, MOVIE_FPS, demo_cebra
from cebra_halfunet.metrics import frame_matches, reconstruction_scores, window_chance


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, nargs=2, default=(64, 128))
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, help="HalfUNet max_epochs (default: the estimator's)")
    parser.add_argument("--cebra-iterations", type=int, default=2000)
    parser.add_argument("--cebra-temperature", type=float, default=DEMO_TEMPERATURE)
    parser.add_argument(
        "--decoders", nargs="*", default=None, help="HalfUNet configurations as latent:loss[:param=value,...]"
    )
    parser.add_argument("--embeddings", type=Path, help="file to save the CEBRA embeddings to, or reuse them from")
    args = parser.parse_args()
    size = tuple(args.size)
    recording = make_natural_movie_v1(args.frames, size, n_repeats=args.repeats, seed=0)
    X_train, y_train, X_test, y_test = recording.train_test_split()
    frame_index = recording.per_trial(np.arange(args.frames), recording.is_test)
    flat_train = y_train.reshape(len(y_train), -1)

    start = time.perf_counter()
    if args.embeddings and args.embeddings.exists():  # reuse the embeddings of an earlier run
        cached = np.load(args.embeddings)
        z_train, z_test, cebra_time = cached["z_train"], cached["z_test"], float(cached["seconds"])
    else:
        embedding = CEBRAEmbedding(
            demo_cebra(32, args.cebra_iterations, args.cebra_temperature),
            label="pca",
            random_state=0,
        ).fit(X_train, flat_train)
        z_train, z_test = embedding.transform(X_train), embedding.transform(X_test)
        cebra_time = time.perf_counter() - start
        if args.embeddings:
            np.savez(args.embeddings, z_train=z_train, z_test=z_test, seconds=cebra_time)
    print(f"CEBRA: {cebra_time:.0f} s; {len(z_train)} training and {len(z_test)} held-out samples")

    def halfunet(parameters):
        def decode(z_train, y_train, z_test):
            epochs = {} if args.epochs is None else {"max_epochs": args.epochs}
            model = HalfUNetRegressor(random_state=0, verbose=True, **epochs, **parameters)
            return model.fit(z_train, y_train).predict(z_test)

        return decode

    decoders = dict(BASELINES)
    single = ["512:l1:ensemble_size=1", "512:mse:ensemble_size=1", "512:l1_ssim:ensemble_size=1", "1024:l1:ensemble_size=1"]
    for configuration in args.decoders or ["512:l1", *single]:
        latent_dim, loss, *changed = configuration.split(":")
        parameters = {"latent_dim": int(latent_dim), "loss": loss}
        for assignment in changed[0].split(",") if changed else []:
            name, value = assignment.split("=")
            parameters[name] = ast.literal_eval(value)
        decoders[f"HalfUNet latent {latent_dim}, {loss}{''.join(', ' + c for c in changed)}"] = halfunet(parameters)

    rows = []
    for name, fit_predict in decoders.items():
        prediction, seconds = timed(fit_predict, z_train, y_train, z_test)
        prediction = np.clip(prediction, 0, 1)
        matches = frame_matches(y_test, prediction, frame_index, window=MOVIE_FPS)
        scores = (*reconstruction_scores(y_test, prediction, data_range=1.0), matches.identification(2).mean(),
                  matches.window_hits.mean())
        rows.append([name, *(f"{s:.3f}" for s in scores), f"{seconds:.0f}"])
        print(rows[-1], flush=True)
    header = ["decoder", "SSIM", "PSNR (dB)", "pixel corr", "2-way id", f"within 1 s ({MOVIE_FPS} frames)", "fit + predict (s)"]
    table = markdown_table(header, rows)
    other_temperature = "" if args.cebra_temperature == DEMO_TEMPERATURE else f", CEBRA temperature {args.cebra_temperature}"
    write_section(
        f"Reconstruction quality at {size[0]}x{size[1]}{other_temperature}",
        table,
        f"Built-in natural movie ({args.frames} frames, {args.repeats} repeats, gray), {recording.neural.shape[-1]} "
        f"simulated V1 neurons; {len(z_train)} training / {len(z_test)} held-out single-trial samples. Same CEBRA "
        f"embedding for all (the demo's CEBRA model, offset10-model, 32-d, {args.cebra_iterations} "
        f"iterations, at temperature {args.cebra_temperature}; PCA label, {cebra_time:.0f} s). "
        f"HalfUNet: {'default max_epochs' if args.epochs is None else f'max_epochs={args.epochs}'} with early stopping, "
        "other parameters default unless named. Predictions clipped to "
        "[0, 1] before scoring; metrics are means over held-out frames. 2-way id: 2-way identification by pixel "
        "correlation among the held-out frames (chance 0.5); within 1 s: the best-correlated held-out frame lies "
        f"within {MOVIE_FPS} frames of the true one (chance {window_chance(len(y_test), MOVIE_FPS, frame_index):.3f}); "
        "repeats of a frame are not distractors (`cebra_halfunet.metrics`).",
    )


if __name__ == "__main__":
    main()
