"""CEBRA's fit time inside the Pipeline: flattened frames as label vs the compact PCA label.

    python benchmarks/cebra_labels.py [--iterations 20]

4,000 samples of 120 simulated neurons; the same CEBRA settings in both rows. "pixel label" is
what `make_pipeline(cebra.CEBRA(...), HalfUNetRegressor(...))` does with flattened frames;
"compact label" is `CEBRAEmbedding(cebra.CEBRA(...), label="pca")` (PCA time included).
"""

import argparse
import time

import cebra

from _results import markdown_table, write_section
from cebra_halfunet import CEBRAEmbedding
from cebra_halfunet.datasets import make_moving_blobs


def cebra_model(iterations):
    return cebra.CEBRA(model_architecture="offset10-model", output_dimension=16, max_iterations=iterations,
                       batch_size=512, time_offsets=10, device="cpu", verbose=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for size in ((64, 128), (128, 256)):
        data = make_moving_blobs(4000, size, seed=0)
        flat = data.frames.reshape(len(data.frames), -1)
        start = time.perf_counter()
        cebra_model(args.iterations).fit(data.neural, flat)
        pixel = time.perf_counter() - start
        start = time.perf_counter()
        CEBRAEmbedding(cebra_model(args.iterations), label="pca", random_state=0).fit(data.neural, flat)
        compact = time.perf_counter() - start
        rows.append([f"{size[0]}x{size[1]}", flat.shape[1], f"{pixel:.2f}", f"{compact:.2f}",
                     f"{pixel / args.iterations:.3f}", f"{compact / args.iterations:.3f}", f"{pixel / compact:.1f}x"])
    table = markdown_table(["frames", "pixel label dims", "pixel label fit (s)", "compact label fit (s)",
                            "s/iteration pixel", "s/iteration compact", "pixel / compact"], rows)
    write_section("CEBRA fit time: pixel label vs compact label", table,
                  f"{args.iterations} CEBRA iterations per fit, batch 512, offset10-model, output dimension 16; "
                  "the compact label is 8 PCA components of at most 1024 pixels.")


if __name__ == "__main__":
    main()
