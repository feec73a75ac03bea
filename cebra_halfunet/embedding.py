"""``CEBRAEmbedding``: the Pipeline step that puts ``cebra.CEBRA`` in front of the decoder.

In ``make_pipeline(cebra.CEBRA(...), HalfUNetRegressor(...))`` scikit-learn hands the
frames ``y`` to CEBRA too. CEBRA refuses labels of more than 2 dimensions (and flat uint8
frames, as discrete labels of the wrong shape) and, given flat float frames, trains
behaviour-contrastive on a label of C*H*W dimensions: 8.3x slower per iteration than a compact
label at 64x128, 15.8x at 128x256 (``benchmarks/cebra_labels.py``), and not the label a user means. ``CEBRAEmbedding`` wraps the CEBRA model and
chooses its label: a compact PCA of the frames (the analogue of the image features used
as labels in the CEBRA paper), time alone, or ``y`` as given. The decoder after it still
receives the full frames.
"""

from __future__ import annotations

import contextlib
import threading
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.decomposition import PCA
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._cebra_pickling import register_cebra_pickling
from .targets import as_array


class CEBRAEmbedding(TransformerMixin, BaseEstimator):
    """Fit a CEBRA model on neural data with a label derived from the frames; transform to embeddings.

    Parameters
    ----------
    cebra : cebra.CEBRA or None, default None
        The model to fit (cloned in ``fit``). ``None``: ``cebra.CEBRA`` with
        ``model_architecture="offset10-model"``, ``output_dimension=16``,
        ``max_iterations=2000``, ``batch_size=512``, ``time_offsets=10``.
    label : {"pca", "time", "y"}, default "pca"
        ``"pca"``: the first ``n_components`` principal components of the frames,
        standardised (CEBRA-Behavior on image features). ``"time"``: no label,
        time-contrastive CEBRA (``y`` is ignored). ``"y"``: ``y`` as given, for a small
        behavioural label.
    n_components : int, default 8
        Width of the PCA label.
    max_label_pixels : int, default 1024
        The PCA reads at most this many pixel columns of the flattened frames (a fixed
        random subset), so its cost and CEBRA's do not grow with the image size.
    random_state : int, RandomState or None
        Seeds the pixel subset, the randomized PCA and CEBRA's training (cebra.CEBRA has
        no seed of its own: its fit runs with torch's and NumPy's global generators seeded
        from ``random_state``, and both get their state back afterwards). On a CPU the same
        ``random_state``, data, thread count and library versions give identical
        embeddings. Other torch or cebra versions, thread counts or CPUs may give other
        embeddings (other rounding, other random streams), and on a GPU CEBRA is not
        deterministic unless ``torch.use_deterministic_algorithms(True)`` is set.
        ``None``: a seed drawn from NumPy's global generator.

    Attributes
    ----------
    cebra_ : cebra.CEBRA
        The fitted model.
    label_pixels_ : ndarray of int or None
        Columns of the flattened frames that the PCA read.
    label_pca_ : PCA or None
    n_samples_fit_ : int
        Number of samples CEBRA was fitted on.
    """

    _parameter_constraints = {
        "cebra": "no_validation",
        "label": [StrOptions({"pca", "time", "y"})],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "max_label_pixels": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, cebra=None, label="pca", n_components=8, max_label_pixels=1024, random_state=None):
        self.cebra = cebra
        self.label = label
        self.n_components = n_components
        self.max_label_pixels = max_label_pixels
        self.random_state = random_state

    def fit(self, X, y=None):
        """Fit CEBRA on neural data ``X`` ``(N, n_neurons)`` with the label made from ``y``."""
        self._validate_params()
        X = np.asarray(as_array(X, "X"), dtype=np.float32)
        rng = check_random_state(self.random_state)
        pixels, pca, labels = None, None, ()
        if self.label != "time":
            if y is None:
                raise ValueError(f"label={self.label!r} needs y (the frames); use label='time' to fit without it.")
            y = as_array(y, "y")
            if len(y) != len(X):
                raise ValueError(f"X and y must have the same number of samples, got {len(X)} and {len(y)}.")
            if self.label == "pca":
                pixels, pca, label = self._pca_label(y, rng)
                labels = (label,)
            else:
                labels = (y,)
        model = clone(self.cebra) if self.cebra is not None else _default_cebra()
        register_cebra_pickling()
        with _seeded(rng.randint(np.iinfo(np.int32).max)):
            model.fit(X, *labels)
        # Set only once CEBRA's fit is done: a fit stopped by Ctrl-C leaves the step as it was.
        self.cebra_, self.label_pixels_, self.label_pca_ = model, pixels, pca
        self.n_features_in_, self.n_samples_fit_ = X.shape[1], len(X)
        return self

    def _pca_label(self, y: np.ndarray, rng: np.random.RandomState) -> tuple[np.ndarray, PCA, np.ndarray]:
        """``(pixels, pca, label)``: the pixel subset of ``y`` read, the PCA fitted on it, and
        the label, its standardised principal components ``(N, n_components)``."""
        flat = y.reshape(len(y), -1)
        n_pixels = min(flat.shape[1], self.max_label_pixels)
        pixels = np.sort(rng.choice(flat.shape[1], size=n_pixels, replace=False))
        pca = PCA(min(self.n_components, n_pixels, len(y)), svd_solver="randomized", whiten=True, random_state=rng)
        return pixels, pca, pca.fit_transform(flat[:, pixels].astype(np.float32)).astype(np.float32)

    def transform(self, X) -> np.ndarray:
        """Embeddings ``(N, output_dimension)`` of neural data ``X``."""
        check_is_fitted(self, "cebra_")
        X = np.asarray(as_array(X, "X"), dtype=np.float32)
        context = len(self.cebra_.model_.get_offset())
        if len(X) < context:
            raise ValueError(
                f"X has {len(X)} sample(s), fewer than the {context} consecutive samples that the fitted CEBRA model "
                f"({self.cebra_.model_architecture}) reads for each embedding (its context): transform at least {context} "
                "samples, e.g. the stretch of the recording around the ones you need, and keep the rows you want."
            )
        return self.cebra_.transform(X)


#: Held while a fit changes the process-wide random state (fits in threads take turns).
_GLOBAL_RANDOM_STATE = threading.Lock()


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed what CEBRA draws from inside the block: torch's and NumPy's global generators
    (both get their state back afterwards), and the generators of CEBRA's sampling
    distributions, which seed themselves from the operating system's entropy
    (``torch.Generator.seed()``) and are here seeded from torch's seeded global generator."""
    from cebra.distributions.base import HasGenerator

    with _GLOBAL_RANDOM_STATE, torch.random.fork_rng():
        seed_itself, numpy_state = HasGenerator.__init__, np.random.get_state()

        def seed_from_torch(distribution, *args, **kwargs):
            seed_itself(distribution, *args, **kwargs)
            distribution._seed = int(torch.randint(2**62, ()))
            distribution.generator.manual_seed(distribution._seed)

        torch.manual_seed(seed)
        np.random.seed(seed)
        HasGenerator.__init__ = seed_from_torch
        try:
            yield
        finally:
            HasGenerator.__init__ = seed_itself
            np.random.set_state(numpy_state)


def _default_cebra():
    import cebra

    return cebra.CEBRA(
        model_architecture="offset10-model",
        output_dimension=16,
        max_iterations=2000,
        batch_size=512,
        time_offsets=10,
        verbose=False,
    )
