"""Ctrl-C during fit: stop after the batch, keep the best weights and history, warn, re-raise."""

import copy
import os
import signal

import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.callbacks import Callback

from .conftest import at_training_batch

# 60 training samples: 4 batches/epoch; a constant rate, so that the first epochs of a longer fit
# are those of a shorter one
FAST = dict(latent_dim=16, max_epochs=5, batch_size=16, random_state=0, lr_schedule="constant")


def send_sigint():
    os.kill(os.getpid(), signal.SIGINT)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt


@pytest.mark.parametrize("interrupt", [send_sigint, raise_keyboard_interrupt])
def test_ctrl_c_keeps_the_best_weights_warns_and_reraises(data, monkeypatch, interrupt):
    z, images = data
    snapshots = {}

    class Snapshot(Callback):
        def on_epoch_end(self, run, record):
            snapshots[record["epoch"]] = copy.deepcopy(run.evaluated.state_dict())

    validation = dict(X_val=z[:7] + 0.1, y_val=images[:7])  # validated on X_val: one run, every row trains
    reference = HalfUNetRegressor(**FAST, callbacks=[Snapshot()]).fit(z, images, **validation)  # epochs 1-2 as interrupted
    handler = signal.getsignal(signal.SIGINT)
    batches = at_training_batch(monkeypatch, 10, interrupt)  # epoch 3, batch 2
    model = HalfUNetRegressor(**FAST)
    with pytest.raises(KeyboardInterrupt), pytest.warns(RuntimeWarning, match="interrupted after 2 complete epoch") as caught:
        model.fit(z, images, **validation)
    assert not any(issubclass(w.category, ConvergenceWarning) for w in caught)  # stopped before the cap
    assert len(batches) == 10  # stopped after the batch in progress
    assert signal.getsignal(signal.SIGINT) is handler
    assert [record["epoch"] for record in model.history_] == [1, 2] and model.n_epochs_ == 2
    assert model.stop_reason_ == "interrupted"
    best = min(reference.history_[:2], key=lambda record: record["valid_loss"])["epoch"]
    assert model.best_epoch_ == best
    for name, value in model.module_.state_dict().items():  # the best epoch's (averaged) weights
        assert torch.equal(value, snapshots[best][name]), name


def test_interrupted_fit_without_validation_keeps_the_last_weights_and_partial_fit_resumes(data, monkeypatch):
    z, images = data
    batches = at_training_batch(monkeypatch, 6, send_sigint)  # epoch 2, batch 2 of 4
    model = HalfUNetRegressor(**FAST, early_stopping=False)
    with pytest.raises(KeyboardInterrupt), pytest.warns(RuntimeWarning, match="its last weights"):
        model.fit(z, images)
    assert len(batches) == 6 and model.n_epochs_ == 1 and model.best_epoch_ is None
    assert model.predict(z).shape == images.shape
    model.partial_fit(z, images)
    assert [record["epoch"] for record in model.history_] == [1, 2]


def test_a_ctrl_c_the_user_ignores_stays_ignored(data, monkeypatch):
    z, images = data
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        at_training_batch(monkeypatch, 2, send_sigint)
        model = HalfUNetRegressor(**FAST, early_stopping=False).fit(z, images)  # not interrupted
        assert model.n_epochs_ == 5 and model.stop_reason_ == "max_epochs"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
