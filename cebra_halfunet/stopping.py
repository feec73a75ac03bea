"""Why a fit stopped: the values of ``stop_reason_``."""

from __future__ import annotations

#: ``stop_reason_`` values: the stop rule fired, the epoch cap was reached, Ctrl-C.
STOP_RULE, MAX_EPOCHS, INTERRUPTED = "stop rule", "max_epochs", "interrupted"

