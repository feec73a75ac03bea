"""Callbacks: what happens around the training loop of :class:`~cebra_halfunet.training.Trainer`.

A callback has five events, each given the :class:`~cebra_halfunet.training.Run` (model,
optimizer, state, epochs, ...): ``on_train_begin(run)``, ``on_epoch_begin(run, epoch)``,
``on_batch_end(run, loss)`` (after each optimizer step; ``loss`` is a detached tensor),
``on_epoch_end(run, record)`` (after validation; ``record`` is the epoch's history entry)
and ``on_train_end(run)`` (also after an interruption). Subclass :class:`Callback` and
override the events you need; pass instances to ``HalfUNetRegressor(callbacks=[...])``,
where they run after the built-in ones, on a fresh copy per fit.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from tqdm.auto import tqdm

from .training import Run, WeightAverage

#: Placeholder for a keyword of :class:`LRScheduler`: replaced by the number of scheduler
#: steps of the fit (optimizer steps, or epochs with ``step_every="epoch"``).
TOTAL_STEPS = "<total steps of the fit>"


class Callback:
    """Base class: every event does nothing."""

    def on_train_begin(self, run: Run) -> None:
        pass

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        pass

    def on_batch_end(self, run: Run, loss: torch.Tensor) -> None:
        pass

    def on_epoch_end(self, run: Run, record: dict) -> None:
        pass

    def on_train_end(self, run: Run) -> None:
        pass


class WeightAveraging(Callback):
    """Validate, keep and return an exponential moving average of the weights
    (:class:`~cebra_halfunet.training.WeightAverage`, updated after every step)."""

    def __init__(self, decay: float):
        self.decay = decay

    def on_train_begin(self, run: Run) -> None:
        state = run.state
        self.average = WeightAverage(run.model, self.decay, state.average_weights, state.average_steps)
        run.evaluated = self.average.module

    def on_batch_end(self, run: Run, loss: torch.Tensor) -> None:
        self.average.update(run.model)

    def on_epoch_end(self, run: Run, record: dict) -> None:
        run.state.average_weights, run.state.average_steps = self.average.module.state_dict(), self.average.steps

    def on_train_end(self, run: Run) -> None:
        if run.state.best_weights is None:
            run.model.load_state_dict(self.average.module.state_dict())


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a validation loss lower than the best so far
    by more than the fraction ``tol`` of it, and restore the weights of the best epoch (those of
    ``run.evaluated``: the average when averaging).

    ``wait_fraction``: the rule ends a run only once that share of the call's epochs is
    done (rounded up), so that it does not cut off a learning-rate schedule while the rate
    is still high (0.5 with the warm-up + cosine schedule: the rate is at most half its
    peak by then). The best epoch is tracked from the first epoch on.
    """

    def __init__(self, patience: int, tol: float = 0.0, wait_fraction: float = 0.0):
        self.patience, self.tol, self.wait_fraction = patience, tol, wait_fraction

    def on_train_begin(self, run: Run) -> None:
        self.first_stop = run.epochs.start + math.ceil(round(self.wait_fraction * len(run.epochs), 6)) - 1
        run.stop = self._exhausted(run.state)

    def on_epoch_end(self, run: Run, record: dict) -> None:
        state = run.state
        if record["valid_loss"] < state.best_loss * (1 - self.tol):
            state.improved_epoch = record["epoch"]
        if record["valid_loss"] < state.best_loss:
            state.best_loss, state.best_epoch = record["valid_loss"], record["epoch"]
            state.best_weights = copy.deepcopy(run.evaluated.state_dict())
        run.stop = self._exhausted(state)

    def on_train_end(self, run: Run) -> None:
        if run.state.best_weights is not None:
            run.model.load_state_dict(run.state.best_weights)

    def _exhausted(self, state) -> bool:
        """``patience`` epochs have passed since the last improvement, at or after the
        first epoch the rule may stop at."""
        if state.improved_epoch is None:
            return False
        last = state.history[-1]["epoch"]
        return last >= self.first_stop and last - state.improved_epoch >= self.patience


class Checkpoint(Callback):
    """Call ``write(state)`` every ``every`` epochs of the call (counted from its first)."""

    def __init__(self, write, every: int = 1):
        self.write, self.every = write, every

    def on_epoch_end(self, run: Run, record: dict) -> None:
        if (record["epoch"] - run.epochs.start + 1) % self.every == 0:
            self.write(run.state)


class ProgressBar(Callback):
    """A progress bar of the batches of each epoch, with the losses of the last epoch and
    the best validation loss so far; says which epoch's weights early stopping restored."""

    def on_train_begin(self, run: Run) -> None:
        self.bar = tqdm(total=run.steps_per_epoch, unit="batch", leave=True)

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        self.bar.reset(total=run.steps_per_epoch)
        self.bar.set_description(f"HalfUNet epoch {epoch}/{run.epochs[-1]}")

    def on_batch_end(self, run: Run, loss: torch.Tensor) -> None:
        self.bar.update()

    def on_epoch_end(self, run: Run, record: dict) -> None:
        losses = {k: f"{v:.4g}" for k, v in record.items() if k.endswith("loss") and v is not None}
        if run.state.best_epoch is not None:
            losses["best"] = f"{run.state.best_loss:.4g} (epoch {run.state.best_epoch})"
        self.bar.set_postfix(losses)

    def on_train_end(self, run: Run) -> None:
        state = run.state
        if state.best_weights is not None and state.history and state.best_epoch != state.history[-1]["epoch"]:
            self.bar.write(
                f"HalfUNet: stopped after epoch {state.history[-1]['epoch']}; restored the weights of epoch "
                f"{state.best_epoch} (validation loss {state.best_loss:.4g})."
            )
        self.bar.close()


class LRScheduler(Callback):
    """Drive any ``torch.optim.lr_scheduler`` class over the fit.

    Parameters
    ----------
    policy : type
        A scheduler class, e.g. ``torch.optim.lr_scheduler.CosineAnnealingLR``, or any
        callable ``policy(optimizer, **kwargs)`` that returns an object with ``step()``.
    step_every : {"batch", "epoch"}, default "batch"
        Step after every optimizer step, or after every epoch.
    **kwargs
        Passed to ``policy``; a value :data:`TOTAL_STEPS` is replaced by the number of
        scheduler steps of the fit, e.g. ``LRScheduler(CosineAnnealingLR, T_max=TOTAL_STEPS)``.

    A run resumed from a checkpoint steps the fresh scheduler through the completed
    epochs first, so the rates continue where they were.
    """

    def __init__(self, policy, step_every: str = "batch", **kwargs):
        if step_every not in ("batch", "epoch"):
            raise ValueError(f"step_every must be 'batch' or 'epoch', got {step_every!r}.")
        self.policy, self.step_every, self.kwargs = policy, step_every, kwargs

    def on_train_begin(self, run: Run) -> None:
        per_epoch = run.steps_per_epoch if self.step_every == "batch" else 1
        total = len(run.epochs) * per_epoch
        kwargs = {name: total if value is TOTAL_STEPS else value for name, value in self.kwargs.items()}
        self.scheduler = self.policy(run.optimizer, **kwargs)
        completed = sum(record["epoch"] in run.epochs for record in run.state.history)
        with warnings.catch_warnings():  # stepping before any optimizer step, on purpose
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(completed * per_epoch):
                self.scheduler.step()

    def on_batch_end(self, run: Run, loss: torch.Tensor) -> None:
        if self.step_every == "batch":
            self.scheduler.step()

    def on_epoch_end(self, run: Run, record: dict) -> None:
        if self.step_every == "epoch":
            self.scheduler.step()
