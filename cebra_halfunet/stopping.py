"""How long a fit trains: the stop rule, its verdict, the last phase on every sample, the cap.

A fit has two phases. In the first, the decoder trains on the training rows while the
held-out frames (or ``X_val``) validate it after every evaluation period: one epoch, or as
many epochs as make :data:`EVALUATION_STEPS` optimizer steps when epochs are short (small data
sets get the steps they need before they are judged). The **stop rule** ends the phase after
``n_iter_no_change`` evaluations without a validation loss below ``(1 - tol)`` times the best
so far. The second phase, the **decay**, trains on *every* row, the held-out frames and the gap
around them included, for :data:`DECAY_FRACTION` of the first phase's epochs (at least one),
while the learning rate decays to 0 (:func:`~cebra_halfunet.schedules.warmup_stable_decay`);
its weights are kept. So the held-out frames decide how long to train, and the decoder that
predicts has trained on every frame.

``max_epochs`` caps both phases together: once one more epoch of the first phase would leave
no room for its decay, the decay starts (verdict ``"max_epochs"``); if the rule had seen an
improvement above ``tol`` in its last ``n_iter_no_change`` evaluations, the fit ends with a
``ConvergenceWarning`` (its text is the state's ``warning``) (never after the rule, in ``partial_fit`` or on Ctrl-C). Without
validation (``early_stopping=False``, ``partial_fit``) the cap alone decides: the last
:data:`DECAY_FRACTION` share of ``max_epochs`` decays. A training loss that is not finite
stops the fit with a ``ValueError``.
"""

from __future__ import annotations

import copy
import math

from .callbacks import Callback
from .training import Run

#: ``stop_reason_`` values: the stop rule fired, the epoch cap was reached, Ctrl-C.
STOP_RULE, MAX_EPOCHS, INTERRUPTED = "stop rule", "max_epochs", "interrupted"

#: Length of the decay on every sample, as a share of the first phase's epochs.
DECAY_FRACTION = 0.25


def decay_epochs(stable_epochs: int) -> int:
    """Epochs of the decay after ``stable_epochs`` epochs of the first phase (at least one)."""
    return max(1, math.ceil(round(DECAY_FRACTION * stable_epochs, 6)))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


class StopRule(Callback):
    """The stop rule, the cap and the switch to the decay on every row (see the module).

    Parameters
    ----------
    n_iter_no_change : int
        Evaluations without an improvement after which the rule fires.
    tol : float
        Relative improvement that counts: a loss below ``(1 - tol)`` times the best.
    validating : bool
        Whether there are validation data (held-out rows or ``X_val``) to judge by.
    """

    def __init__(self, n_iter_no_change: int, tol: float, validating: bool):
        self.n_iter_no_change, self.tol, self.validating = n_iter_no_change, tol, validating

    def on_train_begin(self, run: Run) -> None:
        self.cap, state = len(run.epochs), run.state
        if state.decaying:  # a resumed run: it may have ended already
            run.stop = bool(state.history) and state.history[-1]["epoch"] >= state.decay_end_epoch
        elif self._cap_forces(0):  # too short for a first phase
            self._start_decay(run, 0, MAX_EPOCHS)

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        done = epoch - run.epochs.start + 1  # epochs of this call once this one ends
        state = run.state
        last_of_phase = epoch == state.decay_end_epoch if state.decaying else self._cap_forces(done)
        run.evaluate = last_of_phase or done % run.epochs_per_evaluation == 0

    def on_epoch_end(self, run: Run, record: dict) -> None:
        self._check_finite(run, record)
        state, epoch = run.state, record["epoch"]
        if state.decaying:
            run.stop = epoch >= state.decay_end_epoch
            return
        if record["valid_loss"] is not None:
            self._judge(run, record["valid_loss"], epoch)
        done = epoch - run.epochs.start + 1
        if self.validating and self._exhausted(state):
            self._start_decay(run, done, STOP_RULE)
        elif self._cap_forces(done):
            if self.validating and state.improved_epoch is not None:  # not exhausted: it still improved
                state.warning = (
                    f"The validation loss was still improving by more than tol={self.tol:g} (relative) in the last "
                    f"{_plural(self.n_iter_no_change, 'evaluation')} when the fit reached max_epochs={self.cap}: "
                    "raise max_epochs."
                )
            self._start_decay(run, done, MAX_EPOCHS)

    def on_train_end(self, run: Run) -> None:
        if run.state.best_weights is not None:  # interrupted before the decay: the best weights so far
            run.model.load_state_dict(run.state.best_weights)

    # ----------------------------------------------------------------- the rule
    def _judge(self, run: Run, loss: float, epoch: int) -> None:
        """Track the best validation loss (and its weights) and the last improvement above ``tol``."""
        state = run.state
        if loss < state.best_loss * (1 - self.tol):
            state.improved_epoch = epoch
        if loss < state.best_loss:
            state.best_loss, state.best_epoch = loss, epoch
            state.best_weights = copy.deepcopy(run.evaluated.state_dict())

    def _exhausted(self, state) -> bool:
        """``n_iter_no_change`` evaluations have passed since the last improvement."""
        if state.improved_epoch is None:
            return False
        since = [r for r in state.history if r["epoch"] > state.improved_epoch and r["valid_loss"] is not None]
        return len(since) >= self.n_iter_no_change

    def _cap_forces(self, done: int) -> bool:
        """After ``done`` epochs of the first phase, one more would leave no room for its decay."""
        return done + 1 + decay_epochs(done + 1) > self.cap

    def _start_decay(self, run: Run, done: int, verdict: str) -> None:
        """End the first phase after ``done`` epochs of this call: train every row, decay the rate."""
        state = run.state
        length = self.cap - done if verdict == MAX_EPOCHS else decay_epochs(done)
        state.verdict = verdict
        state.decay_start_epoch = run.epochs.start + done - 1
        state.decay_end_epoch = state.decay_start_epoch + length
        state.decay_start_step = state.steps
        state.decay_steps = length * run.steps_per_epoch  # steps_per_epoch: of every row, now
        state.best_weights = None  # the decay's weights are kept

    @staticmethod
    def _check_finite(run: Run, record: dict) -> None:
        loss = record["batch_loss"]
        if not math.isfinite(loss):
            raise ValueError(
                f"Training diverged: the training loss of epoch {record['epoch']} is {loss}. Lower lr (now "
                f"{run.optimizer.defaults['lr']:g}), or look for extreme values in X (the embeddings) or y."
            )
