"""Why a fit stopped, and whether it stopped before converging."""

from __future__ import annotations

#: ``stop_reason_`` values: the stop rule fired, the epoch cap was reached, Ctrl-C.
STOP_RULE, MAX_EPOCHS, INTERRUPTED = "stop rule", "max_epochs", "interrupted"


def still_improving(epochs_run: int, max_epochs: int, best_epoch: int | None, patience: int | None) -> bool:
    """Whether a ``fit`` that ended at its epoch cap should raise a ``ConvergenceWarning``.

    True when the call ran all ``max_epochs`` epochs and its best validation epoch is among
    the last ``patience``: the validation loss was still improving, so more epochs (or a
    higher learning rate) would likely help. Epochs are counted within the call (1 is its
    first epoch; continued training passes its own count). False without validation
    (``best_epoch`` or ``patience`` None), for a run the stop rule or an interrupt ended
    (fewer than ``max_epochs`` epochs), and never to be asked for ``partial_fit``, whose
    single epoch is not a fit that could converge.
    """
    if best_epoch is None or patience is None or epochs_run < max_epochs:
        return False
    return best_epoch > epochs_run - patience
