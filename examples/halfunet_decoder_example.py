"""The guide's workflow end to end, with the functional API.

    python examples/halfunet_decoder_example.py [--size 32 64] [--epochs 15]

1. fit CEBRA on neural data (label: a PCA of the movie frames), 2. transform the training and
validation parts of the recording, 3. train a HalfUNet decoder on the frames with
``halfunet_decoding``, 4. save a figure with originals above reconstructions.
Runs on a CPU in a few minutes on the built-in generated data.
"""

import argparse

import cebra
import matplotlib
import torch

matplotlib.use("Agg")

from cebra_halfunet import CEBRAEmbedding, halfunet_decoding
from cebra_halfunet.datasets import make_moving_blobs
from cebra_halfunet.plotting import plot_reconstructions

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--size", type=int, nargs=2, default=(32, 64), metavar=("H", "W"))
parser.add_argument("--epochs", type=int, default=15)
parser.add_argument("--latent-dim", type=int, default=512)
parser.add_argument("--output", default="reconstruction_results.png")
args = parser.parse_args()

# Neural data (time, neurons) and the movie frames shown meanwhile (time, 1, H, W).
data = make_moving_blobs(n_frames=2000, output_shape=tuple(args.size), seed=0)
train, valid = slice(0, 1600), slice(1600, 2000)

# 1-2. CEBRA, fitted on the training part only, then both parts embedded.
embedder = CEBRAEmbedding(
    cebra.CEBRA(model_architecture="offset10-model", output_dimension=16, max_iterations=1500,
                batch_size=512, time_offsets=10, device="cuda_if_available"),
    label="pca",
    random_state=0,
).fit(data.neural[train], data.frames[train])
embedding_train = torch.from_numpy(embedder.transform(data.neural[train]))
embedding_valid = torch.from_numpy(embedder.transform(data.neural[valid]))

# 3. The decoder.
train_loss, valid_loss, reconstructed = halfunet_decoding(
    embedding_train,
    embedding_valid,
    torch.from_numpy(data.frames[train]),
    torch.from_numpy(data.frames[valid]),
    num_epochs=args.epochs,
    lr=1e-3,
    batch_size=32,
    device="auto",
    output_channels=1,
    output_shape=tuple(args.size),
    latent_dim=args.latent_dim,
    loss_fn="l1_ssim",
    random_state=0,
    verbose=True,
)
print(f"train loss {train_loss:.4f}, validation loss {valid_loss:.4f}, predictions {tuple(reconstructed.shape)}")

# 4. Originals above reconstructions.
plot_reconstructions(data.frames[valid], reconstructed.numpy()).savefig(args.output, dpi=110)
print(f"Saved {args.output}")
