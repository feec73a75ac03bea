"""How much the simulated V1 population says about held-out frames, without CEBRA.

    python benchmarks/information.py [--neurons 400 800 2000]

A reference for the quality tables: decoders of the raw single-trial responses of
``make_natural_movie_v1`` (64x128, 1500 frames, 2 repeats), scored on the held-out
stretches. Features are square-rooted spike counts averaged over a 5-frame window centred on
each frame (CEBRA's offset models also see neighbouring frames). Photograph: multinomial
logistic regression naming which of the six photographs a held-out frame shows (chance 1/6).
Pixels: ridge regression with alpha chosen by contiguous 3-fold CV (leave-one-out would
leak: the other repeat of each frame lies next to it), predictions clipped to
[0, 1]. The mean image is the floor every decoder should pass.
"""

import argparse

import numpy as np
from scipy.ndimage import uniform_filter1d
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import KFold

from _results import markdown_table, write_section
from cebra_halfunet.datasets import make_natural_movie_v1
from cebra_halfunet.metrics import reconstruction_scores


def single_trials(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(R, T, ...)`` -> the frames in ``mask``, repeats next to each other, ``(T_mask * R, ...)``."""
    part = values[:, mask]
    return part.transpose(1, 0, *range(2, part.ndim)).reshape(-1, *part.shape[2:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--neurons", type=int, nargs="+", default=(400, 800, 2000))
    args = parser.parse_args()
    rows = []
    for n_neurons in args.neurons:
        recording = make_natural_movie_v1(1500, (64, 128), n_neurons=n_neurons, n_repeats=2, seed=0)
        repeats = len(recording.neural)
        features = np.sqrt(uniform_filter1d(recording.neural, 5, axis=1))
        split = {}
        for name, mask in (("train", recording.is_train), ("test", recording.is_test)):
            split[name] = (
                single_trials(features, mask),
                np.repeat(recording.photo[mask], repeats),
                np.repeat(recording.frames[mask], repeats, axis=0),
            )
        (x_train, photo_train, y_train), (x_test, photo_test, y_test) = split["train"], split["test"]
        if not rows:
            mean = np.broadcast_to(y_train.mean(0), y_test.shape)
            rows.append(["mean image", "-", "-", *(f"{s:.3f}" for s in reconstruction_scores(y_test, mean, data_range=1.0))])
        classifier = LogisticRegression(C=0.01, max_iter=2000).fit(x_train, photo_train)
        accuracy = (classifier.predict(x_test) == photo_test).mean()
        ridge = RidgeCV(alphas=(10.0, 100.0, 1000.0, 3000.0, 10000.0), cv=KFold(3)).fit(x_train, y_train.reshape(len(y_train), -1))
        prediction = np.clip(ridge.predict(x_test).reshape(y_test.shape), 0, 1)
        scores = reconstruction_scores(y_test, prediction, data_range=1.0)
        rows.append([f"ridge on {n_neurons} neurons", f"{accuracy:.2f}", f"{ridge.alpha_:g}", *(f"{s:.3f}" for s in scores)])
        print(rows[-1], flush=True)
    table = markdown_table(["decoder of raw responses", "photograph accuracy", "ridge alpha", "SSIM", "PSNR (dB)",
                            "pixel corr"], rows)
    write_section(
        "Information in the simulated population (no CEBRA)",
        table,
        "Built-in natural movie at 64x128 (1500 frames, 2 repeats); 2,160 training / 600 held-out single-trial "
        "samples. Features: square-rooted counts averaged over 5 frames centred on each frame. Photograph accuracy: "
        "logistic regression (C=0.01) naming which of 6 photographs a held-out frame shows (chance 0.17). Pixels: "
        "RidgeCV (alpha by contiguous 3-fold CV), clipped to [0, 1].",
    )


if __name__ == "__main__":
    main()
