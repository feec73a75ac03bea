"""The main job: CEBRA on simulated V1 responses to a natural movie, then HalfUNet
reconstructions of movie frames no model saw.

    python -m cebra_halfunet.demo [--size 64 128] [--rgb] [--neurons 800] [--latent-dim 512] [--loss l1]
                                  [--ensemble-size 3] [--epochs N] [--cebra-temperature 0.3] [--device auto]
                                  [--controls N]

The movie is made of photographs bundled with scikit-image; the neurons are a simulated
mouse V1 population (see :func:`cebra_halfunet.datasets.make_natural_movie_v1`). One
Pipeline, ``CEBRAEmbedding`` (CEBRA with a PCA-of-frames label) then ``HalfUNetRegressor``
(default parameters: a pilot on the training frames whose stop rule picks the length, then
the decoder on every frame for that length and a decay, bf16 where the CPU or GPU has bf16
units), is fitted on the training stretches and
reconstructs the held-out stretches. Prints the report of :func:`cebra_halfunet.evaluate_decoder`
(pixel correlation, SSIM, 2-way identification and 1-s window accuracy with 95% intervals) next
to the baselines (mean image, ridge, k nearest neighbours, cebra's MLP) on the same embeddings
and, with ``--controls N``, the shuffle controls; saves ``reconstruction_results.png``
(originals above reconstructions), ``learning_curve.png`` and ``frame_scores.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import cebra

    from cebra_halfunet import DecoderReport


#: CEBRA's InfoNCE temperature in the demo. On the built-in movie (64x128, 4000 frames), 0.3
#: gave every decoder of the embedding better held-out frames than CEBRA's default of 1.0
#: (kNN PSNR 16.2 -> 16.7 dB), and 0.1 helped kNN but not the HalfUNet (``benchmarks/RESULTS.md``).
DEMO_TEMPERATURE = 0.3

#: Frames per second of the built-in movie (``make_natural_movie_v1``'s ``frame_rate``): the window
#: of the window accuracy, 1 s as in the CEBRA paper.
MOVIE_FPS = 15


def demo_cebra(
    output_dimension: int = 32,
    max_iterations: int = 2000,
    temperature: float = DEMO_TEMPERATURE,
    device: str = "cpu",
    verbose: bool = False,
) -> cebra.CEBRA:
    """The CEBRA model of the demo and of ``benchmarks/quality.py``: offset10-model,
    batch 512, time offset 10, cosine InfoNCE at ``temperature``."""
    import cebra

    return cebra.CEBRA(
        model_architecture="offset10-model",
        output_dimension=output_dimension,
        max_iterations=max_iterations,
        temperature=temperature,
        batch_size=512,
        time_offsets=10,
        device=device,
        verbose=verbose,
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(64, 128), metavar=("H", "W"), help="frame size")
    parser.add_argument("--rgb", action="store_true", help="colour frames (3 channels)")
    parser.add_argument("--frames", type=int, default=4000, help="frames in the movie (more frames, more views to learn from)")
    parser.add_argument("--repeats", type=int, default=2, help="repeats of the movie in the recording")
    parser.add_argument("--neurons", type=int, default=800, help="simulated V1 neurons (more neurons, more information)")
    parser.add_argument("--latent-dim", type=int, default=512, help=">= 1024 selects the large decoder body")
    parser.add_argument("--loss", default="l1", help="l1 (the estimator's default), mse, bce, ssim or l1_ssim")
    parser.add_argument("--ensemble-size", type=int, default=3, help="decoders averaged (the estimator's default: 3)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="maximum decoder epochs (default: the estimator's max_epochs; the stop rule may end it sooner)")
    parser.add_argument("--cebra-iterations", type=int, default=2000)
    parser.add_argument("--embedding-dim", type=int, default=32)
    parser.add_argument("--cebra-temperature", type=float, default=DEMO_TEMPERATURE,
                        help="InfoNCE temperature of CEBRA's cosine similarities")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--controls", type=int, default=0, metavar="N",
                        help="refits per shuffle control (neural data shuffled, targets shifted); each costs one fit")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the figures")
    return parser.parse_args(argv)


def main(argv=None) -> DecoderReport:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    from sklearn.pipeline import make_pipeline

    from cebra_halfunet import CEBRAEmbedding, HalfUNetRegressor, evaluate_decoder
    from cebra_halfunet.baselines import BASELINES, timed
    from cebra_halfunet.datasets import make_natural_movie_v1
    from cebra_halfunet.plotting import plot_frame_scores, plot_learning_curve, plot_reconstructions

    data = make_natural_movie_v1(args.frames, tuple(args.size), rgb=args.rgb, n_neurons=args.neurons,
                                 n_repeats=args.repeats, seed=args.seed)
    X_train, y_train, X_test, y_test = data.train_test_split()
    print(f"Recording: {args.frames} frames of {data.frames.shape[1:]} from {len(data.photographs)} photographs, "
          f"{data.neural.shape[-1]} V1 neurons, {args.repeats} repeats; {data.is_test.sum()} frames in held-out "
          f"stretches ({len(X_train)} training / {len(X_test)} test samples).")

    embedder = demo_cebra(args.embedding_dim, args.cebra_iterations, args.cebra_temperature,
                          device="cuda_if_available" if args.device == "auto" else args.device, verbose=True)
    cap = {} if args.epochs is None else {"max_epochs": args.epochs}
    decoder = HalfUNetRegressor(latent_dim=args.latent_dim, ensemble_size=args.ensemble_size, loss=args.loss,
                                device=args.device, random_state=args.seed, verbose=True, **cap)
    pipeline, seconds = timed(make_pipeline(CEBRAEmbedding(embedder, label="pca", random_state=args.seed), decoder).fit,
                              X_train, y_train)
    decoders = "1 decoder" if decoder.ensemble_size == 1 else f"{decoder.ensemble_size} decoders"
    print(f"CEBRA (temperature {pipeline[0].cebra_.temperature}) + HalfUNet ({decoders}, "
          f"{decoder.loss}): {seconds:.0f} s, "
          f"{decoder.n_epochs_} decoder epochs ({decoder.stop_reason_}), best {decoder.best_epoch_}, {decoder.precision_}")
    frame_index = data.per_trial(np.arange(args.frames), data.is_test)
    report = evaluate_decoder(pipeline, X_train, y_train, X_test, y_test, frame_index=frame_index, window=MOVIE_FPS,
                              baselines=BASELINES, n_shuffles=args.controls, random_state=args.seed)
    print(f"\nHeld-out frames: decoder, baselines on the same embeddings"
          f"{', controls (refitted without the neural signal)' if args.controls else ''}")
    print(report)
    print(f"window acc: best-correlated held-out frame within 1 s ({MOVIE_FPS} frames) of the true one, as the CEBRA "
          "paper scores movie decoding; its own kNN from the embedding to the frame number cannot name frames "
          "held out of training." + ("" if args.controls else " Add --controls 1 for the shuffle controls (one refit each)."))

    args.out.mkdir(parents=True, exist_ok=True)
    shown = np.linspace(0, len(y_test) - 1, 8).astype(int)  # spread over the held-out stretches
    figure = plot_reconstructions(y_test, pipeline.predict(X_test), indices=shown, frame_index=frame_index)
    figure.savefig(args.out / "reconstruction_results.png", dpi=110)
    plot_learning_curve(decoder).savefig(args.out / "learning_curve.png", dpi=110)
    plot_frame_scores(report).savefig(args.out / "frame_scores.png", dpi=110)
    print(f"\nSaved {args.out / 'reconstruction_results.png'}, {args.out / 'learning_curve.png'} and "
          f"{args.out / 'frame_scores.png'}")
    return report


if __name__ == "__main__":
    main()
