"""``halfunet_decoding``: the functional API, shaped like ``cebra.integrations.decoders``.

It trains a :class:`HalfUNetRegressor` (so the one training loop) and reports losses the
way ``cebra.integrations.decoders.mlp_decoding`` reports scores.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ._checks import check_choice, check_positive_int
from .estimator import HalfUNetRegressor
from .losses import LOSS_NAMES
from .networks import HalfUNetDecoder
from .targets import TargetFormat, as_array

__all__ = ["HalfUNetDecoder", "halfunet_decoding"]


def _concatenate_sessions(embedding, label, n_run, name):
    """Single-session data as arrays; CEBRA's multi-session dicts concatenated over sessions.

    ``embedding[session][n_run]`` is one run's embedding; ``label[session]`` the session's
    targets (an array or tensor, or a CEBRA dataset label with ``.continuous``).
    """
    if not isinstance(embedding, dict):
        return as_array(embedding, f"embedding_{name}"), as_array(label, f"label_{name}")
    if n_run is None:
        raise ValueError(f"n_run must be specified for multi-session (dict) embeddings, got {n_run}.")
    if not isinstance(label, dict) or set(label) != set(embedding):
        raise ValueError(f"label_{name} must be a dict with the same sessions as embedding_{name}.")
    for session, runs in embedding.items():
        if not 0 <= n_run < len(runs):
            raise ValueError(f"n_run={n_run} is out of range: embedding_{name}[{session!r}] has {len(runs)} run(s).")
    embeddings = [as_array(embedding[session][n_run], f"embedding_{name}[{session!r}][{n_run}]") for session in embedding]
    labels = [as_array(getattr(label[session], "continuous", label[session]), f"label_{name}[{session!r}]") for session in embedding]
    return np.concatenate(embeddings), np.concatenate(labels)


def _check_split(embedding: np.ndarray, label: np.ndarray, name: str) -> None:
    """Raise unless ``embedding_<name>`` is a non-empty finite ``(N, D)`` array and
    ``label_<name>`` holds N finite samples."""
    if embedding.ndim != 2 or len(embedding) == 0:
        raise ValueError(f"embedding_{name} must be a non-empty array (N, D), got shape {embedding.shape}.")
    if len(label) != len(embedding):
        raise ValueError(
            f"label_{name} must have one sample per row of embedding_{name}, got {len(label)} and {len(embedding)}."
        )
    for array, argument in ((embedding, f"embedding_{name}"), (label, f"label_{name}")):
        # min and max propagate NaN and reach +-inf: one pass, no temporary mask.
        if array.dtype.kind == "f" and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            raise ValueError(f"{argument} contains NaN or infinity.")


def halfunet_decoding(
    embedding_train,
    embedding_valid,
    label_train,
    label_valid,
    num_epochs: int = 100,
    lr: float = 0.001,
    batch_size: int = 32,
    device: str = "cuda",
    output_channels: int = 1,
    output_shape: tuple[int, int] = (128, 256),
    latent_dim: int | None = None,
    n_run: int | None = None,
    loss_fn: str = "mse",
    *,
    ensemble_size: int = 1,
    random_state=None,
    verbose: bool = False,
) -> tuple[float, float, torch.Tensor]:
    """Train a HalfUNet decoder on embeddings and images; predict the validation images.

    Parameters
    ----------
    embedding_train, embedding_valid : tensor/array ``(N, D)``, or dict
        Embeddings; for multi-session data, CEBRA's form ``{session: [run_0, run_1, ...]}``
        with ``n_run`` choosing the run.
    label_train, label_valid : tensor/array ``(N, C, H, W)`` or ``(N, H, W)``, or dict
        Target images (per session for dict embeddings).
    num_epochs, lr, batch_size
        Training length (all epochs, no early stopping: the validation set is yours),
        AdamW learning rate, mini-batch size.
    device : str, default "cuda"
        As in ``cebra.integrations.decoders``. Without CUDA this raises a ``ValueError``;
        pass ``"auto"`` to use CUDA when present and the CPU otherwise.
    output_channels, output_shape, latent_dim
        As in :class:`HalfUNetDecoder`; the labels must match them.
    n_run : int, optional
        Run index, required for dict (multi-session) embeddings.
    loss_fn : {"mse", "l1", "bce", "ssim", "l1_ssim"}
    ensemble_size : int, default 1
        Decoders trained side by side whose mean is the prediction (keyword only). One, as
        ``cebra.integrations.decoders`` trains one network; ``HalfUNetRegressor`` defaults to 3.
    random_state, verbose
        Seed and progress bar (keyword only).

    Returns
    -------
    train_loss : float
        Loss on the training data after the last epoch.
    valid_loss : float
        Loss on the validation data.
    predictions : torch.Tensor
        Reconstructed validation images, CPU, in the form of ``label_valid``
        (``(N, C, H, W)`` stays 4-d; probabilities for ``"bce"``).
    """
    x_train, y_train = _concatenate_sessions(embedding_train, label_train, n_run, "train")
    x_valid, y_valid = _concatenate_sessions(embedding_valid, label_valid, n_run, "valid")
    _check_split(x_train, y_train, "train")
    _check_split(x_valid, y_valid, "valid")
    if x_valid.shape[1] != x_train.shape[1]:
        raise ValueError(
            f"embedding_valid must have the width of embedding_train, {x_train.shape[1]}, got {x_valid.shape[1]}."
        )
    if y_valid.shape[1:] != y_train.shape[1:]:
        raise ValueError(f"label_valid samples have shape {y_valid.shape[1:]}, label_train {y_train.shape[1:]}.")
    check_positive_int(num_epochs, "num_epochs")
    check_choice(loss_fn, LOSS_NAMES, "loss_fn")
    try:
        with warnings.catch_warnings():  # the fit below gives any warning about the labels' form
            warnings.simplefilter("ignore")
            TargetFormat.infer(y_train, output_shape, output_channels)
    except ValueError as error:
        raise ValueError(f"label_train does not fit output_shape and output_channels: {error}") from None
    regressor = HalfUNetRegressor(
        output_shape=output_shape,
        output_channels=output_channels,
        latent_dim=latent_dim,
        ensemble_size=ensemble_size,
        loss=loss_fn,
        lr=lr,
        batch_size=batch_size,
        max_epochs=num_epochs,
        early_stopping=False,
        device=device,
        random_state=random_state,
        verbose=verbose,
    ).fit(x_train, y_train)
    predictions = regressor.predict(x_valid)
    valid_loss = regressor.evaluate_loss(x_valid, y_valid)
    return regressor.history_[-1]["train_loss"], valid_loss, torch.from_numpy(predictions)
