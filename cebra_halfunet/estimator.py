"""``HalfUNetRegressor``: the scikit-learn estimator that decodes embeddings into images."""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._checks import check_output_shape
from .losses import LOSS_NAMES, make_loss
from .metrics import pooled_r2
from .networks import HalfUNetDecoder
from .targets import ImageOutput, TargetFormat, as_array, pixel_moments, value_range
from .training import predict_into, resolve_device, train


def _to_cpu(state):
    """Copy of a (nested) state dict with every tensor on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().clone()
    if isinstance(state, dict):
        return {key: _to_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(value) for value in state)
    return state


class HalfUNetRegressor(RegressorMixin, BaseEstimator):
    """Decode embeddings (e.g. from ``cebra.CEBRA``) into images with a HalfUNet decoder.

    Parameters
    ----------
    output_shape : (int, int) or None, default None
        Image size ``(H, W)``. ``None``: taken from image-shaped ``y``. Needed for
        flattened ``y`` ``(N, C*H*W)``; without it a flat ``y`` of ``F`` values per sample
        is decoded as a ``1 x F`` image (and a 1-d ``y`` as one value).
    output_channels : int or None, default None
        ``None``: from ``y`` (1 for ``(N, H, W)``). With flat ``y`` and ``output_shape``,
        inferred as ``F / (H*W)``.
    latent_dim : int or None, default 512
        Width of the decoder's latent vector; from 1024 up the large body (RRDB,
        PixelShuffle, channel attention, edge head) is used. ``None``: the embedding width.
    loss : {"mse", "l1", "bce", "ssim", "l1_ssim"}, default "mse"
        Training loss. ``"bce"`` needs targets in [0, 1] (binary images); predictions are
        then probabilities. ``"l1_ssim"`` (0.84 SSIM + 0.16 L1) gives the sharpest frames.
    lr : float, default 1e-3
        AdamW learning rate.
    batch_size : int, default 32
        Mini-batch size for training; prediction uses the same size.
    max_epochs : int, default 100
        Epochs per ``fit`` (``partial_fit`` runs one).
    weight_decay : float, default 1e-4
        AdamW's decoupled weight decay.
    validation_fraction : float in [0, 1), default 0.1
        With ``early_stopping``, the last fraction of the samples (in the given order: a
        contiguous stretch of a recording, not a shuffled subset that neighbouring,
        correlated frames would leak into) is held out to choose the best epoch.
    early_stopping : bool, default True
        Stop after ``patience`` epochs without a better validation loss and restore the
        weights of the best epoch. ``False`` trains on all samples for ``max_epochs``.
    patience : int, default 10
    device : str, default "auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    random_state : int, RandomState or None, default None
        Seeds the weights and the shuffling: same seed, same predictions (on CPU).
    warm_start : bool, default False
        ``fit`` continues from the fitted weights instead of starting again.
    verbose : bool or int, default False
        Show a progress bar with the losses.
    gradient_checkpointing : bool, default False
        Recompute activations in the backward pass: less memory, same result.

    Attributes
    ----------
    module_ : torch.nn.Module
        The fitted network (on the CPU between calls): embeddings ``(B, D)`` to images
        ``(B, C, H, W)`` in training units (for ``"bce"``, logits).
    target_format_ : TargetFormat
        Rank, image shape and dtype of ``y`` in ``fit``; ``predict`` returns this form.
    data_range_ : float
        Span of the target values (255 for uint8, 1 for images in [0, 1]); used by
        the SSIM loss and the image scorers.
    history_ : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``valid_loss`` (None without early
        stopping), ``duration_s``.
    n_epochs_ : int
        Epochs trained in all calls together.
    best_epoch_ : int or None
        Epoch whose weights were kept by early stopping.
    n_features_in_ : int
        Embedding width seen in ``fit``.

    Notes
    -----
    ``score`` is R² pooled over all pixels (see :func:`cebra_halfunet.metrics.pooled_r2`):
    the uniform average of per-pixel R² that ``RegressorMixin`` would give scores a pixel
    of constant background as perfect or as zero, which says nothing about the images.
    For image quality use ``scoring=ssim_scorer`` or ``psnr_scorer``.
    """

    _parameter_constraints = {
        "output_shape": [None, tuple, list],
        "output_channels": [None, Interval(Integral, 1, None, closed="left")],
        "latent_dim": [None, Interval(Integral, 1, None, closed="left")],
        "loss": [StrOptions(set(LOSS_NAMES))],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "early_stopping": ["boolean"],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "gradient_checkpointing": ["boolean"],
    }

    def __init__(
        self,
        output_shape=None,
        output_channels=None,
        latent_dim=512,
        loss="mse",
        lr=1e-3,
        batch_size=32,
        max_epochs=100,
        weight_decay=1e-4,
        validation_fraction=0.1,
        early_stopping=True,
        patience=10,
        device="auto",
        random_state=None,
        warm_start=False,
        verbose=False,
        gradient_checkpointing=False,
    ):
        self.output_shape = output_shape
        self.output_channels = output_channels
        self.latent_dim = latent_dim
        self.loss = loss
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.patience = patience
        self.device = device
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.gradient_checkpointing = gradient_checkpointing

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.input_tags.allow_nan = False
        return tags

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y):
        """Train the decoder on embeddings ``X`` ``(N, D)`` and images ``y``.

        ``y``: ``(N, H, W)``, ``(N, C, H, W)`` or flat ``(N, C*H*W)`` with
        ``output_shape``; NumPy array, memmap or tensor; uint8 is read as 0-255 images.
        With ``warm_start=True`` and a fitted decoder, training continues.
        """
        return self._fit(X, y, incremental=self.warm_start and hasattr(self, "module_"))

    def partial_fit(self, X, y):
        """One epoch over ``(X, y)`` (all samples, no early stopping), continuing if fitted."""
        return self._fit(X, y, incremental=hasattr(self, "module_"), epochs=1)

    def _fit(self, X, y, incremental: bool, epochs: int | None = None):
        self._validate_params()
        output_shape = None if self.output_shape is None else check_output_shape(self.output_shape)
        device = resolve_device(self.device)
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        X = validate_data(self, X, reset=not incremental, dtype=np.float32)
        y = as_array(y, "y")
        if len(y) != len(X):
            raise ValueError(f"X and y must have the same number of samples, got {len(X)} and {len(y)}.")
        target_format = TargetFormat.infer(y, output_shape, self.output_channels)
        if incremental and target_format != self.target_format_:
            raise ValueError(
                f"y must have the form of the targets the decoder was fitted on ({self.target_format_}), "
                f"got {target_format}."
            )
        images = target_format.to_images(y)
        low, high = value_range(images, "y")
        if self.loss == "bce" and (low * target_format.value_scale < 0 or high * target_format.value_scale > 1):
            raise ValueError(f"loss='bce' needs targets in [0, 1], got values in [{low}, {high}].")

        use_validation = epochs is None and self.early_stopping
        # round() first: 0.1 * 60 is 6.000000000000001 in floating point, not 6.
        n_valid = math.ceil(round(self.validation_fraction * len(X), 6)) if use_validation else 0
        if use_validation and (n_valid < 1 or len(X) - n_valid < 1):
            raise ValueError(
                f"early_stopping needs at least one training and one validation sample "
                f"(validation_fraction={self.validation_fraction}), got {len(X)} sample(s)."
            )
        n_train = len(X) - n_valid

        if not incremental:
            self._initialise(target_format, images[:n_train], low, high)
        model = self.module_.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if incremental:
            optimizer.load_state_dict(self.optimizer_state_)
            for group in optimizer.param_groups:
                group.update(lr=self.lr, weight_decay=self.weight_decay)

        inputs, targets = torch.from_numpy(X), target_format.to_tensor(images)
        result = train(
            model,
            optimizer,
            self._training_loss(),
            inputs[:n_train],
            targets[:n_train],
            X_valid=inputs[n_train:] if n_valid else None,
            Y_valid=targets[n_train:] if n_valid else None,
            encode=target_format.encode_batch,
            max_epochs=epochs or self.max_epochs,
            batch_size=self.batch_size,
            device=device,
            generator=torch.Generator().manual_seed(self.seed_ + self.n_epochs_),
            patience=self.patience if use_validation else None,
            first_epoch=self.n_epochs_ + 1,
            verbose=bool(self.verbose),
        )
        self.module_ = model.cpu()
        self.optimizer_state_ = _to_cpu(optimizer.state_dict())
        self.history_ = self.history_ + result.history
        self.n_epochs_ = self.history_[-1]["epoch"]
        self.best_epoch_ = result.best_epoch
        return self

    def _initialise(self, target_format: TargetFormat, train_images: np.ndarray, low: float, high: float):
        """Build a fresh network for ``target_format``, normalised by the training targets."""
        self.target_format_ = target_format
        if target_format.dtype == np.uint8:
            self.data_range_ = 255.0
        else:  # images in [0, 1] keep the conventional range 1; constant targets get 1 too
            self.data_range_ = 1.0 if (0 <= low and high <= 1) or high == low else high - low
        self.seed_ = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        mean, std = pixel_moments(train_images, target_format.value_scale)
        if self.loss == "bce":
            clipped = np.clip(mean, 1e-3, 1 - 1e-3)
            offset, scale = np.log(clipped / (1 - clipped)), 1.0
        else:
            offset, scale = mean, std or 1.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed_)
            decoder = HalfUNetDecoder(
                self.n_features_in_,
                target_format.channels,
                target_format.shape,
                self.latent_dim,
                gradient_checkpointing=self.gradient_checkpointing,
            )
        self.module_ = ImageOutput(decoder, offset, scale)
        self.history_, self.n_epochs_, self.best_epoch_ = [], 0, None

    def _training_loss(self):
        """The loss being minimised, in network units (targets' span times the value scale)."""
        return make_loss(self.loss, self.data_range_ * self.target_format_.value_scale)

    # --------------------------------------------------------------- prediction
    def predict(self, X):
        """Images for embeddings ``X`` ``(N, D)``, in the form of ``y`` in ``fit``.

        Runs in batches of ``batch_size`` under ``torch.no_grad()`` and writes into one
        preallocated array: memory is the output plus one batch, for any ``N``.
        """
        check_is_fitted(self, "module_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        target_format = self.target_format_
        out = np.empty((len(X), target_format.channels, *target_format.shape), dtype=target_format.output_dtype)
        activation = torch.sigmoid if self.loss == "bce" else (lambda t: t)
        predict_into(
            self.module_,
            torch.from_numpy(X),
            out,
            lambda batch: target_format.decode_batch(activation(batch)),
            self.batch_size,
            self._inference_device(),
        )
        self.module_.cpu()
        return target_format.from_images(out)

    def _inference_device(self) -> torch.device:
        """The configured device, or the CPU (with a warning) when it is not on this machine."""
        try:
            return resolve_device(self.device)
        except ValueError as error:
            warnings.warn(f"{error} Predicting on the CPU instead.", RuntimeWarning, stacklevel=3)
            return torch.device("cpu")

    def score(self, X, y, sample_weight=None) -> float:
        """R² pooled over all pixels of ``y`` (see Notes); 1 is perfect."""
        prediction = self.predict(X)
        y = as_array(y, "y")
        self.target_format_.check(y)
        return pooled_r2(y, prediction, sample_weight)
