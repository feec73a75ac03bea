"""How long a fit trains: the stop rule, its verdict, the decay, the cap.

A run is **validated** when the held-out frames (or ``X_val``) measure it after every
evaluation period: one epoch, or as many epochs as make ``training.EVALUATION_STEPS``
optimizer steps when epochs are short (small data sets get the steps they need before they
are judged). The **stop rule** fires after ``n_iter_no_change`` evaluations without a
validation score (SSIM, in the estimator) above the best so far by more than the fraction
``tol`` of it (or a loss below it by as much, with ``scoring="loss"``). The rate is held until then, and
the run then **decays** it to 0 for :data:`DECAY_FRACTION` of the epochs before (at least
one; :func:`~cebra_halfunet.schedules.warmup_stable_decay`), and keeps the weights at the end.

How the estimator uses it (``HalfUNetRegressor.fit``):

- held-out frames of ``X``: a **pilot** run (one decoder, the other frames, no decay) ends
  where the rule fires; its last improvement by more than ``tol`` is the length (a later
  epoch that improved by less is, as the rule judges, no better: training it is not worth it). The final run trains the decoder (all of
  its ``ensemble_size`` members) on *every* frame for that many epochs, then decays: the
  held-out frames chose the length, and the decoder that predicts trained on every frame as
  long as on any other.
- ``X_val``: one run, validated on ``X_val`` (no frame of ``X`` is held out), that decays once
  the rule fires.
- no validation (``early_stopping=False``, a warm start without ``X_val``): one run of
  ``max_epochs`` epochs, the last :data:`DECAY_FRACTION` of them decaying.

``max_epochs`` caps a fit, the pilot and the final run together: the pilot runs at most half
of it, and the final run what is left if its length and decay do not fit; in a run that
decays, once one more epoch would leave no room for the decay, the decay starts (verdict
``"max_epochs"``); if the rule had seen an improvement above ``tol``
in its last ``n_iter_no_change`` evaluations, the fit ends with a ``ConvergenceWarning``
(never after the rule, in ``partial_fit`` or on Ctrl-C). A training loss that is not finite
stops the fit with a ``ValueError``, as does one :data:`DIVERGED` times that of the network the
run started from.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from .callbacks import Callback
from .training import Run, TrainingState

#: ``stop_reason_`` values: the stop rule fired, the epoch cap was reached, Ctrl-C.
STOP_RULE, MAX_EPOCHS, INTERRUPTED = "stop rule", "max_epochs", "interrupted"

#: A training loss this many times the starting network's is divergence (a huge lr).
DIVERGED = 100.0

#: Length of the decay, as a share of the epochs before it.
DECAY_FRACTION = 0.25


def decay_epochs(stable_epochs: int) -> int:
    """Epochs of the decay after ``stable_epochs`` epochs at the full rate (at least one)."""
    return max(1, math.ceil(round(DECAY_FRACTION * stable_epochs, 6)))


def final_epochs(length: int) -> int:
    """Epochs of a final run of ``length`` epochs at the full rate, its decay included."""
    return length + decay_epochs(length)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


@dataclass
class Pilot:
    """What the pilot run found: the length of the final run and why the pilot ended.

    Attributes
    ----------
    history : list of dict
        The pilot's epochs (``phase`` ``"pilot"``), numbered from the fit's first.
    best_epoch : int
        Epoch of the last improvement by more than ``tol``: the end of the length.
    best_value : float
        The best validation value, as the rule compares them (the loss, or minus the score).
    verdict : str
        ``"stop rule"`` or ``"max_epochs"``.
    warning : str or None
        The ``ConvergenceWarning`` of a pilot that the cap ended while it still improved.
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = math.inf
    verdict: str = STOP_RULE
    warning: str | None = None

    @property
    def length(self) -> int:
        """Epochs at the full rate of the final run: those of the pilot up to its last
        improvement by more than ``tol``."""
        return self.best_epoch - self.history[0]["epoch"] + 1

    @classmethod
    def of(cls, state: TrainingState) -> Pilot:
        return cls(state.history, state.improved_epoch, state.best_value, state.verdict, state.warning)


class StopRule(Callback):
    """The stop rule, the cap and the decay of one run (see the module).

    Parameters
    ----------
    n_iter_no_change : int
        Evaluations without an improvement after which the rule fires.
    tol : float
        Relative improvement that counts: a loss below ``(1 - tol)`` times the best.
    validating : bool
        Whether there are validation data (held-out rows or ``X_val``) to judge by.
    scoring : {"score", "loss"}
        What the rule judges: the validation score (higher is better; the trainer's
        ``score_fn``, SSIM in the estimator) or the validation loss.
    pilot : bool
        The run is a pilot: the verdict ends it, and the cap leaves room for a final run of
        as many epochs, decay included.
    decays : bool
        False for a run at one rate to its end (``partial_fit``): no decay, no verdict.
    """

    def __init__(self, n_iter_no_change: int, tol: float, validating: bool, pilot: bool = False, scoring: str = "loss",
                 decays: bool = True):
        self.n_iter_no_change, self.tol, self.validating, self.pilot = n_iter_no_change, tol, validating, pilot
        self.decays = decays
        self.key = "valid_score" if scoring == "score" else "valid_loss"
        self.sign = -1.0 if scoring == "score" else 1.0  # judged as a value to lower

    def on_train_begin(self, run: Run) -> None:
        self.cap, state = len(run.epochs), run.state
        if self.pilot:
            run.stable_phase = "pilot"
        if state.decaying:  # a resumed run: it may have ended already
            run.stop = bool(state.history) and state.history[-1]["epoch"] >= state.decay_end_epoch
        elif self._cap_forces(0):  # too short to run at the full rate
            self._verdict(run, 0, MAX_EPOCHS)

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        done = epoch - run.epochs.start + 1  # epochs of this run once this one ends
        state = run.state
        last = epoch == state.decay_end_epoch if state.decaying else self._cap_forces(done)
        run.evaluate = last or done % run.epochs_per_evaluation == 0

    def on_epoch_end(self, run: Run, record: dict) -> None:
        self._check_finite(run, record)
        state, epoch = run.state, record["epoch"]
        if state.decaying:
            run.stop = epoch >= state.decay_end_epoch
            return
        if record[self.key] is not None:
            self._judge(run, self.sign * record[self.key], epoch)
        done = epoch - run.epochs.start + 1
        if self.validating and self._exhausted(state):
            self._verdict(run, done, STOP_RULE)
        elif self._cap_forces(done):
            if self.validating and state.improved_epoch is not None:  # not exhausted: it still improved
                state.warning = self._still_improving(state)
            self._verdict(run, done, MAX_EPOCHS)

    def _still_improving(self, state) -> str:
        """The text of the ConvergenceWarning of a run that the cap ended while it improved."""
        judged = "validation SSIM" if self.key == "valid_score" else "validation loss"
        room = f"{'half of ' if self.pilot else ''}max_epochs={self.cap}"
        evaluations = sum(record[self.key] is not None for record in state.history)
        if evaluations <= self.n_iter_no_change:
            return (
                f"The stop rule could not judge the {judged}: only {_plural(evaluations, 'evaluation')} fit in {room} "
                f"(it needs {self.n_iter_no_change + 1}): raise max_epochs."
            )
        return (
            f"The {judged} was still improving by more than tol={self.tol:g} (relative) in the last "
            f"{_plural(self.n_iter_no_change, 'evaluation')} when the fit reached {room}: raise max_epochs."
        )

    def on_train_end(self, run: Run) -> None:
        if run.state.best_weights is not None and not self.pilot:  # interrupted before the decay
            run.model.load_state_dict(run.state.best_weights)

    # ----------------------------------------------------------------- the rule
    def _judge(self, run: Run, value: float, epoch: int) -> None:
        """Track the best validation value (lower is better; its weights) and the last
        improvement by more than ``tol`` of it."""
        state = run.state
        if value < state.best_value - self.tol * abs(state.best_value) or state.best_epoch is None:
            state.improved_epoch = epoch
        if value < state.best_value:
            state.best_value, state.best_epoch = value, epoch
            if not self.pilot:  # a pilot's weights are not kept
                state.best_weights = copy.deepcopy(run.evaluated.state_dict())

    def _exhausted(self, state) -> bool:
        """``n_iter_no_change`` evaluations have passed since the last improvement."""
        if state.improved_epoch is None:
            return False
        since = [r for r in state.history if r["epoch"] > state.improved_epoch and r[self.key] is not None]
        return len(since) >= self.n_iter_no_change

    def _cap_forces(self, done: int) -> bool:
        """After ``done`` epochs at the full rate, one more would leave no room for what
        follows: the decay, or after a pilot the final run (the pilot takes at most half the cap)."""
        if self.pilot:
            return done + 1 > self.cap // 2
        return self.decays and done + 1 + decay_epochs(done + 1) > self.cap

    def _verdict(self, run: Run, done: int, verdict: str) -> None:
        """End the run's epochs at the full rate after ``done`` of them: a pilot stops, any
        other run decays (over what the cap leaves, when the cap decided)."""
        state = run.state
        state.verdict = verdict
        if self.pilot:
            run.stop = True
            return
        length = self.cap - done if verdict == MAX_EPOCHS else decay_epochs(done)
        state.decay_start_epoch = run.epochs.start + done - 1
        state.decay_end_epoch = state.decay_start_epoch + length
        state.decay_start_step = state.steps
        state.decay_steps = length * run.steps_per_epoch  # the epochs of every row, now that it decays
        state.best_weights = None  # the decay's weights are kept

    def _check_finite(self, run: Run, record: dict) -> None:
        """A ValueError when the training loss, or the validation value judged, is not finite,
        or the training loss is :data:`DIVERGED` times that of the network the run started with."""
        judged = "validation SSIM" if self.key == "valid_score" else "validation loss"
        loss = record["batch_loss"]
        for what, value in (("training loss", loss), (judged, record[self.key])):
            if value is not None and not math.isfinite(value):
                self._diverged(run, f"the {what} of epoch {record['epoch']} is {value}")
        if loss > DIVERGED * run.initial_loss:
            self._diverged(run, f"the training loss of epoch {record['epoch']} is {loss:.3g}, {loss / run.initial_loss:.3g} "
                                f"times that of the network it started from ({run.initial_loss:.3g})")

    @staticmethod
    def _diverged(run: Run, what: str):
        raise ValueError(
            f"Training diverged: {what}. Lower lr (now {run.optimizer.defaults['lr']:g}), or look for extreme values in X "
            "(the embeddings) or y."
        )
