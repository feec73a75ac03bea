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

import warnings

import torch
from tqdm.auto import tqdm

from .schedules import warmup_stable_decay
from .training import Run, WeightAverage

#: Placeholder for a keyword of :class:`LRScheduler`: replaced by the number of scheduler
#: steps of ``max_epochs`` epochs of the first phase's rows (optimizer steps, or epochs with
#: ``step_every="epoch"``): the cap, which a fit that the stop rule ends does not reach.
TOTAL_STEPS = "<scheduler steps of max_epochs epochs>"


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


class WarmupStableDecay(Callback):
    """The built-in learning-rate schedule (:func:`~cebra_halfunet.schedules.warmup_stable_decay`):
    warm up over the first evaluation period, hold the base rate until the stop rule
    (:class:`~cebra_halfunet.stopping.StopRule`) starts the decay, then decay to 0 over it."""

    def on_train_begin(self, run: Run) -> None:
        self.base_rates = [group["lr"] for group in run.optimizer.param_groups]
        self.warmup_steps = run.epochs_per_evaluation * run.train_steps_per_epoch
        self._set_rate(run)

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        self._set_rate(run)  # the decay may have started at the end of the last epoch

    def on_batch_end(self, run: Run, loss: torch.Tensor) -> None:
        self._set_rate(run)

    def _set_rate(self, run: Run) -> None:
        state = run.state
        factor = warmup_stable_decay(state.steps, self.warmup_steps, state.decay_start_step, state.decay_steps or 0)
        for group, rate in zip(run.optimizer.param_groups, self.base_rates):
            group["lr"] = rate * factor


class Checkpoint(Callback):
    """Call ``write(state, model, optimizer)`` every ``every`` epochs of the run (counted from its first)."""

    def __init__(self, write, every: int = 1):
        self.write, self.every = write, every

    def on_epoch_end(self, run: Run, record: dict) -> None:
        if (record["epoch"] - run.epochs.start + 1) % self.every == 0:
            self.write(run.state, run.model, run.optimizer)


class PrintLog(Callback):
    """One line per epoch, as skorch's ``PrintLog`` prints it, above a progress bar of the
    epoch's batches: the epoch, its phase, the mean batch loss, and at evaluations the
    training and validation losses and the validation SSIM (``*`` marks each improvement by more
    than ``tol`` on what the stop rule judges: the last one is the length) or, in the decoder's training after a pilot, the loss of the held-out
    frames now trained on; the learning rate at the epoch's end; its seconds."""

    COLUMNS = ("epoch", "phase", "batch_loss", "train_loss", "valid_loss", "valid_ssim", "held_out", "lr", "dur")

    def __init__(self, title: str = ""):
        self.title = title

    def on_train_begin(self, run: Run) -> None:
        if self.title:
            tqdm.write(self.title)
        tqdm.write(" ".join(f"{name:>11}" for name in self.COLUMNS))
        tqdm.write(" ".join(["-" * 11] * len(self.COLUMNS)))
        self.bar = tqdm(total=run.steps_per_epoch, unit="batch", leave=False)

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        self.bar.reset(total=run.steps_per_epoch)
        self.bar.set_description(f"epoch {epoch} (at most {run.epochs[-1]})")

    def on_batch_end(self, run: Run, loss: torch.Tensor) -> None:
        self.bar.update()

    def on_epoch_end(self, run: Run, record: dict) -> None:
        mark = "*" if run.state.improved_epoch == record["epoch"] else " "  # improved by more than tol: what the rule counts
        score = record.get("valid_score")
        cells = [
            f"{record['epoch']:>11}", f"{record['phase']:>11}", _cell(record["batch_loss"]), _cell(record["train_loss"]),
            _cell(record["valid_loss"], mark if score is None else " "), _cell(score, mark), _cell(record["held_out_loss"]),
            f"{run.optimizer.param_groups[0]['lr']:>11.2e}", f"{record['duration_s']:>10.1f}s",
        ]
        tqdm.write(" ".join(cells))

    def on_train_end(self, run: Run) -> None:
        self.bar.close()


def _cell(value: float | None, mark: str = " ") -> str:
    """A loss in an 11-character column, its last character a mark (blank when not measured)."""
    return " " * 11 if value is None else f"{value:>10.4f}{mark}"


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
        scheduler steps of ``max_epochs`` epochs (the cap: a fit that the stop rule ends
        stops sooner), e.g. ``LRScheduler(CosineAnnealingLR, T_max=TOTAL_STEPS)``.

    Pass ``lr_schedule="constant"`` to the estimator with it, so that the built-in schedule
    does not set the rate too. A run resumed from a checkpoint steps the fresh scheduler
    through the completed steps (or epochs) first, so the rates continue where they were.
    """

    def __init__(self, policy, step_every: str = "batch", **kwargs):
        if step_every not in ("batch", "epoch"):
            raise ValueError(f"step_every must be 'batch' or 'epoch', got {step_every!r}.")
        self.policy, self.step_every, self.kwargs = policy, step_every, kwargs

    def on_train_begin(self, run: Run) -> None:
        total = run.total_steps if self.step_every == "batch" else len(run.epochs)
        kwargs = {name: total if value is TOTAL_STEPS else value for name, value in self.kwargs.items()}
        self.scheduler = self.policy(run.optimizer, **kwargs)
        completed = sum(record["epoch"] in run.epochs for record in run.state.history)
        with warnings.catch_warnings():  # stepping before any optimizer step, on purpose
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(run.state.steps if self.step_every == "batch" else completed):
                self.scheduler.step()

    def on_batch_end(self, run: Run, loss: torch.Tensor) -> None:
        if self.step_every == "batch":
            self.scheduler.step()

    def on_epoch_end(self, run: Run, record: dict) -> None:
        if self.step_every == "epoch":
            self.scheduler.step()
