"""Predictions of decoders fitted in several configurations, saved by one version of the
code and checked bit for bit against another (a refactor must change no prediction).

    cd /work/main && PYTHONPATH=. python /path/to/benchmarks/refactor_identity.py --save /tmp/ref
    cd /work/wt/r20 && PYTHONPATH=. python benchmarks/refactor_identity.py --check /tmp/ref

The embeddings and frames are generated from fixed seeds and saved with the reference, so
both runs fit on the same bytes. CPU only; tiny sizes, a few epochs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

import cebra_halfunet
from cebra_halfunet import HalfUNetRegressor, halfunet_decoding

BASE = dict(latent_dim=16, max_epochs=3, batch_size=16, random_state=0, device="cpu")


def make_data(n=48, shape=(8, 16), channels=1, dim=4, seed=0):
    """Embeddings ``(n, dim)`` and smooth images ``(n, channels, H, W)`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dim)).astype(np.float32)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    images = [[np.sin((3 + r[0]) * xx * 4 + r[1] + c) * np.cos((2 + r[2]) * yy * 4 + r[3]) for c in range(channels)] for r in z]
    return z, ((np.asarray(images) + 1) / 2).astype(np.float32)


def crash_at_batch(n):
    """Context in which the training loss raises KeyboardInterrupt at training batch ``n``
    (a fit killed mid-run, leaving its checkpoint)."""
    original = HalfUNetRegressor._training_loss

    def training_loss(self):
        loss, count = original(self), [0]

        def counted(prediction, target):
            if prediction.requires_grad:
                count[0] += 1
                if count[0] == n:
                    raise KeyboardInterrupt
            return loss(prediction, target)

        return counted

    class Patch:
        def __enter__(self):
            HalfUNetRegressor._training_loss = training_loss

        def __exit__(self, *exc):
            HalfUNetRegressor._training_loss = original

    return Patch()


def run_all(data: dict, folder: str) -> dict:
    """Name -> predictions (and losses) of every configuration."""
    z, images, z_test = data["z"], data["images"], data["z_test"]
    out = {}

    def fit_predict(name, y, **params):
        model = HalfUNetRegressor(**(BASE | params)).fit(z, y)
        out[name] = model.predict(z_test)
        out[name + ".valid_loss"] = np.array([r["valid_loss"] or np.nan for r in model.history_])
        return model

    fit_predict("ensemble_ema_early", images[:, 0], ensemble_size=2)
    fit_predict("single_mse_noise", images, ensemble_size=1, loss="mse", ema_decay=0, early_stopping=False, embedding_noise=0.3)
    fit_predict("bce", images, ensemble_size=1, loss="bce")
    fit_predict("ssim_flat", images.reshape(len(images), -1), output_shape=(8, 16), ensemble_size=1, loss="l1_ssim")
    fit_predict("uint8", data["frames_uint8"], ensemble_size=2)
    memmap = np.lib.format.open_memmap(os.path.join(folder, "targets.npy"), mode="w+", dtype=np.float32, shape=images.shape)
    memmap[:] = images
    memmap.flush()
    fit_predict("memmap", np.load(os.path.join(folder, "targets.npy"), mmap_mode="r"), ensemble_size=1)

    path = os.path.join(folder, "run.ckpt")
    params = BASE | dict(ensemble_size=2, max_epochs=4, checkpoint_path=path)
    with crash_at_batch(7):  # epoch 3 of 4 (3 batches an epoch)
        try:
            HalfUNetRegressor(**params).fit(z, images)
        except KeyboardInterrupt:
            pass
    resumed = HalfUNetRegressor(**params).fit(z, images)
    out["checkpoint_resume"] = resumed.predict(z_test)
    resumed.save(os.path.join(folder, "saved.safetensors"))
    out["saved_loaded"] = HalfUNetRegressor.load(os.path.join(folder, "saved.safetensors")).predict(z_test)

    warm = HalfUNetRegressor(**(BASE | dict(ensemble_size=1, warm_start=True, early_stopping=False))).fit(z, images)
    warm.fit(z, images).partial_fit(z, images)
    out["warm_start_partial_fit"] = warm.predict(z_test)

    train_loss, valid_loss, predictions = halfunet_decoding(
        z, z_test, images, data["images_test"], num_epochs=2, batch_size=16, device="cpu", output_shape=(8, 16),
        latent_dim=16, random_state=0,
    )
    out["functional"] = predictions.numpy()
    out["functional.valid_loss"] = np.array([valid_loss])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", metavar="DIR", help="write the data and the reference predictions to DIR")
    group.add_argument("--check", metavar="DIR", help="compare with the reference in DIR")
    args = parser.parse_args()
    print(f"cebra_halfunet from {cebra_halfunet.__file__}")
    torch.set_num_threads(1)
    folder = args.save or args.check
    os.makedirs(folder, exist_ok=True)
    if args.save:
        z, images = make_data()
        z_test, images_test = make_data(n=12, seed=1)
        data = {"z": z, "images": images, "z_test": z_test, "images_test": images_test,
                "frames_uint8": (make_data(channels=3, seed=2)[1] * 255).round().astype(np.uint8)}
        np.savez(os.path.join(folder, "data.npz"), **data)
    data = dict(np.load(os.path.join(folder, "data.npz")))
    with tempfile.TemporaryDirectory() as scratch:
        results = run_all(data, scratch)
    if args.save:
        np.savez(os.path.join(folder, "reference.npz"), **results)
        print(f"saved {len(results)} arrays to {folder}")
        return 0
    reference = dict(np.load(os.path.join(folder, "reference.npz")))
    failures = 0
    print(f"{'configuration':28s} {'shape':>18s} {'dtype':>8s}  identical")
    for name in sorted(reference):
        same = name in results and results[name].dtype == reference[name].dtype and np.array_equal(
            results[name], reference[name], equal_nan=results[name].dtype.kind == "f"
        )
        failures += not same
        shape = str(reference[name].shape)
        print(f"{name:28s} {shape:>18s} {str(reference[name].dtype):>8s}  {'yes' if same else 'NO'}")
    print("all bit-identical" if not failures else f"{failures} differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
