"""The main job: CEBRA on simulated neurons, then HalfUNet reconstructions of held-out frames.

    python -m cebra_halfunet.demo [--size 64 128] [--rgb] [--latent-dim 512] [--epochs 20]

One Pipeline, ``CEBRAEmbedding`` (CEBRA with a PCA-of-frames label) then
``HalfUNetRegressor``, is fitted on the first 80% of a simulated recording and
reconstructs the frames of the last 20%, a stretch of the movie no model saw.
Prints SSIM / PSNR / pixel correlation next to two baselines (the mean image and k
nearest neighbours) and saves ``reconstruction_results.png`` and ``learning_curve.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(64, 128), metavar=("H", "W"), help="frame size")
    parser.add_argument("--rgb", action="store_true", help="colour frames (3 channels)")
    parser.add_argument("--frames", type=int, default=2000, help="frames in the recording")
    parser.add_argument("--latent-dim", type=int, default=512, help=">= 1024 selects the large decoder body")
    parser.add_argument("--loss", default="l1_ssim", help="mse, l1, bce, ssim or l1_ssim")
    parser.add_argument("--epochs", type=int, default=20, help="maximum decoder epochs (early stopping)")
    parser.add_argument("--cebra-iterations", type=int, default=2000)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the figures")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import cebra
    import matplotlib

    matplotlib.use("Agg")
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline

    from cebra_halfunet import CEBRAEmbedding, HalfUNetRegressor
    from cebra_halfunet.datasets import make_moving_blobs
    from cebra_halfunet.metrics import peak_signal_noise_ratio, pixel_correlation, structural_similarity
    from cebra_halfunet.plotting import plot_learning_curve, plot_reconstructions

    data = make_moving_blobs(args.frames, tuple(args.size), channels=3 if args.rgb else 1, seed=args.seed)
    split = int(0.8 * args.frames)
    frames_train, frames_test = data.frames[:split], data.frames[split:]
    print(f"Recording: {args.frames} frames of {data.frames.shape[1:]}, {data.neural.shape[1]} neurons; "
          f"the last {args.frames - split} frames are held out.")

    start = time.perf_counter()
    embedder = cebra.CEBRA(
        model_architecture="offset10-model",
        output_dimension=args.embedding_dim,
        max_iterations=args.cebra_iterations,
        batch_size=512,
        time_offsets=10,
        device="cuda_if_available" if args.device == "auto" else args.device,
        verbose=True,
    )
    pipeline = make_pipeline(
        CEBRAEmbedding(embedder, label="pca", random_state=args.seed),
        HalfUNetRegressor(
            latent_dim=args.latent_dim,
            loss=args.loss,
            max_epochs=args.epochs,
            device=args.device,
            random_state=args.seed,
            verbose=True,
        ),
    ).fit(data.neural[:split], frames_train)
    decoder = pipeline[-1]
    print(f"CEBRA + HalfUNet: {time.perf_counter() - start:.1f} s, {decoder.n_epochs_} decoder epochs, "
          f"best {decoder.best_epoch_}")
    embedding_train, embedding_test = (pipeline[0].transform(part) for part in (data.neural[:split], data.neural[split:]))

    knn = GridSearchCV(KNeighborsRegressor(), {"n_neighbors": [1, 3, 5, 10, 20, 50]}, cv=KFold(5))
    knn.fit(embedding_train, frames_train.reshape(split, -1))
    predictions = {
        "mean image": np.broadcast_to(frames_train.mean(axis=0), frames_test.shape),
        f"kNN (k={knn.best_params_['n_neighbors']})": knn.predict(embedding_test).reshape(frames_test.shape),
        "HalfUNetRegressor": decoder.predict(embedding_test),  # = pipeline.predict on the test recording
    }
    scores = {}
    print(f"\n{'held-out frames':<22}{'SSIM':>8}{'PSNR dB':>9}{'corr':>8}")
    for name, prediction in predictions.items():
        scores[name] = (
            structural_similarity(frames_test, prediction, data_range=1.0),
            peak_signal_noise_ratio(frames_test, prediction, data_range=1.0),
            pixel_correlation(frames_test, prediction),
        )
        print(f"{name:<22}{scores[name][0]:>8.3f}{scores[name][1]:>9.2f}{scores[name][2]:>8.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    plot_reconstructions(frames_test, predictions["HalfUNetRegressor"]).savefig(args.out / "reconstruction_results.png", dpi=110)
    plot_learning_curve(decoder).savefig(args.out / "learning_curve.png", dpi=110)
    print(f"\nSaved {args.out / 'reconstruction_results.png'} and {args.out / 'learning_curve.png'}")
    return scores


if __name__ == "__main__":
    main()
