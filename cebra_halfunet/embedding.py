"""``CEBRAEmbedding``: the Pipeline step that puts ``cebra.CEBRA`` in front of the decoder.

In ``make_pipeline(cebra.CEBRA(...), HalfUNetRegressor(...))`` scikit-learn hands the
frames ``y`` to CEBRA too. CEBRA refuses 4-d labels and, given flattened frames, trains
behaviour-contrastive on a label of C*H*W dimensions: 25-50x slower per iteration at
128x256, and not the label a user means. ``CEBRAEmbedding`` wraps the CEBRA model and
chooses its label: a compact PCA of the frames (the analogue of the image features used
as labels in the CEBRA paper), time alone, or ``y`` as given. The decoder after it still
receives the full frames.
"""

from __future__ import annotations

import os
from numbers import Integral
import tempfile

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.decomposition import PCA
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

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
        Seeds the pixel subset and the randomized PCA.

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
        self.label_pixels_, self.label_pca_ = None, None
        self.cebra_ = clone(self.cebra) if self.cebra is not None else _default_cebra()
        if self.label == "time":
            self.cebra_.fit(X)
        else:
            if y is None:
                raise ValueError(f"label={self.label!r} needs y (the frames); use label='time' to fit without it.")
            y = as_array(y, "y")
            if len(y) != len(X):
                raise ValueError(f"X and y must have the same number of samples, got {len(X)} and {len(y)}.")
            self.cebra_.fit(X, self._pca_label(y) if self.label == "pca" else y)
        self.n_features_in_, self.n_samples_fit_ = X.shape[1], len(X)
        return self

    def _pca_label(self, y: np.ndarray) -> np.ndarray:
        """Fit the label PCA; standardised principal components of a pixel subset of ``y``,
        ``(N, n_components)``."""
        flat = y.reshape(len(y), -1)
        rng = check_random_state(self.random_state)
        n_pixels = min(flat.shape[1], self.max_label_pixels)
        self.label_pixels_ = np.sort(rng.choice(flat.shape[1], size=n_pixels, replace=False))
        n_components = min(self.n_components, n_pixels, len(y))
        self.label_pca_ = PCA(n_components, svd_solver="randomized", whiten=True, random_state=rng)
        return self.label_pca_.fit_transform(flat[:, self.label_pixels_].astype(np.float32)).astype(np.float32)

    def transform(self, X) -> np.ndarray:
        """Embeddings ``(N, output_dimension)`` of neural data ``X``."""
        check_is_fitted(self, "cebra_")
        return self.cebra_.transform(np.asarray(as_array(X, "X"), dtype=np.float32))

    def __getstate__(self):
        """CEBRA models do not pickle; store a fitted one through its own ``save``."""
        state = self.__dict__.copy()
        if "cebra_" in state:
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "cebra.pt")
                state["cebra_"].save(path)
                with open(path, "rb") as file:
                    state["cebra_"] = file.read()
        return state

    def __setstate__(self, state):
        if isinstance(state.get("cebra_"), bytes):
            import cebra

            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "cebra.pt")
                with open(path, "wb") as file:
                    file.write(state["cebra_"])
                state["cebra_"] = cebra.CEBRA.load(path)
        self.__dict__.update(state)


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
