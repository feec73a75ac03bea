import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


def make_images(n=60, shape=(8, 16), channels=1, dim=4, seed=0):
    """Embeddings ``(n, dim)`` and smooth images ``(n, channels, H, W)`` in [0, 1] that
    depend on them (sinusoids whose frequency and phase follow the embedding)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dim)).astype(np.float32)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    images = np.stack(
        [
            [np.sin((3 + row[0]) * xx * 4 + row[1] + c) * np.cos((2 + row[2]) * yy * 4 + row[3]) for c in range(channels)]
            for row in z
        ]
    )
    return z, ((images + 1) / 2).astype(np.float32)


@pytest.fixture
def data():
    return make_images()


@pytest.fixture
def one_thread():
    """One torch thread: float32 sums split over two threads can differ in the last bit, so
    results compared bit for bit with one-thread runs (other processes, stored files) use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def evaluate_every_epoch(monkeypatch):
    """The tests' data sets are tiny (60 samples: 4 batches of 16 an epoch), where a fit would
    evaluate only every 8 epochs (``training.EVALUATION_STEPS``): here every epoch is an
    evaluation, as on real data; tests of the period itself, and tests whose fits run in other
    processes (which this cannot reach), use :func:`default_evaluation_period`."""
    monkeypatch.setattr("cebra_halfunet.training.EVALUATION_STEPS", 1)


@pytest.fixture
def default_evaluation_period(monkeypatch):
    from cebra_halfunet import training

    monkeypatch.setattr(training, "EVALUATION_STEPS", _DEFAULT_EVALUATION_STEPS)


def _default_evaluation_steps() -> int:
    from cebra_halfunet import training

    return training.EVALUATION_STEPS


_DEFAULT_EVALUATION_STEPS = _default_evaluation_steps()


def at_training_batch(monkeypatch, at_batch, action):
    """Make ``HalfUNetRegressor``'s training loss call ``action()`` at training batch
    ``at_batch`` (1-based; validation batches do not count). Returns the list that
    records one entry per training batch run."""
    from cebra_halfunet import HalfUNetRegressor

    batches = []
    original = HalfUNetRegressor._training_loss

    def training_loss(self):
        loss = original(self)

        def counted(prediction, target):
            if prediction.requires_grad:  # training batches, not validation
                batches.append(1)
                if len(batches) == at_batch:
                    action()
            return loss(prediction, target)

        return counted

    monkeypatch.setattr(HalfUNetRegressor, "_training_loss", training_loss)
    return batches
