"""The one training loop and the batched prediction, shared by the estimator and the
functional API.

Data are in-memory tensors indexed by a shuffled permutation (no ``DataLoader``: for
tensors already in memory it only adds per-batch overhead); targets on disk
(:class:`~cebra_halfunet.targets.DiskImages`) are indexed the same way and read batch by
batch. Targets stay in their stored
dtype (uint8 frames stay uint8) until a batch is on the compute device. On a GPU the data
move there once when they fit in a quarter of the free memory, and otherwise travel batch
by batch through pinned memory with non-blocking copies. No ``.item()`` per batch: the
epoch's loss is summed on the device and read once.
"""

from __future__ import annotations

import copy
import gc
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


#: Stretches the validation samples of a fit are spread over (see :func:`validation_mask`).
VALIDATION_STRETCHES = 10


def validation_mask(n_samples: int, n_valid: int, n_stretches: int = VALIDATION_STRETCHES) -> np.ndarray:
    """Boolean mask ``(n_samples,)`` of ``n_valid`` samples held out for validation.

    Samples are taken to be in time order (a recording). The held-out samples are
    ``min(n_stretches, n_valid)`` runs of consecutive samples, one at the end of each of as
    many equal parts of the recording. Each run is a stretch the training samples do not
    contain, so that neighbouring, correlated frames do not leak into the validation loss;
    spreading the runs keeps every part of the recording in training, where one stretch at
    the end would withhold the last scenes of a movie from the decoder altogether.
    """
    n_runs = max(min(n_stretches, n_valid), 1)
    parts = np.arange(n_runs + 1)
    train_lengths, valid_lengths = np.diff(parts * (n_samples - n_valid) // n_runs), np.diff(parts * n_valid // n_runs)
    pattern = np.stack([np.zeros(n_runs, dtype=bool), np.ones(n_runs, dtype=bool)], axis=1).ravel()
    return np.repeat(pattern, np.stack([train_lengths, valid_lengths], axis=1).ravel())


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


def release_device_memory() -> None:
    """Free what the caching allocator holds, so that the next fit (a grid search) has it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _batches(n: int, batch_size: int, order: torch.Tensor | None = None):
    """Index tensors of the batches, in order or as chunks of ``order`` (a permutation);
    each sorted, so that targets on disk are read front to back."""
    order = torch.arange(n) if order is None else order
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size].sort().values


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``; host batches bound for a GPU go through pinned memory, so the
    copy is asynchronous and overlaps the computation."""
    if device.type == "cuda" and not tensor.is_cuda:
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _forward(model: nn.Module, batch: torch.Tensor, device: torch.device, autocast: torch.dtype | None) -> torch.Tensor:
    """``model(batch)`` on ``device``, under autocast to ``autocast`` when given; float32 out."""
    with torch.autocast(device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        return model(_to_device(batch, device)).float()


def _batch_loss(model, loss_fn, inputs, Y, index, encode, device, autocast) -> torch.Tensor:
    """``loss_fn`` of the model's output for ``inputs`` against the targets ``Y[index]``."""
    return loss_fn(_forward(model, inputs, device, autocast), encode(_to_device(Y[_on(index, Y)], device)))


def _on(index: torch.Tensor, data) -> torch.Tensor:
    """``index`` on the device of ``data`` when ``data`` is a tensor (on a GPU when resident)."""
    return index.to(data.device) if isinstance(data, torch.Tensor) else index


def _resident(tensors: list[torch.Tensor | None], device: torch.device) -> list[torch.Tensor | None]:
    """On a GPU, move the data there once when it takes less than a quarter of the free
    memory (no copies per batch); otherwise, and on the CPU, leave it where it is."""
    if device.type != "cuda" or not all(t is None or isinstance(t, torch.Tensor) for t in tensors):
        return tensors
    size = sum(t.nbytes for t in tensors if t is not None)
    if size >= torch.cuda.mem_get_info(device)[0] / 4:
        return tensors
    return [None if t is None else t.to(device) for t in tensors]


@dataclass
class TrainingState:
    """Where a run of :func:`train` stands; enough to continue it exactly (checkpoints).

    Attributes
    ----------
    history : list of dict
        One dict per completed epoch: ``epoch`` (counted over all calls), ``train_loss``,
        ``valid_loss`` (None without validation data) and ``duration_s``.
    best_loss, best_epoch
        Lowest validation loss so far and its epoch (None before the first).
    best_weights : dict or None
        State dict of the best epoch (kept when early stopping is on).
    average_weights : dict or None
        State dict of the weight average (when averaging). Its tensors are the average's
        own, not a copy: they hold the average after the last completed epoch until
        training goes on (checkpoints are written at epoch ends).
    average_steps : int
        Updates that average has had.
    interrupted : bool
        The run was stopped by Ctrl-C (KeyboardInterrupt).
    """

    history: list[dict] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int | None = None
    best_weights: dict | None = None
    average_weights: dict | None = None
    average_steps: int = 0
    interrupted: bool = False

    def patience_exhausted(self, patience: int | None) -> bool:
        """``patience`` epochs have passed since the best one."""
        if patience is None or self.best_epoch is None:
            return False
        return self.history[-1]["epoch"] - self.best_epoch >= patience


class WeightAverage:
    """Exponential moving average of a model's parameters, updated after every step.

    Averaging the weights of the last ~``1 / (1 - decay)`` steps cancels much of the
    noise that the last mini-batches leave in them (Polyak & Juditsky 1992); the average
    generalises better than the weights of any single step. The average is corrected for
    its start as Adam's moments are (Kingma & Ba 2015): it weighs the weights after steps
    ``0..t`` by ``decay ** (t - i)``, normalised, and never the initial weights, so that a
    short run is not held back by them. Only parameters are averaged; buffers are copied
    once (the decoders' only buffers, the output offset and scale, do not train).

    Parameters
    ----------
    model : nn.Module
        The model being trained; ``module`` is a copy of it that holds the average.
    decay : float in (0, 1)
    weights : dict, optional
        State dict to start the average from (a resumed run); default: ``model``'s.
    steps : int
        Updates already made (a resumed run).
    """

    def __init__(self, model: nn.Module, decay: float, weights: dict | None = None, steps: int = 0):
        self.decay, self.steps = decay, steps
        self.module = copy.deepcopy(model).requires_grad_(False)
        if weights is not None:
            self.module.load_state_dict(weights)
        self._averages = list(self.module.parameters())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current parameters (one fused kernel per
        device and dtype, as timm's model EMA does, not one per tensor)."""
        weight = (1 - self.decay) / (1 - self.decay ** (self.steps + 1))
        torch._foreach_lerp_(self._averages, list(model.parameters()), weight)
        self.steps += 1


class _InterruptFlag:
    """Context in which Ctrl-C sets ``requested`` instead of raising, so that the loop can
    stop cleanly after the current batch. A second Ctrl-C raises at once. Outside the main
    thread (where signal handlers cannot be set) a KeyboardInterrupt arrives as usual."""

    requested = False

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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
    seed: int,
    X_valid: torch.Tensor | None = None,
    Y_valid: torch.Tensor | None = None,
    held_out: torch.Tensor | None = None,
    patience: int | None = None,
    first_epoch: int = 1,
    state: TrainingState | None = None,
    on_epoch_end: Callable[[TrainingState], None] | None = None,
    autocast: torch.dtype | None = None,
    input_noise: torch.Tensor | None = None,
    ema_decay: float = 0.0,
    verbose: bool = False,
) -> TrainingState:
    """Train ``model`` in place with mini-batches drawn from seeded permutations.

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
    seed : int
        Epoch ``e`` is shuffled by a generator seeded with ``seed + e``: same seed, same
        batches, also when a run is resumed from a checkpoint.
    X_valid, Y_valid : Tensor, optional
        Validation data, evaluated after every epoch.
    held_out : Tensor, bool, ``(N,)``, optional
        Instead of ``X_valid, Y_valid``: the rows of ``X, Y`` held out for validation
        (e.g. from :func:`validation_mask`); training uses the other rows. The data are
        indexed in place, never copied.
    patience : int or None
        With validation data: stop after ``patience`` epochs without improvement and
        restore the weights of the best epoch. ``None`` trains all ``max_epochs`` and
        keeps the last weights.
    first_epoch : int
        Number of the first epoch (continued training counts on).
    state : TrainingState, optional
        State of an earlier, unfinished run of the same call (from a checkpoint): the
        run continues after its last epoch, up to ``first_epoch + max_epochs - 1``.
    on_epoch_end : callable, optional
        Called with the state after every completed epoch (e.g. to write a checkpoint).
    autocast : torch.dtype, optional
        Run the forward passes under ``torch.autocast`` to this dtype (e.g. bfloat16);
        the loss is computed in float32.
    input_noise : Tensor ``(D,)``, optional
        Standard deviation, per input feature, of Gaussian noise added to the training
        inputs (drawn from the epoch's seeded generator; validation inputs are clean).
    ema_decay : float in [0, 1)
        With a positive value, a :class:`WeightAverage` of the weights with this decay is
        what is validated, kept as the best weights and returned in ``model``.
    verbose : bool
        Show a progress bar with the losses.

    Returns
    -------
    TrainingState
        ``interrupted`` is True when Ctrl-C stopped the run: the loop stops after the
        batch in progress, drops that unfinished epoch from the history and still restores
        the best weights; the caller decides whether to re-raise.
    """
    model.to(device)
    X, Y, X_valid, Y_valid = _resident([X, Y, X_valid, Y_valid], device)
    train_rows, valid_rows = torch.arange(len(X)), None
    if held_out is not None:
        train_rows, valid_rows = torch.nonzero(~held_out).squeeze(1), torch.nonzero(held_out).squeeze(1)
        X_valid, Y_valid = X, Y
    state = state if state is not None else TrainingState()
    average = WeightAverage(model, ema_decay, state.average_weights, state.average_steps) if ema_decay else None
    trained = average.module if average else model  # the weights that are validated and kept
    start = state.history[-1]["epoch"] + 1 if state.history else first_epoch
    epochs = range(start, first_epoch + max_epochs)
    with _InterruptFlag() as interrupt, tqdm(epochs, desc="HalfUNet", unit="epoch", disable=not verbose) as bar:
        for epoch in bar:
            if state.patience_exhausted(patience):
                break
            started = time.perf_counter()
            try:
                train_loss = _train_epoch(
                    model, optimizer, loss_fn, X, Y, train_rows, encode, batch_size, device, seed + epoch, interrupt,
                    autocast, input_noise, average,
                )
            except KeyboardInterrupt:
                train_loss = None
            if train_loss is None:
                state.interrupted = True
                break
            record = {"epoch": epoch, "train_loss": train_loss, "valid_loss": None}
            if X_valid is not None:
                record["valid_loss"] = evaluate(
                    trained, loss_fn, X_valid, Y_valid, encode, batch_size, device, autocast, rows=valid_rows
                )
                if record["valid_loss"] < state.best_loss:
                    state.best_loss, state.best_epoch = record["valid_loss"], epoch
                    state.best_weights = copy.deepcopy(trained.state_dict()) if patience is not None else None
            if average is not None:
                state.average_weights, state.average_steps = average.module.state_dict(), average.steps
            record["duration_s"] = time.perf_counter() - started
            state.history.append(record)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k.endswith("loss") and v is not None})
            if on_epoch_end is not None:
                on_epoch_end(state)
    if state.best_weights is not None or trained is not model:
        model.load_state_dict(state.best_weights or trained.state_dict())
    return state


def _train_epoch(
    model, optimizer, loss_fn, X, Y, rows, encode, batch_size, device, seed, interrupt, autocast, input_noise, average
):
    """Mean training loss of one pass over shuffled batches of the samples at ``rows``;
    None if interrupted."""
    model.train()
    total = torch.zeros((), device=device)
    generator = torch.Generator().manual_seed(seed)
    order = rows[torch.randperm(len(rows), generator=generator)]
    for index in _batches(len(rows), batch_size, order):
        inputs = X[_on(index, X)]
        if input_noise is not None:
            inputs = inputs + (input_noise * torch.randn(inputs.shape, generator=generator)).to(inputs.device)
        loss = _batch_loss(model, loss_fn, inputs, Y, index, encode, device, autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update(model)
        total += loss.detach() * len(index)
        if interrupt.requested:
            return None
    return total.item() / len(rows)


@torch.no_grad()
def evaluate(
    model,
    loss_fn,
    X,
    Y,
    encode,
    batch_size: int,
    device: torch.device,
    autocast: torch.dtype | None = None,
    rows: torch.Tensor | None = None,
) -> float:
    """Mean of ``loss_fn`` over the samples at ``rows`` (None: all), in batches, in eval mode."""
    model.eval()
    total = torch.zeros((), device=device)
    n = len(X) if rows is None else len(rows)
    for index in _batches(n, batch_size, rows):
        total += _batch_loss(model, loss_fn, X[_on(index, X)], Y, index, encode, device, autocast) * len(index)
    return total.item() / n


@torch.no_grad()
def predict_into(
    model: nn.Module,
    X: torch.Tensor,
    out: np.ndarray,
    decode: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> np.ndarray:
    """Write ``decode(model(X))`` batch by batch into the preallocated array ``out``.

    Memory beyond ``out`` is one batch of inputs and outputs, whatever ``len(X)``. When a
    batch runs out of GPU memory the batch size is halved (with a warning) and the batch
    retried, down to single samples.
    """
    model.to(device).eval()
    start = 0
    while start < len(X):
        stop = min(start + batch_size, len(X))
        try:
            out[start:stop] = decode(_forward(model, X[start:stop], device, autocast)).cpu().numpy()
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            out_of_memory = True  # handled outside the except block, which holds the batch's tensors
        else:
            out_of_memory = False
            start = stop
        if out_of_memory:
            release_device_memory()
            batch_size //= 2
            warnings.warn(f"predict ran out of GPU memory; retrying with batch_size={batch_size}.", RuntimeWarning, stacklevel=4)
    return out
