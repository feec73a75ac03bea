"""Argument checks shared by the networks, the estimator and the functional API."""

from __future__ import annotations

import numbers

import numpy as np
import torch


def check_positive_int(value, name: str) -> int:
    """Return ``value`` as an ``int`` or raise if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_output_shape(value, name: str = "output_shape") -> tuple[int, int]:
    """Return ``value`` as an ``(H, W)`` tuple of positive ints."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (height, width) of positive integers, got {value!r}.")
    height, width = (check_positive_int(side, name) for side in value)
    return height, width


def check_choice(value, choices, name: str):
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}.")
    return value


def check_numbers(data, name: str) -> None:
    """Raise a TypeError naming ``name`` if the array-like ``data`` holds strings or other
    values that are not numbers (an object array is tried value by value)."""
    if isinstance(data, torch.Tensor):
        return
    array = np.asarray(data)  # no copy for arrays
    try:
        if array.dtype.kind in "SUV":
            raise ValueError(f"got dtype {array.dtype}")
        if array.dtype == object and array.ndim:
            array.astype(np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must hold real numbers (bool, integer or float): {error}.") from None


def check_count(value, name: str, unit: str = "") -> int:
    """``value`` as an int; a ValueError naming ``name`` unless it is a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer{unit}, got {value!r}.")
    return int(value)
