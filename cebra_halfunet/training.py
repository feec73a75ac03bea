"""The one training loop and the batched prediction, shared by the estimator and the
functional API.

Data are in-memory tensors indexed by a shuffled permutation (no ``DataLoader``: for
tensors already in memory it only adds per-batch overhead). Targets stay in their stored
dtype (uint8 frames stay uint8) until a batch is on the compute device.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


def resolve_device(device) -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; otherwise check that ``device`` exists."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but CUDA is not available; use device='auto' or 'cpu'.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found.")
    elif resolved.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    return resolved


def _batches(n: int, batch_size: int, order: torch.Tensor | None = None):
    """Index batches: slices in order, or chunks of ``order`` (a permutation)."""
    for start in range(0, n, batch_size):
        yield slice(start, start + batch_size) if order is None else order[start : start + batch_size]


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.to(device, non_blocking=True)


@dataclass
class TrainingResult:
    """What one call of :func:`train` did.

    ``history`` holds one dict per epoch: ``epoch`` (counted over all calls),
    ``train_loss``, ``valid_loss`` (None without validation data) and ``duration_s``.
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    encode: Callable[[torch.Tensor], torch.Tensor],
    max_epochs: int,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
    X_valid: torch.Tensor | None = None,
    Y_valid: torch.Tensor | None = None,
    patience: int | None = None,
    first_epoch: int = 1,
    verbose: bool = False,
) -> TrainingResult:
    """Train ``model`` in place with mini-batches drawn from a seeded permutation.

    Parameters
    ----------
    model, optimizer, loss_fn
        ``loss_fn(model(x), encode(y))`` is minimised.
    X, Y : Tensor
        Inputs ``(N, D)`` float32 and targets ``(N, C, H, W)`` in their stored dtype.
    encode : callable
        Maps a stored target batch (already on ``device``) to float network units.
    max_epochs, batch_size : int
    device : torch.device
    generator : torch.Generator
        CPU generator for the shuffling: same seed, same batches.
    X_valid, Y_valid : Tensor, optional
        Validation data, evaluated after every epoch.
    patience : int or None
        With validation data: stop after ``patience`` epochs without improvement and
        restore the weights of the best epoch. ``None`` trains all ``max_epochs`` and
        keeps the last weights.
    first_epoch : int
        Number of the first epoch (continued training counts on).
    verbose : bool
        Show a progress bar with the losses.
    """
    model.to(device)
    result = TrainingResult()
    best_loss, best_state = math.inf, None
    n = len(X)
    bar = tqdm(range(first_epoch, first_epoch + max_epochs), desc="HalfUNet", unit="epoch", disable=not verbose)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        total = torch.zeros((), device=device)
        for index in _batches(n, batch_size, torch.randperm(n, generator=generator)):
            prediction = model(_to_device(X[index], device))
            loss = loss_fn(prediction, encode(_to_device(Y[index], device)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)
        record = {"epoch": epoch, "train_loss": total.item() / n, "valid_loss": None}
        if X_valid is not None:
            record["valid_loss"] = evaluate(model, loss_fn, X_valid, Y_valid, encode, batch_size, device)
            if record["valid_loss"] < best_loss:
                best_loss, result.best_epoch = record["valid_loss"], epoch
                best_state = copy.deepcopy(model.state_dict()) if patience is not None else None
        record["duration_s"] = time.perf_counter() - start
        result.history.append(record)
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k.endswith("loss") and v is not None})
        if patience is not None and result.best_epoch is not None and epoch - result.best_epoch >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return result


@torch.no_grad()
def evaluate(model, loss_fn, X, Y, encode, batch_size: int, device: torch.device) -> float:
    """Mean of ``loss_fn`` over all samples, in batches, in eval mode."""
    model.eval()
    total = torch.zeros((), device=device)
    for index in _batches(len(X), batch_size):
        loss = loss_fn(model(_to_device(X[index], device)), encode(_to_device(Y[index], device)))
        total += loss * len(X[index])
    return total.item() / len(X)


@torch.no_grad()
def predict_into(
    model: nn.Module,
    X: torch.Tensor,
    out: np.ndarray,
    decode: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Write ``decode(model(X))`` batch by batch into the preallocated array ``out``.

    Memory beyond ``out`` is one batch of inputs and outputs, whatever ``len(X)``.
    """
    model.to(device).eval()
    for index in _batches(len(X), batch_size):
        out[index] = decode(model(_to_device(X[index], device))).cpu().numpy()
    return out
