"""How much the simulated V1 population says about held-out frames, without CEBRA.

    python benchmarks/information.py [--frames 1500 4000] [--neurons 400 800 2000]

A reference for the quality tables: decoders of the raw single-trial responses of
``make_natural_movie_v1`` (64x128, 2 repeats), scored on the held-out stretches, for movies
of each length and populations of each size. Features are square-rooted spike counts
averaged over a 5-frame window centred on each frame (CEBRA's offset models also see
neighbouring frames). Photograph: multinomial logistic regression naming which of the six
photographs a held-out frame shows (chance 1/6). Pixels: ridge regression with alpha chosen
by contiguous 3-fold CV (leave-one-out would leak: the other repeat of each frame lies next
to it), predictions clipped to [0, 1]. The mean image is the floor every decoder should pass.
"""

import argparse
from dataclasses import replace

import numpy as np
from scipy.ndimage import uniform_filter1d
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import KFold

from _results import markdown_table, write_section
from cebra_halfunet.baselines import mean_image
from cebra_halfunet.datasets import make_natural_movie_v1
from cebra_halfunet.metrics import reconstruction_scores


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, nargs="+", default=(1500, 4000))
    parser.add_argument("--neurons", type=int, nargs="+", default=(400, 800, 2000))
    args = parser.parse_args()
    rows = []
    for n_frames in args.frames:
        for n_neurons in args.neurons:
            rows.extend(decode_population(n_frames, n_neurons, with_mean_image=n_neurons == args.neurons[0]))
    table = markdown_table(["frames", "decoder of raw responses", "photograph accuracy", "ridge alpha", "SSIM",
                            "PSNR (dB)", "pixel corr"], rows)
    write_section(
        "Information in the simulated population (no CEBRA)",
        table,
        "Built-in natural movie at 64x128, 2 repeats; the held-out stretches are 20% of the frames, and each frame "
        "gives one single-trial sample per repeat. Features: square-rooted counts averaged over 5 frames centred on "
        "each frame. Photograph accuracy: logistic regression (C=0.01) naming which of 6 photographs a held-out "
        "frame shows (chance 0.17). Pixels: RidgeCV (alpha by contiguous 3-fold CV), clipped to [0, 1].",
    )


def decode_population(n_frames: int, n_neurons: int, with_mean_image: bool) -> list[list[str]]:
    """Table rows: the mean image (if asked; it depends on the frames only) and the ridge
    decoder of ``n_neurons`` raw responses to a movie of ``n_frames``."""
    recording = make_natural_movie_v1(n_frames, (64, 128), n_neurons=n_neurons, n_repeats=2, seed=0)
    features = np.sqrt(uniform_filter1d(recording.neural, 5, axis=1))
    x_train, y_train, x_test, y_test = replace(recording, neural=features).train_test_split()
    photo_train, photo_test = (recording.per_trial(recording.photo, mask) for mask in (recording.is_train, recording.is_test))
    rows = []
    if with_mean_image:
        scores = reconstruction_scores(y_test, mean_image(x_train, y_train, x_test), data_range=1.0)
        rows.append([str(n_frames), "mean image", "-", "-", *(f"{s:.3f}" for s in scores)])
    classifier = LogisticRegression(C=0.01, max_iter=2000).fit(x_train, photo_train)
    accuracy = (classifier.predict(x_test) == photo_test).mean()
    ridge = RidgeCV(alphas=(10.0, 100.0, 1000.0, 3000.0, 10000.0), cv=KFold(3)).fit(x_train, y_train.reshape(len(y_train), -1))
    prediction = np.clip(ridge.predict(x_test).reshape(y_test.shape), 0, 1)
    scores = reconstruction_scores(y_test, prediction, data_range=1.0)
    rows.append([str(n_frames), f"ridge on {n_neurons} neurons", f"{accuracy:.2f}", f"{ridge.alpha_:g}",
                 *(f"{s:.3f}" for s in scores)])
    print(rows, flush=True)
    return rows


if __name__ == "__main__":
    main()
