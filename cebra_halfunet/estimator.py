"""``HalfUNetRegressor``: the scikit-learn face of the decoder.

Parameters, validation and the steps of a fit (prepare the targets, start a new, resumed or
continued run, train, finish); the loop is :class:`~cebra_halfunet.training.Trainer`'s,
the file format :mod:`~cebra_halfunet.persistence`'s.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import warnings
from dataclasses import dataclass, replace
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._cebra_pickling import register_cebra_pickling
from ._checks import check_numbers, check_output_shape
from .callbacks import Callback, Checkpoint, PrintLog, WarmupStableDecay, WeightAveraging
from .losses import LOSS_NAMES, make_loss, per_member, ssim
from .metrics import check_finite_images, in_memory, pooled_r2
from .networks import LARGE_LATENT_DIM, DecoderEnsemble, HalfUNetDecoder, ImageOutput
from .persistence import exclusive
from .saving import SavingMixin
from .splits import ValidationSplit, frame_validation_split
from .splits import frame_ids as first_copies
from .stopping import INTERRUPTED, STOP_RULE, Pilot, StopRule, final_epochs
from .targets import LAYOUTS, TargetFormat, TargetScan, as_array, scan_targets
from .training import (
    Trainer, TrainingState, catch_out_of_memory, fastest_precision, release_device_memory, resolve_device, state_to_cpu,
)


#: Largest magnitude of an embedding value: beyond it the network's float32 sums overflow.
X_LIMIT = 1e18


def _out_of_memory(stage: str, advice: str) -> torch.cuda.OutOfMemoryError:
    """The error that says what to change (the memory was released when it was caught)."""
    return torch.cuda.OutOfMemoryError(
        f"HalfUNetRegressor ran out of GPU memory during {stage}. {advice} "
        "The GPU memory it held has been released, so a search can go on with other settings."
    )


def _check_frame_ids(ids, n_samples: int, name: str) -> np.ndarray:
    """``ids`` as an array; a ValueError naming it unless it is one label per sample, none missing."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n_samples:
        raise ValueError(f"{name} must have one entry per sample of X ({n_samples}), got shape {ids.shape}.")
    missing = ids != ids  # NaN
    if ids.dtype == object:
        missing = missing | np.array([value is None for value in ids])
    if np.any(missing):
        raise ValueError(f"{name} must name the frame of every sample, got {int(np.sum(missing))} missing (NaN or None).")
    return ids


def _frame_ids_from(frame_ids, groups):
    """``frame_ids``, or ``groups`` (its name before) with a FutureWarning."""
    if groups is None:
        return frame_ids, "frame_ids"
    if frame_ids is not None:
        raise ValueError("Pass frame_ids only (groups is its earlier name).")
    warnings.warn(
        "fit(groups=...) is renamed frame_ids and will be removed in the next release: pass frame_ids=<the stimulus "
        "frame of each sample>. groups is what scikit-learn's searches give their CV splitter (repeat, trial or block "
        "ids), and as frame ids those hold out whole repeats from training.",
        FutureWarning,
        stacklevel=3,
    )
    return groups, "groups"


@dataclass
class _FitData:
    """What the first step of a fit prepared: checked inputs, targets and their facts."""

    X: np.ndarray
    target_format: TargetFormat
    images: object  # (N, C, H, W) ndarray or DiskImages
    moments: tuple  # (mean image, pixel standard deviation) of every row
    training_moments: tuple  # of the rows outside the split's held-out frames and gaps (the pilot's)
    split: ValidationSplit  # validation rows, gap rows, and how they were chosen
    validation: tuple | None  # (X_val, images of y_val) given by the user
    fingerprint: dict

    @property
    def pilots(self) -> bool:
        """Frames of X are held out: a pilot run chooses the length (see :mod:`~cebra_halfunet.stopping`)."""
        return bool(self.split.held_out.any())


class _InterruptedPilot(KeyboardInterrupt):
    """Ctrl-C while the pilot chose the length: nothing was trained to keep."""


class HalfUNetRegressor(SavingMixin, RegressorMixin, BaseEstimator):
    """Decode embeddings (e.g. from ``cebra.CEBRA``) into images with a HalfUNet decoder.

    Parameters
    ----------
    output_shape : (int, int) or None, default None
        Image size ``(H, W)``. ``None``: taken from image-shaped ``y``. Needed for
        flattened ``y`` ``(N, C*H*W)``; without it a flat ``y`` of ``F`` values per sample
        is decoded as a ``1 x F`` image (and a 1-d ``y`` as one value).
    output_channels : int or None, default None
        ``None``: from ``y`` (1 for ``(N, H, W)``). With flat ``y`` and ``output_shape``,
        inferred as ``F / (H*W)``. Settles the layout of a 4-d ``y`` that reads both ways.
    target_layout : {"auto", "channels_first", "channels_last"}, default "auto"
        Layout of ``y``. ``"auto"``, for a 4-d ``y`` ``(N, A, B, L)``: channels-last when
        ``L`` is 1, 3 or 4 and ``A`` is not; channels-first when ``A`` is and ``L`` is not,
        or neither is; both raise a ValueError (state the layout), unless
        ``output_channels`` or ``output_shape`` agree with one reading only. Flat ``y`` is
        channels-first unless stated: ``"channels_last"`` reads it as flattened
        ``(N, H, W, C)`` frames. Predictions come back in ``y``'s layout.
    latent_dim : int or None, default 512
        Width of the decoder's latent vector. ``None``: the embedding width.
    body : {"auto", "light", "large"}, default "auto"
        The decoder's body: ``"light"`` (resize-convolutions), ``"large"`` (RRDB,
        PixelShuffle, channel attention, edge head), or ``"auto"``: the large one from
        ``latent_dim`` 1024 up (the original guide's rule). Name it in a grid over
        ``latent_dim`` so that the grid compares one architecture.
    ensemble_size : int, default 3
        Decoders trained side by side, each from its own initial weights and on its own
        loss, on the same batches; the prediction is their mean (a deep ensemble). What
        one decoder learns by chance averages out: on held-out frames of the built-in
        movie three decoders raised SSIM, PSNR and pixel correlation together
        (``benchmarks/RESULTS.md``). Training and prediction cost grow in proportion;
        1 trains a single decoder.
    loss : {"l1", "mse", "bce", "ssim", "l1_ssim"}, default "l1"
        Training loss. ``"l1"`` predicts the median image given the embedding: where the
        embedding leaves the frame uncertain it is sharper than ``"mse"``'s mean, and on
        held-out frames of the built-in movie it scored a higher SSIM at about the same
        PSNR. ``"bce"`` needs targets in [0, 1] (binary images); predictions are then
        probabilities, float whatever the target dtype. ``"l1_ssim"`` (0.84 SSIM + 0.16
        L1) gives the sharpest frames.
    lr : float, default 2e-3
        AdamW's peak learning rate (see ``lr_schedule``).
    batch_size : int, default 64
        Mini-batch size for training; prediction uses the same size.
    max_epochs : int, default 60
        A cap on the epochs of one ``fit``, the pilot's and the decoder's together
        (``partial_fit`` runs one epoch). The stop rule decides the length, not this: no
        default fit of the benchmark suite reached it (``benchmarks/RESULTS.md``). The pilot
        runs at most half of it; one that reaches that while its validation SSIM (or loss)
        still improves warns. With ``early_stopping=False`` a fit runs exactly ``max_epochs`` epochs.
    lr_schedule : {"warmup_stable_decay", "constant"}, default "warmup_stable_decay"
        ``"warmup_stable_decay"`` (:func:`~cebra_halfunet.schedules.warmup_stable_decay`):
        in each run, a linear warm-up over the first evaluation period (an epoch, or more
        when an epoch has fewer than 32 batches), then ``lr`` for as long as the run's length
        asks (see ``early_stopping``), then a half cosine down to 0 over its decay (a quarter
        of the epochs before it). A function of the step: seeded runs repeat it and a run
        resumed from a checkpoint continues it exactly. ``fit`` with ``warm_start=True``
        starts a new schedule (warm-up included; the optimizer's moments are kept);
        ``partial_fit`` trains at the constant rate ``lr`` (the number of calls is unknown).
        ``"constant"``: ``lr`` throughout (the lengths stay). Files saved with
        ``"warmup_cosine"`` load with this.
    weight_decay : float, default 1e-4
        AdamW's decoupled weight decay.
    embedding_noise : float, default 0.1
        Gaussian noise added to the training embeddings, in units of each feature's
        standard deviation: neighbouring embeddings must decode to similar images, which
        regularises the decoder towards frames it has not seen (on repeated frames, where
        each frame is the target of many samples, it raised held-out SSIM and pixel
        correlation; ``benchmarks/RESULTS.md``). 0 turns it off.
    ema_decay : float in [0, 1), default 0.99
        Decay of an exponential moving average of the weights, updated after every batch
        (it spans about ``1 / (1 - ema_decay)`` batches: 100, about two epochs of 3,000
        samples at batch 64). The average is what is
        validated, kept and predicted with: it carries less of the noise of the last
        batches than the raw weights; on held-out frames of the built-in movie it raised
        SSIM, PSNR and pixel correlation together (``benchmarks/RESULTS.md``). Each ``fit`` or
        ``partial_fit`` call averages its own steps (normalised, see
        :class:`~cebra_halfunet.training.WeightAverage`). 0 turns it off.
    validation_fraction : float in [0, 1), default 0.1
        With ``early_stopping`` and no ``X_val``, this fraction of the distinct *frames* is
        held out, with all its copies, to choose the length of training
        (:func:`~cebra_halfunet.splits.frame_validation_split`): samples whose targets are
        bit-identical (a hash of each frame, or equal ``frame_ids`` in ``fit``) are one frame,
        as when a movie is shown several times; the held-out frames are up to 10 stretches
        of frames consecutive in the recording, and the samples within 10 frames of them
        (in any repeat; fewer when fewer than 20 frames are held out:
        :func:`~cebra_halfunet.splits.default_gap`) are in neither part (``excluded_mask_``),
        so that no frame, nor a near-copy of it (a slow movie's next frames), is both trained
        on and validated. When every frame is distinct this is stretches of consecutive
        samples with a 10-sample gap on each side. If the frames
        cannot give both parts, a share of the samples is held out instead, with a
        ``UserWarning`` (the validation loss then rewards memorising); so does a split that
        leaves more than a third of the samples out. Only the pilot holds them out: the
        decoder trains on every sample (see ``early_stopping``).
    early_stopping : bool, default True
        Let the held-out frames (or ``X_val``) decide how long to train
        (:mod:`~cebra_halfunet.stopping`). A pilot, one decoder, trains on the other
        samples, validated after every evaluation period (an epoch, or more when an epoch
        has fewer than 32 batches), until the stop rule fires: ``n_iter_no_change``
        evaluations without a validation value better than the best by the fraction ``tol``
        (see ``scoring``). Its last improvement by more than ``tol`` is the length: the
        decoder then trains on *every* sample, held-out frames and
        gaps included, for that many epochs at the rate ``lr`` and a quarter as many more (at
        least one) while the rate decays to 0; its weights at the end are kept. With ``X_val``
        there is no pilot: one run on all of ``X``, validated on ``X_val``, decays once the
        rule fires. ``False`` (and a warm start without ``X_val``): every sample trains for
        exactly ``max_epochs`` epochs, the last quarter of them decaying.
    n_iter_no_change : int, default 2
        Evaluations without improvement before the stop rule fires (``patience`` in decoder
        files of earlier versions).
    scoring : {"ssim", "loss"}, default "ssim"
        What the stop rule judges on the validation data: their SSIM (the mean over frames,
        as :func:`~cebra_halfunet.metrics.structural_similarity` computes it; for ``"bce"`` on
        the probabilities), or their loss (``loss``, the objective trained on). On repeated stimuli the loss (L1) kept
        falling by fractions of a percent while held-out SSIM, PSNR and pixel correlation
        fell after their best epoch (``benchmarks/RESULTS.md``, "Suite"): the score of images
        says when their quality stops improving. Decoder files of earlier versions load with
        ``"loss"``.
    tol : float, default 0.01
        Relative improvement that counts as one: an evaluation improves when its SSIM is above
        ``(1 + tol)`` times the best so far (its loss below ``(1 - tol)`` times the best; relative, unlike
        scikit-learn's ``tol``, because losses of images differ in scale by orders of
        magnitude between losses and targets).
    device : str, default "auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    random_state : int, RandomState or None, default None
        Seeds the weights and the shuffling: same seed, same predictions (on CPU).
    warm_start : bool, default False
        ``fit`` continues from the fitted weights instead of starting again.
    verbose : bool or int, default False
        Print a line per epoch (losses, the best marked, learning rate, seconds) above a
        progress bar of the epoch's batches.
    gradient_checkpointing : bool, default False
        Recompute activations in the backward pass: less memory, same result.
    checkpoint_path : str, path or None, default None
        Write a checkpoint (a safe decoder file, see :meth:`save`) here every
        ``checkpoint_every`` epochs and at the end, atomically. A fresh ``fit`` whose
        ``checkpoint_path`` exists resumes from it and ends as the uninterrupted run
        would (same seed, CPU); the checkpoint must come from the same parameters
        (``verbose``, ``device`` and the checkpoint settings may differ) and the same
        ``X`` (checked by a hash) and form of ``y``. One path per fit: do not set it in a
        grid search.
    checkpoint_every : int, default 1
        Epochs between checkpoints.
    precision : {"auto", "float32", "bfloat16"}, default "auto"
        ``"bfloat16"`` runs the network under ``torch.autocast``; losses and outputs stay
        float32. ``"auto"`` (resolved in ``precision_``): bfloat16 on a CPU with bf16 units
        (AVX512-BF16 or AMX), float32 elsewhere, GPUs included (at the batch sizes of a fit,
        bf16 autocast was slower than float32 on an H200; see ``benchmarks/RESULTS.md``).
    channels_last : bool or "auto", default "auto"
        Train and predict with the convolution weights in channels-last memory layout
        (the fitted ``module_`` is returned to the standard layout). ``"auto"`` (resolved
        in ``channels_last_``): on CUDA (on an H200, 1.2-1.4x float32 at batch 128, 0.84-1.14x
        at batch 32) and with bfloat16 on the CPU (2.1x float32 together, 1.6x bf16 alone).
    clip_predictions : bool, default True
        Clip predictions to the training targets' [min, max] (what ``imshow`` and image
        writers expect); ``False`` returns the network's output as it is. Decoder files
        saved before this parameter load with ``False``, and predict as they did.
    callbacks : list of Callback or None, default None
        Your own :class:`~cebra_halfunet.callbacks.Callback` objects (e.g. an
        :class:`~cebra_halfunet.callbacks.LRScheduler`, with ``lr_schedule="constant"``),
        run after the built-in ones (schedule, weight averaging, stop rule, checkpoints, log)
        in the decoder's training (not in the pilot's). Each fit uses fresh copies: the
        objects you pass are not changed, and the estimator stays clonable. Not stored in
        decoder files.

    Attributes
    ----------
    module_ : torch.nn.Module
        The fitted network (on the CPU between calls, in eval mode): embeddings ``(B, D)``
        to images ``(B, C, H, W)`` in training units (for ``"bce"``, logits); for an
        ensemble, the mean of its decoders (``module_.decoder.members``).
    target_format_ : TargetFormat
        Rank, image shape, layout and dtype of ``y`` in ``fit`` (``predict`` returns this
        form), and the value rules: uint8 0/1 masks, probabilities, the training range.
    data_range_ : float
        Span of the target values (255 for uint8, 1 for images in [0, 1]); used by
        the SSIM loss and the image scorers.
    history_ : list of dict
        Per epoch, the pilot's then the decoder's: ``epoch``; ``phase``, ``"pilot"``,
        ``"stable"`` (the decoder at the rate ``lr``) or ``"decay"``; ``batch_loss``, the mean
        of the epoch's batch losses (for an ensemble, the mean of the members' losses). At the
        end of each evaluation period (else None), measured alike, with the weights that are
        kept (the average when averaging), in eval mode, without embedding noise, for an
        ensemble the loss of the members' mean: ``train_loss`` on a fixed subset of the rows
        that are not held out, as large as the validation set; ``valid_loss`` on validation
        data not trained on (the held-out frames in the pilot, ``X_val`` throughout);
        ``held_out_loss`` on the held-out frames in the decoder's training, which trains them.
        ``duration_s``.
    n_epochs_ : int
        Epochs trained in all calls together (the pilot's included).
    best_epoch_ : int or None
        The pilot's last epoch whose validation value improved on the best before it by more
        than ``tol`` (SSIM; with ``scoring="loss"`` the loss): the length the decoder trained
        for at the rate ``lr`` (with ``X_val``, the run's best epoch). The weights kept are those
        at the end of the decoder's training, not this epoch's.
    stop_reason_ : str or None
        What ended the pilot (or, with ``X_val``, the run's epochs at the rate ``lr``):
        ``"stop rule"``, ``"max_epochs"`` (the cap; a ``ConvergenceWarning`` if the rule saw an
        improvement above ``tol`` in its last ``n_iter_no_change`` evaluations; always without
        validation), or ``"interrupted"`` (Ctrl-C) (:mod:`~cebra_halfunet.stopping`); None
        after ``partial_fit``.
    validation_mask_ : ndarray, bool ``(N,)``
        Samples of the last ``fit``'s ``X`` that the pilot held out for validation (all False
        with ``X_val``, without early stopping and after ``partial_fit``); the decoder trained
        them too. Not in decoder files.
    excluded_mask_ : ndarray, bool ``(N,)``
        Samples in the gap around the validation frames: the pilot trained neither on them
        (so that no near copy of a validation frame is) nor validated on them; the decoder
        trained them. Not in decoder files.
    validation_reason_ : str
        How the validation data were chosen, in words.
    precision_ : str
        ``"float32"`` or ``"bfloat16"``: what ``precision`` resolved to for the fit
        (resolved again when a decoder file is loaded; ``predict`` resolves the current
        ``precision`` on its device).
    channels_last_ : bool
        What ``channels_last`` resolved to.
    n_features_in_ : int
        Embedding width seen in ``fit``.

    Notes
    -----
    Ctrl-C during ``fit`` stops after the batch in progress. In the pilot nothing was trained
    to keep: the estimator is left as it was, with a warning. In the decoder's training it
    keeps the weights so far (with ``X_val``, before the decay: those of the best epoch) and
    the history of the completed epochs, warns, and re-raises ``KeyboardInterrupt``; ``partial_fit`` or
    ``fit`` with ``warm_start=True`` continues from there.

    ``score`` is R² pooled over all pixels (see :func:`cebra_halfunet.metrics.pooled_r2`):
    the uniform average of per-pixel R² that ``RegressorMixin`` would give scores a pixel
    of constant background as perfect or as zero, which says nothing about the images.
    For image quality use ``scoring=ssim_scorer`` or ``psnr_scorer``.
    """

    # A search's groups go to its splitter, not to fit's deprecated groups (frame_ids are requested by name).
    __metadata_request__fit = {"groups": False}

    _parameter_constraints = {
        "output_shape": [None, tuple, list],
        "output_channels": [None, Interval(Integral, 1, None, closed="left")],
        "target_layout": [StrOptions(set(LAYOUTS))],
        "latent_dim": [None, Interval(Integral, 1, None, closed="left")],
        "body": [StrOptions({"auto", "light", "large"})],
        "ensemble_size": [Interval(Integral, 1, None, closed="left")],
        "loss": [StrOptions(set(LOSS_NAMES))],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "lr_schedule": [StrOptions({"warmup_stable_decay", "constant"})],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "embedding_noise": [Interval(Real, 0, None, closed="left")],
        "ema_decay": [Interval(Real, 0, 1, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "early_stopping": ["boolean"],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "scoring": [StrOptions({"ssim", "loss"})],
        "tol": [Interval(Real, 0, 1, closed="left")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "gradient_checkpointing": ["boolean"],
        "checkpoint_path": [None, str, os.PathLike],
        "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
        "precision": [StrOptions({"auto", "float32", "bfloat16"})],
        "channels_last": ["boolean", StrOptions({"auto"})],
        "clip_predictions": ["boolean"],
        "callbacks": [None, list],
    }

    def __init__(
        self,
        output_shape=None,
        output_channels=None,
        target_layout="auto",
        latent_dim=512,
        body="auto",
        ensemble_size=3,
        loss="l1",
        lr=2e-3,
        batch_size=64,
        max_epochs=60,
        lr_schedule="warmup_stable_decay",
        weight_decay=1e-4,
        embedding_noise=0.1,
        ema_decay=0.99,
        validation_fraction=0.1,
        early_stopping=True,
        n_iter_no_change=2,
        scoring="ssim",
        tol=0.01,
        device="auto",
        random_state=None,
        warm_start=False,
        verbose=False,
        gradient_checkpointing=False,
        checkpoint_path=None,
        checkpoint_every=1,
        precision="auto",
        channels_last="auto",
        clip_predictions=True,
        callbacks=None,
    ):
        self.output_shape = output_shape
        self.output_channels = output_channels
        self.target_layout = target_layout
        self.latent_dim = latent_dim
        self.body = body
        self.ensemble_size = ensemble_size
        self.loss = loss
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.embedding_noise = embedding_noise
        self.ema_decay = ema_decay
        self.validation_fraction = validation_fraction
        self.early_stopping = early_stopping
        self.n_iter_no_change = n_iter_no_change
        self.scoring = scoring
        self.tol = tol
        self.device = device
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.gradient_checkpointing = gradient_checkpointing
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every
        self.precision = precision
        self.channels_last = channels_last
        self.clip_predictions = clip_predictions
        self.callbacks = callbacks

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.input_tags.allow_nan = False
        return tags

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y, *, X_val=None, y_val=None, frame_ids=None, groups=None):
        """Train the decoder on embeddings ``X`` ``(N, D)`` and images ``y``.

        ``y``: ``(N, H, W)``, ``(N, C, H, W)``, ``(N, H, W, C)`` (see ``target_layout``) or
        flat ``(N, C*H*W)`` with ``output_shape``; NumPy array, tensor, or, for targets
        larger than memory, a memmap or an array-like with ``shape``, ``dtype`` and
        ``__getitem__`` (h5py, zarr), read batch by batch; uint8 is read as 0-255 images,
        uint8 holding only 0 and 1 as a 0/1 mask.
        With ``warm_start=True`` and a fitted decoder, training continues.

        Parameters
        ----------
        X_val, y_val : optional
            Validation data for the stop rule, used as given (no split of ``X``): all of
            ``X`` trains. Their number of samples must differ from ``len(X)``: scikit-learn's
            searches (``GridSearchCV``, ``cross_validate``) slice every fit parameter as long
            as ``X`` to the training fold, which would silently cut ``X_val`` too; a search
            passes an ``X_val`` of another length through unchanged, so each fold validates
            on the same ``X_val``.
        frame_ids : array ``(N,)``, optional
            The stimulus frame each sample shows (e.g. the frame number within the movie),
            for repeats whose targets are not bit-identical (noisy copies): samples with
            equal ids are held out together, in place of the frames' hashes. Not repeat,
            trial or block ids: those would hold out whole repeats (a split that leaves more
            than a third of the samples out warns). In a Pipeline:
            ``fit(X, y, halfunetregressor__frame_ids=ids)``; with metadata routing,
            ``set_fit_request(frame_ids=True)`` (a search's ``groups`` go to its splitter only).
        groups : array ``(N,)``, optional
            Deprecated: the earlier name of ``frame_ids`` (a FutureWarning).
        """
        frame_ids, name = _frame_ids_from(frame_ids, groups)
        incremental = self.warm_start and hasattr(self, "module_")
        return self._fit(X, y, incremental, validation=(X_val, y_val), frame_ids=(frame_ids, name))

    def partial_fit(self, X, y):
        """One epoch over ``(X, y)`` (all samples, no validation, constant rate ``lr``),
        continuing if fitted."""
        return self._fit(X, y, incremental=hasattr(self, "module_"), epochs=1)

    def _fit(self, X, y, incremental: bool, epochs: int | None = None, validation=(None, None), frame_ids=(None, "frame_ids")):
        """Fit, or leave the estimator exactly as it was if the fit raises (Ctrl-C excepted:
        it keeps what was trained, as documented)."""
        fitted = {name: value for name, value in vars(self).items() if name.endswith("_") and not name.startswith("_")}
        try:
            return self._fit_steps(X, y, incremental, epochs, validation, frame_ids)
        except (Exception, _InterruptedPilot):
            for name in [name for name in vars(self) if name.endswith("_") and not name.startswith("_")]:
                delattr(self, name)
            vars(self).update(fitted)
            raise

    def _fit_steps(self, X, y, incremental: bool, epochs: int | None, validation, frame_ids):
        """Prepare the data; start (new, resumed or continued); a pilot run chooses the length
        when frames of ``X`` are held out; train; finish. Each step sets fitted attributes; a
        continued fit trains a copy of the fitted module."""
        partial = epochs is not None  # partial_fit: one epoch, no validation, no schedule
        if incremental:
            self._check_structure("continue training")
        # A warm start validates on X_val only: the fit before it trained every frame of X.
        validate = not partial and self.early_stopping and (not incremental or validation[0] is not None)
        data = self._prepare(X, y, incremental, validate, validation, frame_ids)
        earlier_history = self.history_ if incremental else []
        path = self.checkpoint_path
        with exclusive(path, "checkpoint_path") if path is not None else contextlib.nullcontext():
            state, pilot = self._start(data, incremental)
            first_epoch = self.n_epochs_ + 1 if incremental else 1
            if data.pilots and pilot is None:
                pilot = self._run_pilot(data, first_epoch)
            epochs = self._epochs(first_epoch, pilot, epochs)
            self.precision_, self.channels_last_ = self._resolved_precision()
            continued = incremental or state is not None
            state, optimizer_state = self._train(data, state, epochs, earlier_history, pilot, continued, partial)
            return self._finish(data, state, optimizer_state, earlier_history, pilot, partial)

    def _epochs(self, first: int, pilot: Pilot | None, epochs: int | None) -> range:
        """The epochs of the final run: after the pilot's, as many as it chose plus the decay;
        else ``epochs`` (partial_fit's one) or ``max_epochs``."""
        if pilot is not None:
            left = self.max_epochs - len(pilot.history)
            first = pilot.history[-1]["epoch"] + 1
            return range(first, first + min(final_epochs(pilot.length), left))
        return range(first, first + (epochs or self.max_epochs))

    def _check_structure(self, action: str) -> None:
        """A ValueError naming the first parameter that no longer describes the fitted network
        (changed by ``set_params`` since the fit that built it), before ``action``."""
        decoder = self.module_.decoder
        members = list(decoder.members) if isinstance(decoder, DecoderEnsemble) else [decoder]
        latent_dim = self.n_features_in_ if self.latent_dim is None else self.latent_dim
        large = self.body == "large" or (self.body == "auto" and latent_dim >= LARGE_LATENT_DIM)
        target = self.target_format_
        layout = {"channels_last": True, "channels_first": False}.get(self.target_layout, target.channels_last)
        changed = [
            ("ensemble_size", len(members), self.ensemble_size),
            ("latent_dim", members[0].latent_dim, latent_dim),
            ("body", "large" if members[0].is_large else "light", "large" if large else "light"),
            ("loss", "bce" if target.probabilities else "not bce", "bce" if self.loss == "bce" else "not bce"),
            ("output_shape", target.shape, target.shape if self.output_shape is None else tuple(self.output_shape)),
            ("output_channels", target.channels, target.channels if self.output_channels is None else self.output_channels),
            ("target_layout", target.channels_last, layout),
        ]
        for name, fitted, now in changed:
            if fitted != now:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} does not describe the fitted decoder ({name}: {fitted}); it cannot "
                    f"{action}. Set {name} back, or fit with warm_start=False to train a new decoder."
                )

    def _prepare(self, X, y, incremental: bool, validate: bool, validation=(None, None), frame_ids=(None, "frame_ids")) -> _FitData:
        """Check the parameters and data; scan the targets once; choose the validation rows."""
        self._validate_params()
        self._check_run_settings()
        register_cebra_pickling()  # the CEBRA step before this decoder pickles
        output_shape = None if self.output_shape is None else check_output_shape(self.output_shape)
        resolve_device(self.device)
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None.")
        X = self._validate_X(X, reset=not incremental)
        y = as_array(y, "y")
        if len(y) != len(X):
            raise ValueError(f"X and y must have the same number of samples, got {len(X)} and {len(y)}.")
        target_format = TargetFormat.infer(y, output_shape, self.output_channels, self.target_layout)
        if incremental and target_format.form != self.target_format_.form:
            raise ValueError(
                f"y must have the form of the targets the decoder was fitted on: "
                f"{self.target_format_.form_difference(target_format)}."
            )
        images = target_format.to_images(y)
        ids, ids_name = frame_ids
        if ids is not None:
            ids = _check_frame_ids(ids, len(X), ids_name)
        val = self._validation_data(X, validation, ids_name if ids is not None else None, validate, output_shape, target_format)
        scan = scan_targets(images, "y")
        if incremental:
            target_format = self.target_format_.widened(scan)
        else:
            target_format = target_format.with_values(scan, probabilities=self.loss == "bce")
        if self.loss == "bce" and (scan.low < 0 or scan.high > 1):  # as stored: uint8 0-255 images too
            raise ValueError(
                f"loss='bce' needs targets in [0, 1] (uint8 masks holding only 0 and 1 are read as 0/1; "
                f"divide 0-255 images by 255), got values in [{scan.low}, {scan.high}]."
            )
        split = self._split(X, scan, validate, val, (ids, ids_name))
        moments = scan.moments(target_format.value_scale)
        scan.leave_out(images, ~split.train)
        digest = hashlib.sha256(np.ascontiguousarray(X).tobytes())  # with the targets' digests: no second pass
        for part in (split.held_out, split.excluded, scan.frame_digests) + ((val[0], val[2]) if val else ()):
            digest.update(np.ascontiguousarray(part).tobytes())
        fingerprint = {
            "n_samples": len(X),
            "inputs_sha256": digest.hexdigest(),
            "target_format": target_format.to_json(),
        }
        training_moments = scan.moments(target_format.value_scale)
        return _FitData(X, target_format, images, moments, training_moments, split, None if val is None else val[:2], fingerprint)

    def _check_run_settings(self) -> None:
        """Refuse, before any training, a ``checkpoint_path`` that cannot be written and
        ``callbacks`` that are not copyable Callbacks."""
        if self.checkpoint_path is not None:
            path = os.path.abspath(os.fspath(self.checkpoint_path))
            if os.path.isdir(path):
                raise ValueError(f"checkpoint_path={os.fspath(self.checkpoint_path)!r} is a folder: name a file in it.")
            if not os.path.isdir(os.path.dirname(path)):
                raise ValueError(
                    f"checkpoint_path={os.fspath(self.checkpoint_path)!r}: its folder {os.path.dirname(path)!r} does not exist."
                )
        for callback in self.callbacks or []:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be cebra_halfunet.callbacks.Callback objects, got {type(callback).__name__}.")
        try:
            copy.deepcopy(self.callbacks)
        except Exception as error:
            raise TypeError(f"callbacks must be copyable with copy.deepcopy (each fit runs on copies): {error}") from None

    def _validation_data(self, X, validation, ids_name, validate: bool, output_shape, target_format) -> tuple | None:
        """``(X_val, images of y_val, frame digests of y_val)`` checked, or None.
        ``ids_name``: the name under which frame ids were passed, if they were."""
        X_val, y_val = validation
        if (X_val is None) != (y_val is None):
            raise ValueError("X_val and y_val must be passed together.")
        if X_val is None:
            return None
        if not validate:
            raise ValueError("X_val and y_val are validation data for the stop rule; set early_stopping=True.")
        if ids_name is not None:
            raise ValueError(f"{ids_name} choose a validation split of X; with X_val and y_val there is none: pass one or the other.")
        X_val = self._validate_X(X_val, reset=False, name="X_val")
        if len(X_val) == len(X):
            raise ValueError(
                f"X_val must not have as many samples as X ({len(X)}; inside a search, X is the training fold): a "
                "scikit-learn search (GridSearchCV, cross_validate) slices every fit parameter of that length to the "
                "training fold, so X_val would silently be cut to a part of itself. Pass an X_val of another length "
                "(drop or add one sample)."
            )
        y_val = as_array(y_val, "y_val")
        if len(y_val) != len(X_val):
            raise ValueError(f"X_val and y_val must have the same number of samples, got {len(X_val)} and {len(y_val)}.")
        layout = "channels_last" if target_format.channels_last else "channels_first"
        val_format = TargetFormat.infer(y_val, output_shape, self.output_channels, layout)
        if val_format.dtype.kind == target_format.dtype.kind == "f":  # float64 y_val for float32 y: same units
            val_format = replace(val_format, dtype=target_format.dtype)
        if val_format.form != target_format.form:
            raise ValueError(f"y_val must have the form of y: {target_format.form_difference(val_format)}.")
        images = target_format.to_images(y_val)
        return X_val, images, scan_targets(images, "y_val").frame_digests  # raises for NaN and infinity

    def _split(self, X, scan: TargetScan, validate: bool, val, frame_ids) -> ValidationSplit:
        """The leak-free frame split of the frames' hashes (or of the given ``frame_ids``,
        ``(ids, name)``), unless ``X_val`` was given or there is no validation."""
        if not validate:
            return ValidationSplit.none(len(X), "no validation (early_stopping=False, partial_fit, or a warm start without X_val)")
        if val is not None:
            return ValidationSplit.none(len(X), f"X_val and y_val as given ({len(val[0])} samples)")
        if self.max_epochs < 2:
            return ValidationSplit.none(
                len(X), "no validation: max_epochs=1 leaves no room to choose the length (a pilot epoch, then a final "
                "one); every sample trains for one epoch"
            )
        if self.validation_fraction == 0 or len(X) < 2:
            raise ValueError(
                f"early_stopping needs at least one training and one validation sample "
                f"(validation_fraction={self.validation_fraction}), got {len(X)} sample(s)."
            )
        ids, name = frame_ids
        keys = scan.frame_digests if ids is None else ids
        split = frame_validation_split(first_copies(keys), self.validation_fraction)
        source = "frames found by hashing the targets" if ids is None else f"frames given by {name}"
        return replace(split, reason=f"{source}: {split.reason}")

    def _start(self, data: _FitData, incremental: bool) -> tuple[TrainingState | None, Pilot | None]:
        """Continue the fitted decoder, resume the checkpoint at ``checkpoint_path``, or
        build a fresh one; the state of a resumed run and the pilot that preceded it."""
        if incremental:
            self.target_format_ = data.target_format  # the fitted rules, the range taking in this y
            self.module_ = copy.deepcopy(self.module_)  # trained in place: the fitted one stays as it was if this fit fails
            return None, None
        if self.checkpoint_path is not None and os.path.exists(self.checkpoint_path):
            state, pilot = self._resume_checkpoint(data.fingerprint)
            if self.verbose:
                print(f"Resuming from checkpoint_path={os.fspath(self.checkpoint_path)!r}: the decoder's run after epoch "
                      f"{self.n_epochs_}{'' if not state.decaying or self.n_epochs_ < state.decay_end_epoch else ' (it had ended)'}.")
            return state, pilot
        self._initialise(data)
        return None, None

    def _run_pilot(self, data: _FitData, first_epoch: int) -> Pilot:
        """One decoder on the training rows, validated on the held-out frames until the stop
        rule fires: its last improvement by more than ``tol`` is the length of the final run. Not checkpointed (a
        resumed fit runs it again, seeded: the same length)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed_ + 1)
            model = self._build_module(self.target_format_, *self._output_scaling(data.training_moments), members=1)
        split = data.split
        state, _, _ = self._run(  # the callbacks are _run's alone: it drops them after a GPU out-of-memory
            model, None, data, range(first_epoch, first_epoch + self.max_epochs), self._pilot_callbacks(),
            rows=np.flatnonzero(split.train), held_out=np.flatnonzero(split.held_out),
        )
        if state.interrupted:
            warnings.warn(
                "Training was interrupted while the pilot chose its length: nothing was trained to keep, the "
                "estimator is as it was.", RuntimeWarning, stacklevel=5,
            )
            raise _InterruptedPilot
        return Pilot.of(state)

    def _train(self, data: _FitData, state, epochs: range, earlier_history: list, pilot, continued: bool, partial: bool):
        """Train ``module_`` over ``epochs``: every row after a pilot (the held-out frames
        measured as trained), otherwise validated on ``X_val`` if given (``continued``: with
        the fitted optimizer state; ``partial``: a ``partial_fit`` epoch, without a schedule).
        Returns the training state and the optimizer's state."""
        if continued and self.optimizer_state_ is None:
            warnings.warn(
                "This decoder was saved weights_only: training continues with fresh optimizer moments (AdamW "
                "restarts its running averages), not exactly as the saved fit would have.",
                UserWarning,
                stacklevel=5,
            )
        optimizer_state = self.optimizer_state_ if continued else None
        previous = earlier_history + (pilot.history if pilot is not None else [])

        def write_checkpoint(state: TrainingState, model, optimizer) -> None:
            self._write_checkpoint(model, optimizer.state_dict(), previous + state.history, state, data.fingerprint, pilot)

        held_out = np.flatnonzero(data.split.held_out) if data.pilots else None
        state, optimizer_state, model = self._run(
            self.module_, optimizer_state, data, epochs, self._callbacks(data.validation is not None, partial, write_checkpoint),
            state=state, held_out=held_out,
        )
        self.module_ = model
        return state, optimizer_state

    def _run(self, model, optimizer_state, data: _FitData, epochs: range, callbacks, state=None, rows=None, held_out=None):
        """One run of the trainer: ``model`` on the device, AdamW (from ``optimizer_state`` if
        given), over ``epochs``; the model is back on the CPU afterwards, also after an error.
        Returns ``(state, optimizer state, model)``; a GPU out-of-memory says what to change."""
        device = resolve_device(self.device)
        model = model.to(device, memory_format=self._memory_format(device))
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if optimizer_state is not None:
            optimizer.load_state_dict(copy.deepcopy(optimizer_state))  # its moments would be updated in place
            for group in optimizer.param_groups:
                group.update(lr=self.lr, weight_decay=self.weight_decay)
                group.pop("initial_lr", None)  # a schedule of this call starts from lr
        X = data.X
        noise = None
        if self.embedding_noise:  # in float64: a float32 variance overflows for values beyond 1e19
            spread = X[data.split.train].std(axis=0, dtype=np.float64)
            noise = torch.from_numpy((self.embedding_noise * spread).astype(np.float32))
        validation = None
        if data.validation is not None:
            X_val, val_images = data.validation
            validation = torch.from_numpy(X_val), data.target_format.to_tensor(val_images)
        inputs, targets = torch.from_numpy(X), data.target_format.to_tensor(data.images)
        try:
            state, out_of_memory = catch_out_of_memory(
                lambda: self._trainer(device, noise).fit(
                    model, optimizer, inputs, targets, epochs=epochs, rows=rows, held_out=held_out,
                    validation=validation, state=state, callbacks=callbacks,
                )
            )
        finally:
            model = model.to("cpu", memory_format=torch.contiguous_format).eval()
        if out_of_memory:
            # Released again now that the module is on the CPU, without the optimizer's moments
            # and the averaged weights: on the GPU they would outlive the error in its traceback.
            del optimizer, callbacks
            release_device_memory()
            target_format = data.target_format
            raise _out_of_memory(
                "fit",
                f"Lower batch_size (now {self.batch_size}), latent_dim (now {self.latent_dim}; with body='auto' "
                f"the large body is used from 1024 up), the image size (now {target_format.channels}x{target_format.shape[0]}x"
                f"{target_format.shape[1]}), or set gradient_checkpointing=True.",
            )
        return state, state_to_cpu(optimizer.state_dict()), model

    def _pilot_callbacks(self) -> list:
        """The pilot's callbacks: the schedule (it never decays), averaging, the rule, the log."""
        callbacks = [WarmupStableDecay()] if self.lr_schedule == "warmup_stable_decay" else []
        callbacks += [WeightAveraging(self.ema_decay)] if self.ema_decay else []
        callbacks += [StopRule(self.n_iter_no_change, self.tol, validating=True, pilot=True, scoring=self._rule_scoring())]
        return callbacks + ([PrintLog("pilot: one decoder on the training frames, validated")] if self.verbose else [])

    def _callbacks(self, validating: bool, partial: bool, write_checkpoint) -> list:
        """The built-in callbacks of the decoder's run (``partial``: partial_fit's epoch at
        the rate ``lr``), then fresh copies of the user's."""
        callbacks = [WarmupStableDecay()] if self.lr_schedule == "warmup_stable_decay" and not partial else []
        callbacks += [WeightAveraging(self.ema_decay)] if self.ema_decay else []
        callbacks += [StopRule(self.n_iter_no_change, self.tol, validating, scoring=self._rule_scoring(), decays=not partial)]
        callbacks += [Checkpoint(write_checkpoint, self.checkpoint_every)] if self.checkpoint_path is not None else []
        callbacks += [PrintLog("decoder, validated on X_val" if validating else "decoder, every frame")] if self.verbose else []
        return callbacks + copy.deepcopy(list(self.callbacks or []))

    def _finish(self, data: _FitData, state: TrainingState, optimizer_state: dict, earlier_history: list, pilot, partial: bool):
        """Keep the outcome as fitted attributes; warn and re-raise after Ctrl-C; write the
        final checkpoint."""
        self.optimizer_state_ = optimizer_state
        self.history_ = earlier_history + (pilot.history if pilot is not None else []) + state.history
        self.n_epochs_ = self.history_[-1]["epoch"] if self.history_ else 0
        self.best_epoch_ = pilot.best_epoch if pilot is not None else state.best_epoch
        self.validation_mask_, self.excluded_mask_ = data.split.held_out, data.split.excluded
        self.validation_reason_ = data.split.reason
        verdict, warning = (pilot.verdict, pilot.warning) if pilot is not None else (state.verdict, state.warning)
        # A user's callback that ends the run before its decay is a stop rule of its own.
        self.stop_reason_ = INTERRUPTED if state.interrupted else None if partial else verdict or STOP_RULE
        if warning is not None and not state.interrupted:
            warnings.warn(warning, ConvergenceWarning, stacklevel=5)
        if state.interrupted:
            warnings.warn(
                f"Training was interrupted after {len(state.history)} complete epoch(s); the decoder keeps "
                f"{'the weights of epoch ' + str(state.best_epoch) if state.best_weights else 'its last weights'}. "
                "partial_fit (or fit with warm_start=True) continues.",
                RuntimeWarning,
                stacklevel=5,
            )
            raise KeyboardInterrupt
        if self.checkpoint_path is not None:
            self._write_checkpoint(self.module_, self.optimizer_state_, self.history_, state, data.fingerprint, pilot)
        return self

    def _build_module(self, target_format: TargetFormat, offset: np.ndarray | None = None, scale: float = 1.0,
                      members: int | None = None) -> ImageOutput:
        """The network for ``target_format``, in eval mode: a HalfUNetDecoder (a
        DecoderEnsemble of ``members``, by default ``ensemble_size``, of them from 2 up) behind
        the output scaling (``offset`` ``(C, H, W)``, zeros when None: to be loaded from a
        state dict)."""
        members = self.ensemble_size if members is None else members
        decoders = [
            HalfUNetDecoder(
                self.n_features_in_,
                target_format.channels,
                target_format.shape,
                self.latent_dim,
                gradient_checkpointing=self.gradient_checkpointing,
                body=self.body,
            )
            for _ in range(members)
        ]
        decoder = decoders[0] if members == 1 else DecoderEnsemble(decoders)
        if offset is None:  # on the meta device too (a file's network, checked before it is built)
            offset = torch.zeros((target_format.channels, *target_format.shape))
        return ImageOutput(decoder, offset, scale).eval()

    def _initialise(self, data: _FitData) -> None:
        """Build a fresh network for the targets, normalised by the moments of the rows it
        trains on (every row, but for the pilot's held-out frames when there is no pilot)."""
        self.target_format_ = data.target_format
        self.data_range_ = data.target_format.data_range
        self.seed_ = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        moments = data.moments if data.pilots else data.training_moments
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed_)
            self.module_ = self._build_module(data.target_format, *self._output_scaling(moments))
        self.history_, self.n_epochs_, self.best_epoch_ = [], 0, None

    def _output_scaling(self, moments: tuple) -> tuple[np.ndarray, float]:
        """``(offset, scale)`` of the network's output for targets of ``(mean, std)``: the
        mean image (its logit for ``"bce"``) and the pixel standard deviation."""
        mean, std = moments
        if self.loss == "bce":
            clipped = np.clip(mean, 1e-3, 1 - 1e-3)
            return np.log(clipped / (1 - clipped)), 1.0
        return mean, std or 1.0

    def _trainer(self, device: torch.device, input_noise: torch.Tensor | None = None) -> Trainer:
        """The trainer for this decoder's loss, targets, validation score and settings on ``device``."""
        autocast = torch.bfloat16 if self._resolved_precision(device)[0] == "bfloat16" else None
        encode = self.target_format_.encode_batch
        return Trainer(
            self._training_loss(), encode, self.batch_size, device, autocast, self.seed_, input_noise, self._validation_score()
        )

    def _rule_scoring(self) -> str:
        return "score" if self.scoring == "ssim" else "loss"

    def _validation_score(self):
        """SSIM of predictions (probabilities for ``"bce"``) against targets, in network units, or None."""
        if self.scoring != "ssim":
            return None
        activation = torch.sigmoid if self.loss == "bce" else (lambda t: t)
        data_range = self.data_range_ * self.target_format_.value_scale
        return lambda prediction, target: ssim(activation(prediction), target, data_range)

    def _memory_format(self, device: torch.device) -> torch.memory_format:
        return torch.channels_last if self._resolved_precision(device)[1] else torch.contiguous_format

    def _resolved_precision(self, device: torch.device | None = None) -> tuple[str, bool]:
        """``(precision, channels_last)`` on ``device`` (default: the configured one), ``"auto"`` resolved."""
        device = self._inference_device() if device is None else device
        precision = fastest_precision(device) if self.precision == "auto" else self.precision
        if self.channels_last != "auto":
            return precision, self.channels_last
        return precision, device.type == "cuda" or precision == "bfloat16"

    def _training_loss(self):
        """The loss being minimised, in network units (targets' span times the value scale)."""
        return per_member(make_loss(self.loss, self.data_range_ * self.target_format_.value_scale))

    # --------------------------------------------------------------- prediction
    def predict(self, X):
        """Images for embeddings ``X`` ``(N, D)``, in the form of ``y`` in ``fit``.

        Runs in batches of ``batch_size`` under ``torch.no_grad()`` and writes into one
        preallocated array: memory is the output plus one batch, for any ``N``. A batch
        that runs out of GPU memory is retried with half the batch size (with a warning).
        """
        check_is_fitted(self, "module_")
        X = self._validate_X(X, reset=False)
        target_format = self.target_format_
        out = np.empty((len(X), *target_format.sample_shape), dtype=target_format.output_dtype)
        images = target_format.to_images(out)  # (N, C, H, W) view: batches are written in out's layout
        activation = torch.sigmoid if self.loss == "bce" else (lambda t: t)
        module, trainer = self._inference_module()
        decode = lambda batch: target_format.decode_batch(activation(batch), self.clip_predictions)  # noqa: E731
        _, out_of_memory = catch_out_of_memory(lambda: trainer.predict_into(module, torch.from_numpy(X), images, decode))
        if out_of_memory:
            del module  # a copy on the GPU: release it too
            release_device_memory()
            raise _out_of_memory("predict", "It failed even one sample at a time: predict with device='cpu'.")
        return out

    def _validate_X(self, X, reset: bool, name: str = "X") -> np.ndarray:
        """``X`` (or ``X_val``: ``name``) as a contiguous float32 ``(N, D)`` array; a
        TypeError naming it for non-numbers, a ValueError for values float32 cannot train on."""
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu()
        check_numbers(X, name)
        if getattr(getattr(X, "dtype", None), "kind", "") == "f" and X.dtype.itemsize > 8:
            raise TypeError(f"{name} must be float64 or narrower, got {X.dtype}: convert it with {name}.astype(np.float64).")
        try:
            X = validate_data(self, X, reset=reset, dtype=np.float32)
        except ValueError as error:
            if name == "X":
                raise
            raise ValueError(f"{name} is not valid (scikit-learn's check calls it X): {error}") from None
        largest = float(np.abs(X).max(initial=0.0))
        if largest > X_LIMIT:
            raise ValueError(
                f"{name} holds values up to {largest:.3g}: beyond {X_LIMIT:.0e}, the network (float32) overflows. "
                f"Standardise {name} (e.g. StandardScaler before the decoder)."
            )
        X = np.ascontiguousarray(X)  # a copy only of views with reversed axes
        return X if X.flags.writeable else X.copy()  # torch warns about read-only arrays (DataFrames give them)

    def evaluate_loss(self, X, y) -> float:
        """Mean training loss of the fitted decoder over ``(X, y)``, in network units
        (the way ``history_``'s ``valid_loss`` is measured: eval mode, no noise)."""
        check_is_fitted(self, "module_")
        X = self._validate_X(X, reset=False)
        y = as_array(y, "y")
        targets = self.target_format_.to_tensor(self.target_format_.to_images(y))
        module, trainer = self._inference_module()
        return trainer.evaluate(module, torch.from_numpy(X), targets)

    def _inference_module(self) -> tuple[torch.nn.Module, Trainer]:
        """``(module, trainer)`` for inference on the configured device: ``module_`` itself on
        the CPU in the standard layout, else a copy moved to the device and layout, so that
        the fitted module is never changed (``predict`` is safe from many threads at once)."""
        device = self._inference_device()
        module, memory_format = self.module_, self._memory_format(device)
        if device.type != "cpu" or memory_format != torch.contiguous_format:
            module = copy.deepcopy(module).to(device, memory_format=memory_format)
        return module, self._trainer(device)

    def _inference_device(self) -> torch.device:
        """The configured device, or the CPU (with a warning) when it is not on this machine."""
        try:
            return resolve_device(self.device)
        except ValueError as error:
            warnings.warn(f"{error} Predicting on the CPU instead.", RuntimeWarning, stacklevel=4)
            return torch.device("cpu")

    def score(self, X, y, sample_weight=None) -> float:
        """R² pooled over all pixels of ``y`` (see Notes); 1 is perfect."""
        check_is_fitted(self, "module_")
        y = in_memory(y, "y")  # targets on disk are read whole: the predictions are in memory too
        self.target_format_.check(y)
        check_finite_images(y, "y")
        prediction = self.predict(X)
        if len(prediction) != len(y):
            raise ValueError(f"X and y must have the same number of samples, got {len(prediction)} and {len(y)}.")
        return pooled_r2(y, prediction, sample_weight)
