"""The trainer's event interface: user callbacks, the learning-rate schedule, and the
training loss measured the way the validation loss is."""

import numpy as np
import pytest
import torch
from sklearn.base import clone

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.callbacks import TOTAL_STEPS, Callback, LRScheduler

FAST = dict(latent_dim=16, max_epochs=3, batch_size=16, random_state=0, ensemble_size=1, lr=1e-3, lr_schedule="constant")


class Recorder(Callback):
    """Records the events and the learning rate after every batch."""

    def __init__(self):
        self.events, self.rates = [], []

    def on_train_begin(self, run):
        self.events.append(("begin", run.total_steps))

    def on_epoch_begin(self, run, epoch):
        self.events.append(("epoch", epoch))

    def on_batch_end(self, run, loss):
        self.rates.append(run.optimizer.param_groups[0]["lr"])

    def on_train_end(self, run):
        self.events.append(("end", len(run.state.history)))


def test_user_callbacks_see_every_event_on_a_copy(data, monkeypatch):
    z, images = data
    recorder = Recorder()
    seen = []
    monkeypatch.setattr(Recorder, "on_train_end", lambda self, run: seen.append(self))
    model = HalfUNetRegressor(**FAST, early_stopping=False, callbacks=[recorder]).fit(z, images)
    assert recorder.events == [] and recorder.rates == []  # the user's object is not changed
    copy = seen[0]
    assert copy is not recorder
    assert copy.events == [("begin", 3 * 4), ("epoch", 1), ("epoch", 2), ("epoch", 3)]  # 60 rows, batches of 16
    assert len(copy.rates) == 12 and model.n_epochs_ == 3
    assert clone(model).callbacks[0] is not recorder and isinstance(clone(model).callbacks[0], Recorder)


def test_lr_scheduler_steps_per_batch_over_the_total_steps(data, monkeypatch):
    z, images = data
    seen = []
    monkeypatch.setattr(Recorder, "on_train_end", lambda self, run: seen.append(self))
    schedule = LRScheduler(torch.optim.lr_scheduler.LinearLR, start_factor=1.0, end_factor=0.0, total_iters=TOTAL_STEPS)
    plain = HalfUNetRegressor(**FAST, early_stopping=False).fit(z, images)
    scheduled = HalfUNetRegressor(**FAST, early_stopping=False, callbacks=[schedule, Recorder()]).fit(z, images)
    rates = seen[0].rates
    np.testing.assert_allclose(rates, 1e-3 * (1 - np.arange(1, 13) / 12), atol=1e-12)
    assert not np.array_equal(plain.predict(z), scheduled.predict(z))
    with pytest.raises(ValueError, match="step_every"):
        LRScheduler(torch.optim.lr_scheduler.StepLR, step_every="week", step_size=1)


@pytest.mark.parametrize("early_stopping", [True, False])
def test_train_loss_is_measured_as_the_validation_loss(data, early_stopping):
    z, images = data
    params = dict(max_epochs=2, early_stopping=early_stopping, embedding_noise=3.0, ema_decay=0.9)
    model = HalfUNetRegressor(**(FAST | params)).fit(z, images)
    record = model.history_[-1]
    assert set(record) == {"epoch", "phase", "train_loss", "batch_loss", "valid_loss", "valid_score", "held_out_loss", "duration_s"}
    # kept (averaged) weights, no noise, on rows drawn with the seed that are not held out: as
    # many as the held-out rows, or a tenth of the rows without them
    rows = np.flatnonzero(~model.validation_mask_)
    n_probe = model.validation_mask_.sum() if early_stopping else 6
    assert len(rows) == (60 - 6 if early_stopping else 60)  # 6 held out
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(model.seed_)).numpy()
    probe = np.sort(rows[order[:n_probe]])
    assert record["train_loss"] == pytest.approx(model.evaluate_loss(z[probe], images[probe]), rel=1e-5)
    assert record["batch_loss"] != pytest.approx(record["train_loss"], rel=1e-3)


def test_verbose_prints_a_line_per_epoch_with_the_best_marked(data, capsys):
    z, images = data
    model = HalfUNetRegressor(**(FAST | dict(max_epochs=5, lr_schedule="warmup_stable_decay")), verbose=1).fit(z, images)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[0] == "pilot: one decoder on the training frames, validated"
    assert lines[1].split() == ["epoch", "phase", "batch_loss", "train_loss", "valid_loss", "valid_ssim", "held_out", "lr", "dur"]
    final = lines.index("decoder, every frame")
    rows = [line.split() for line in lines[3:final] + lines[final + 3 :]]
    assert [int(row[0]) for row in rows] == [record["epoch"] for record in model.history_]
    assert [row[1] for row in rows] == [record["phase"] for record in model.history_]
    best = [row for row in rows if any(cell.endswith("*") for cell in row)]
    assert [int(row[0]) for row in best][-1] == model.best_epoch_
    assert float(rows[-1][-2]) == 0.0 and rows[-1][-1].endswith("s")  # the rate decayed to 0 at the last step
