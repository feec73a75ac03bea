"""The trainer: the one training loop, evaluation and batched prediction, configured once
(device, precision, batch size, target encoding). What happens around the loop (weight
averaging, early stopping, checkpoints, the progress bar, a learning-rate schedule) are
callbacks (:mod:`cebra_halfunet.callbacks`).

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
from typing import Callable, TypeVar

import numpy as np
import torch
from torch import nn


#: Share of the training rows whose loss is measured after each epoch when there are no
#: validation rows (with them, as many as there are validation rows).
TRAIN_PROBE_FRACTION = 0.1

#: Optimizer steps an evaluation period spans at least: the validation loss is measured after
#: every epoch, or every few epochs when an epoch has fewer steps (see :mod:`~cebra_halfunet.stopping`).
EVALUATION_STEPS = 32


def state_to_cpu(state):
    """Copy of a (nested) state dict with every tensor on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().clone()
    if isinstance(state, dict):
        return {key: state_to_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(state_to_cpu(value) for value in state)
    return state


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


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX instructions;
    those without emulate bfloat16 in float32 and gain nothing)."""
    return any(getattr(torch.cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def fastest_precision(device: torch.device) -> str:
    """What ``precision="auto"`` resolves to on ``device``, as measured: ``"bfloat16"`` on a
    CPU with bf16 units (1.6x float32 on a 2-core AVX512-BF16 EPYC), otherwise ``"float32"``:
    on CUDA, bf16 autocast was slower than float32 at the batch sizes a fit uses (0.73-0.78x
    at batch 32 and 128x256, 0.86-0.87x at batch 128 and 64x128, on an H200, two runs) and
    faster only from batch 128 at 128x256 (``benchmarks/RESULTS.md``, GPU check)."""
    return "bfloat16" if device.type == "cpu" and cpu_has_bf16_units() else "float32"


def release_device_memory() -> None:
    """Free what the caching allocator holds, so that the next fit (a grid search) has it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


T = TypeVar("T")


def catch_out_of_memory(work: Callable[[], T]) -> tuple[T | None, bool]:
    """``(work(), False)``, or ``(None, True)`` when it ran out of GPU memory.

    The memory is released after the ``except`` block has ended: inside it, the traceback
    still holds the failed batch's tensors. The one place that catches the error.
    """
    try:
        return work(), False
    except torch.cuda.OutOfMemoryError:
        pass
    release_device_memory()
    return None, True


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



def _on(index: torch.Tensor, data) -> torch.Tensor:
    """``index`` on the device of ``data`` when ``data`` is a tensor (on a GPU when resident)."""
    return index.to(data.device) if isinstance(data, torch.Tensor) else index


def _resident(tensors: list, device: torch.device) -> list:
    """On a GPU, move the data there once when it takes less than a quarter of the free
    memory (no copies per batch); otherwise, and on the CPU, leave it where it is."""
    if device.type != "cuda" or not all(isinstance(t, torch.Tensor) for t in tensors):
        return tensors
    if sum(t.nbytes for t in tensors) >= torch.cuda.mem_get_info(device)[0] / 4:
        return tensors
    return [t.to(device) for t in tensors]


@dataclass
class TrainingState:
    """Where a run of :meth:`Trainer.fit` stands; enough to continue it exactly (checkpoints).

    Attributes
    ----------
    history : list of dict
        One dict per completed epoch: ``epoch`` (counted over all calls); ``phase``
        (``"stable"``: the first phase, validated; ``"decay"``: the last, on every row);
        ``batch_loss``, the mean of the epoch's training-batch losses (the weights moving,
        noise on, ensemble members scored one by one); at the end of each evaluation period
        (else None), measured alike, with the kept weights (the average when averaging), in
        eval mode, without embedding noise: ``train_loss`` on a fixed subset of the training
        rows, ``valid_loss`` (and ``valid_score``, when the trainer scores) on the validation
        data while they are not trained on, and
        ``held_out_loss`` on the held-out rows once the decay trains them; ``duration_s``.
    best_value, best_epoch
        The best validation value so far, as the stop rule compares them (the loss, or minus
        the score: lower is better), and its epoch (None before the first).
    best_weights : dict or None
        State dict of the best epoch, kept in the first phase (restored on Ctrl-C).
    improved_epoch : int or None
        Last epoch whose validation loss was lower than the best before it by more than
        the fraction ``tol`` of it (the stop rule's).
    average_weights : dict or None
        State dict of the weight average (when averaging). Its tensors are the average's
        own, not a copy: they hold the average after the last completed epoch until
        training goes on (checkpoints are written at epoch ends).
    average_steps : int
        Updates that average has had.
    steps : int
        Optimizer steps of this call so far.
    verdict : str or None
        What ended the first phase (``"stop rule"`` or ``"max_epochs"``), None before.
    warning : str or None
        Why the fit ends with a ``ConvergenceWarning``: the cap ended the first phase while
        the stop rule still saw improvements.
    decay_start_epoch, decay_end_epoch : int or None
        The last epoch of the first phase and the last of the decay.
    decay_start_step, decay_steps : int or None
        The decay's first optimizer step and its length in steps.
    interrupted : bool
        The run was stopped by Ctrl-C (KeyboardInterrupt).
    """

    history: list[dict] = field(default_factory=list)
    best_value: float = math.inf
    best_epoch: int | None = None
    best_weights: dict | None = None
    improved_epoch: int | None = None
    average_weights: dict | None = None
    average_steps: int = 0
    steps: int = 0
    verdict: str | None = None
    warning: str | None = None
    decay_start_epoch: int | None = None
    decay_end_epoch: int | None = None
    decay_start_step: int | None = None
    decay_steps: int | None = None
    interrupted: bool = False

    @property
    def decaying(self) -> bool:
        """In the last phase: every row trains, the rate decays."""
        return self.decay_start_epoch is not None


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
    thread (where signal handlers cannot be set) a KeyboardInterrupt arrives as usual; where
    the user ignores Ctrl-C (``SIG_IGN``), it stays ignored."""

    requested = False

    def __enter__(self):
        self._previous = None
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # Ctrl-C ignored by the user: it stays so
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)




@dataclass
class Run:
    """What callbacks see of a run of :meth:`Trainer.fit`.

    Attributes
    ----------
    trainer : Trainer
    model : nn.Module
        The network being trained (on the trainer's device).
    optimizer : torch.optim.Optimizer
    state : TrainingState
    epochs : range
        The epochs of this call (continued training counts on from earlier calls); a
        resumed run skips those already in ``state.history``.
    train_rows, all_rows : Tensor of int
        The rows the first phase trains on (not held out, not in a gap) and every row
        (the decay trains on them).
    evaluated : nn.Module
        The weights that are validated and kept: ``model``, or a weight average that a
        callback put here.
    stop : bool
        Set by a callback to end the run before the next epoch.
    evaluate : bool
        Whether the losses are measured after the current epoch (set by the stop rule).
    stable_phase : str
        The ``phase`` of the history's records before the decay (``"pilot"`` in a pilot run).
    initial_loss : float
        The loss of the network the run started from, on the rows of ``train_loss``.
    """

    trainer: Trainer
    model: nn.Module
    optimizer: torch.optim.Optimizer
    state: TrainingState
    epochs: range
    train_rows: torch.Tensor
    all_rows: torch.Tensor
    evaluated: nn.Module
    stop: bool = False
    evaluate: bool = True
    stable_phase: str = "stable"
    initial_loss: float = math.inf

    @property
    def rows(self) -> torch.Tensor:
        """The rows trained on now."""
        return self.all_rows if self.state.decaying else self.train_rows

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps (batches) of an epoch now."""
        return math.ceil(len(self.rows) / self.trainer.batch_size)

    @property
    def train_steps_per_epoch(self) -> int:
        """Optimizer steps of an epoch of the first phase's rows."""
        return math.ceil(len(self.train_rows) / self.trainer.batch_size)

    @property
    def epochs_per_evaluation(self) -> int:
        """Epochs between evaluations: one, or enough for :data:`EVALUATION_STEPS` steps."""
        return math.ceil(EVALUATION_STEPS / self.train_steps_per_epoch)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of ``len(epochs)`` epochs of the first phase's rows: the cap."""
        return len(self.epochs) * self.train_steps_per_epoch


class Trainer:
    """The training loop, evaluation and batched prediction, configured once.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(model(x), encode(y))`` is minimised (and reported by :meth:`evaluate`).
    encode : callable
        Maps a stored target batch (already on ``device``) to float network units.
    batch_size : int
    device : torch.device
    autocast : torch.dtype, optional
        Run the forward passes under ``torch.autocast`` to this dtype (e.g. bfloat16);
        the loss is computed in float32.
    seed : int
        Epoch ``e`` is shuffled by a generator seeded with ``seed + e``: same seed, same
        batches, also when a run is resumed from a checkpoint.
    input_noise : Tensor ``(D,)``, optional
        Standard deviation, per input feature, of Gaussian noise added to the training
        inputs (drawn from the epoch's seeded generator; evaluation inputs are clean).
    score_fn : callable, optional
        ``score_fn(model(x), encode(y)) -> (B,)`` scores of the predictions, higher is better
        (:meth:`score`: the ``valid_score`` of the history); None: the validation data are
        judged by their loss alone.
    """

    def __init__(self, loss_fn, encode, batch_size: int, device: torch.device, autocast=None, seed: int = 0,
                 input_noise=None, score_fn=None):
        self.loss_fn, self.encode, self.batch_size, self.device = loss_fn, encode, batch_size, device
        self.autocast, self.seed, self.input_noise, self.score_fn = autocast, seed, input_noise, score_fn

    def fit(
        self, model, optimizer, X, Y, *, epochs: range, rows=None, held_out=None, validation=None, state=None, callbacks=()
    ) -> TrainingState:
        """Train ``model`` in place with mini-batches drawn from seeded permutations.

        Parameters
        ----------
        model, optimizer
        X, Y : Tensor
            Inputs ``(N, D)`` float32 and targets ``(N, C, H, W)`` in their stored dtype
            (or :class:`~cebra_halfunet.targets.DiskImages`).
        epochs : range
            Numbers of the epochs to run (continued training counts on).
        rows : ndarray of int, optional
            The rows trained on until the run decays (then every row: see
            :mod:`~cebra_halfunet.stopping`). None: every row, throughout. Indexed in place,
            never copied.
        held_out : ndarray of int, optional
            Rows whose loss is measured at each evaluation: the ``valid_loss`` while they are
            not trained on (not in ``rows``, before the decay), the ``held_out_loss`` once they are.
        validation : (Tensor, Tensor), optional
            Validation inputs and targets of their own (``X_val``, ``y_val``): the
            ``valid_loss`` throughout.
        state : TrainingState, optional
            State of an earlier, unfinished run of the same call (from a checkpoint): the
            run continues after its last epoch.
        callbacks : sequence of Callback
            Called in order at each event (see :class:`~cebra_halfunet.callbacks.Callback`).

        Returns
        -------
        TrainingState
            ``interrupted`` is True when Ctrl-C stopped the run: the loop stops after the
            batch in progress and drops that unfinished epoch from the history; the
            callbacks' ``on_train_end`` still runs; the caller decides whether to re-raise.
        """
        model.to(self.device)
        X, Y = _resident([X, Y], self.device)
        all_rows = torch.arange(len(X))
        train_rows = all_rows if rows is None else torch.as_tensor(rows)
        held_out = None if held_out is None or not len(held_out) else torch.as_tensor(held_out)
        if validation is not None:
            valid, n_valid = (*_resident(list(validation), self.device), None), len(validation[0])
        elif held_out is not None:
            valid, n_valid = (X, Y, held_out), len(held_out)
        else:
            valid, n_valid = None, None
        others = train_rows if held_out is None else train_rows[~torch.isin(train_rows, held_out)]
        probe = self._probe_rows(others, n_valid)  # never a held-out row: train_loss and held_out_loss compare
        run = Run(self, model, optimizer, state or TrainingState(), epochs, train_rows, all_rows, model)
        run.initial_loss = self.evaluate(model, X, Y, probe)  # what divergence is measured against
        _notify(callbacks, "on_train_begin", run)
        done = {record["epoch"] for record in run.state.history}
        with _InterruptFlag() as interrupt:
            for epoch in (epoch for epoch in epochs if epoch not in done):
                if run.stop:
                    break
                started = time.perf_counter()
                _notify(callbacks, "on_epoch_begin", run, epoch)
                try:
                    batch_loss = self._train_epoch(run, X, Y, epoch, interrupt, callbacks)
                except KeyboardInterrupt:
                    batch_loss = None
                if batch_loss is None:
                    run.state.interrupted = True
                    break
                record = {"epoch": epoch, "phase": "decay" if run.state.decaying else run.stable_phase, "batch_loss": batch_loss}
                trained = validation is None and (rows is None or run.state.decaying)  # the held-out rows train now
                record.update(self._losses(run, X, Y, probe, valid, trained))
                record["duration_s"] = time.perf_counter() - started
                run.state.history.append(record)
                _notify(callbacks, "on_epoch_end", run, record)
        _notify(callbacks, "on_train_end", run)
        return run.state

    def _losses(self, run: Run, X, Y, probe, valid, trained: bool) -> dict:
        """The epoch's ``train_loss``, ``valid_loss``, ``valid_score`` and ``held_out_loss`` (None
        when not measured: between evaluations, or no such data): the validation data give the
        ``valid_loss`` (and score) while they are not ``trained`` on, the ``held_out_loss`` once they are."""
        losses = dict.fromkeys(("train_loss", "valid_loss", "valid_score", "held_out_loss"))
        if run.evaluate:
            losses["train_loss"] = self.evaluate(run.evaluated, X, Y, probe)
            if valid is not None:
                losses["held_out_loss" if trained else "valid_loss"] = self.evaluate(run.evaluated, *valid)
                if self.score_fn is not None and not trained:
                    losses["valid_score"] = self.score(run.evaluated, *valid)
        return losses

    def _probe_rows(self, rows: torch.Tensor, n_valid: int | None) -> torch.Tensor:
        """The training rows whose loss is the ``train_loss`` of the history: as many as the
        ``n_valid`` validation samples (a tenth of the training rows without them), drawn
        once with the seed from a generator of their own, so that training draws the same
        numbers."""
        n = n_valid if n_valid is not None else math.ceil(len(rows) * TRAIN_PROBE_FRACTION)
        generator = torch.Generator().manual_seed(self.seed)
        return rows[torch.randperm(len(rows), generator=generator)[: min(n, len(rows))]].sort().values

    def _train_epoch(self, run: Run, X, Y, epoch: int, interrupt, callbacks):
        """Mean training loss of one pass over shuffled batches of the rows trained on now
        (``run.rows``); None if interrupted."""
        model, optimizer, rows = run.model, run.optimizer, run.rows
        model.train()
        total = torch.zeros((), device=self.device)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = rows[torch.randperm(len(rows), generator=generator)]
        for index in _batches(len(rows), self.batch_size, order):
            inputs = X[_on(index, X)]
            if self.input_noise is not None:
                inputs = inputs + (self.input_noise * torch.randn(inputs.shape, generator=generator)).to(inputs.device)
            loss = self._batch_loss(model, inputs, Y, index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.state.steps += 1
            _notify(callbacks, "on_batch_end", run, loss.detach())
            total += loss.detach() * len(index)
            if interrupt.requested:
                return None
        return total.item() / len(rows)

    def _batch_loss(self, model, inputs, Y, index) -> torch.Tensor:
        """The loss of the model's output for ``inputs`` against the targets ``Y[index]``."""
        prediction = _forward(model, inputs, self.device, self.autocast)
        return self.loss_fn(prediction, self.encode(_to_device(Y[_on(index, Y)], self.device)))

    def evaluate(self, model, X, Y, rows: torch.Tensor | None = None) -> float:
        """Mean loss over the samples at ``rows`` (None: all), in batches, in eval mode."""
        return self._mean(model, X, Y, rows, lambda prediction, target: self.loss_fn(prediction, target) * len(prediction))

    def score(self, model, X, Y, rows: torch.Tensor | None = None) -> float:
        """Mean ``score_fn`` over the samples at ``rows`` (None: all), in batches, in eval mode."""
        return self._mean(model, X, Y, rows, lambda prediction, target: self.score_fn(prediction, target).sum())

    @torch.no_grad()
    def _mean(self, model, X, Y, rows, total_of) -> float:
        """``total_of(predictions, targets)`` summed over the batches of ``rows``, over their number."""
        model.eval()
        total = torch.zeros((), device=self.device)
        n = len(X) if rows is None else len(rows)
        for index in _batches(n, self.batch_size, rows):
            prediction = _forward(model, X[_on(index, X)], self.device, self.autocast)
            total += total_of(prediction, self.encode(_to_device(Y[_on(index, Y)], self.device)))
        return total.item() / n

    @torch.no_grad()
    def predict_into(self, model: nn.Module, X: torch.Tensor, out: np.ndarray, decode) -> np.ndarray:
        """Write ``decode(model(X))`` batch by batch into the preallocated array ``out``.

        ``model`` is in eval mode on the trainer's device, and is only read: calls from many
        threads may share it. Memory beyond ``out`` is one batch of inputs and outputs,
        whatever ``len(X)``. When a batch runs out of GPU memory the batch size is halved
        (with a warning) and the batch retried, down to single samples; then the error is raised.
        """
        start, batch_size = 0, self.batch_size
        while start < len(X):
            stop = min(start + batch_size, len(X))
            batch = X[start:stop]
            predicted, out_of_memory = catch_out_of_memory(lambda: decode(_forward(model, batch, self.device, self.autocast)))
            if not out_of_memory:
                out[start:stop] = predicted.cpu().numpy()
                start = stop
            elif batch_size == 1:
                raise torch.cuda.OutOfMemoryError("predict ran out of GPU memory with one sample per batch.")
            else:
                batch_size //= 2
                warnings.warn(f"predict ran out of GPU memory; retrying with batch_size={batch_size}.", RuntimeWarning, stacklevel=4)
        return out


def _notify(callbacks, event: str, *args) -> None:
    """Call ``event`` on every callback, in order."""
    for callback in callbacks:
        getattr(callback, event)(*args)
