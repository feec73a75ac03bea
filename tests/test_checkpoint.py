"""Checkpoints: written atomically every N epochs; a fit resumed after a crash ends exactly
as the uninterrupted run."""

import os

import numpy as np
import pytest

from cebra_halfunet import HalfUNetRegressor

from .conftest import at_training_batch

FAST = dict(latent_dim=16, max_epochs=12, batch_size=16, n_iter_no_change=2, random_state=0, scoring="loss")  # 4 batches/epoch


def crash():
    raise RuntimeError("simulated crash")


@pytest.mark.parametrize("every", [1, 2])
def test_resumed_fit_equals_the_uninterrupted_run(data, tmp_path, monkeypatch, every):
    z, images = data
    fast = FAST | {"tol": 0.0}  # every improvement counts: a pilot of 5 epochs and a length of 3
    reference = HalfUNetRegressor(**fast).fit(z, images)
    path = tmp_path / "run.safetensors"
    with monkeypatch.context() as patch:
        # the pilot: 5 epochs of 4 batches (51 rows); the decoder: 3 + 1 epochs of 4 batches (60 rows)
        at_training_batch(patch, 5 * 4 + 3 * 4 + 2, crash)  # in the decay, its second batch
        with pytest.raises(RuntimeError, match="simulated crash"):
            HalfUNetRegressor(**fast, checkpoint_path=path, checkpoint_every=every).fit(z, images)
    saved = HalfUNetRegressor.load(path)
    assert saved.n_epochs_ == {1: 8, 2: 7}[every]  # checkpoints of the decoder's run, not of the pilot's
    resumed = HalfUNetRegressor(**fast, checkpoint_path=str(path), checkpoint_every=every, verbose=1).fit(z, images)
    assert [r["phase"] for r in reference.history_] == ["pilot"] * 5 + ["stable"] * 3 + ["decay"]
    for name in ("epoch", "phase", "train_loss", "valid_loss", "held_out_loss"):
        assert [r[name] for r in resumed.history_] == [r[name] for r in reference.history_]
    assert resumed.best_epoch_ == reference.best_epoch_
    assert resumed.stop_reason_ == reference.stop_reason_ == "stop rule"  # the rule's state and the phase resumed
    np.testing.assert_array_equal(resumed.predict(z), reference.predict(z))
    assert sorted(os.listdir(tmp_path)) == [
        ".run.safetensors.lock", "run.safetensors"]  # no temporary files left (the lock file stays)


def test_finished_checkpoint_gives_the_same_decoder_without_training(data, tmp_path, monkeypatch):
    z, images = data
    path = tmp_path / "run.safetensors"
    first = HalfUNetRegressor(**FAST, checkpoint_path=path).fit(z, images)
    at_training_batch(monkeypatch, 1, crash)  # any training batch would crash
    again = HalfUNetRegressor(**FAST, checkpoint_path=path).fit(z, images)
    np.testing.assert_array_equal(again.predict(z), first.predict(z))
    assert again.history_ == first.history_


def test_checkpoint_of_another_fit_is_refused(data, tmp_path):
    z, images = data
    path = tmp_path / "run.safetensors"
    HalfUNetRegressor(**FAST, checkpoint_path=path).fit(z, images)
    with pytest.raises(ValueError, match="checkpoint_path=.*parameters differ"):
        HalfUNetRegressor(**(FAST | {"lr": 0.01}), checkpoint_path=path).fit(z, images)
    with pytest.raises(ValueError, match="checkpoint_path=.*data"):
        HalfUNetRegressor(**FAST, checkpoint_path=path).fit(z + 1, images)
    with pytest.raises(ValueError, match="checkpoint_path=.*data"):  # targets of the same form, other values
        HalfUNetRegressor(**FAST, checkpoint_path=path).fit(z, images[::-1])
    validated = tmp_path / "validated.safetensors"
    HalfUNetRegressor(**FAST, checkpoint_path=validated).fit(z, images, X_val=z[:5], y_val=images[:5])
    with pytest.raises(ValueError, match="checkpoint_path=.*data"):  # the same X_val, other y_val
        HalfUNetRegressor(**FAST, checkpoint_path=validated).fit(z, images, X_val=z[:5], y_val=images[5:10])
    HalfUNetRegressor(**FAST).fit(z, images).save(path)  # a saved decoder, not a checkpoint
    with pytest.raises(ValueError, match="not a checkpoint"):
        HalfUNetRegressor(**FAST, checkpoint_path=path).fit(z, images)


def test_a_failed_write_leaves_the_previous_file(data, tmp_path, monkeypatch):
    z, images = data
    path = tmp_path / "run.safetensors"
    model = HalfUNetRegressor(**(FAST | {"max_epochs": 2}), checkpoint_path=path).fit(z, images)
    before = path.read_bytes()

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as file:
            file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("cebra_halfunet.persistence.save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        model.partial_fit(z, images)  # writes its checkpoint over the same path
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [".run.safetensors.lock", "run.safetensors"]  # no temporary file left
