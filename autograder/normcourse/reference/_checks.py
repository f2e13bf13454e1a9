"""Input validation shared by the reference functions: one place, one wording for every error."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_input(x, name: str = "input", min_ndim: int = 1) -> np.ndarray:
    """Return ``x`` as a numpy array after checking its rank and that every element is finite."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {arr.shape} "
                         f"(rank {arr.ndim})")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name} contains a non-finite value ({arr[bad]}) at index {bad}; "
                         f"normalization statistics would be NaN")
    return arr


def output_dtype(x: np.ndarray) -> np.dtype:
    """The dtype a reference function returns: the input's float dtype (float64 for integer input)."""
    return x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)


def default_rms_eps(dtype) -> float:
    """RMSNorm's ``eps=None``: machine epsilon of the dtype PyTorch *computes* in.

    ``torch.nn.functional.rms_norm`` accumulates float16 (and bfloat16) inputs in float32 and takes
    that type's epsilon (1.19e-7), not float16's 9.8e-4; float32 and float64 use their own.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        dtype = np.dtype(np.float64)
    elif dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    return float(np.finfo(dtype).eps)


def check_eps(eps: float) -> float:
    eps = float(eps)
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number, got {eps!r}; it keeps the division "
                         f"defined when the variance is zero")
    return eps


def check_param(p, expected_shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """Return an affine parameter as float64 after checking its shape (None stays None)."""
    if p is None:
        return None
    arr = as_input(p, name, min_ndim=0).astype(np.float64)
    if arr.shape != tuple(expected_shape):
        raise ValueError(f"{name} must have shape {tuple(expected_shape)}, got {arr.shape}")
    return arr


def check_affine(weight, bias, expected_shape: tuple[int, ...]):
    """Check the gain and bias of a layer together: ``(weight, bias)`` as float64 arrays or None."""
    return check_param(weight, expected_shape, "weight"), check_param(bias, expected_shape, "bias")


def normalized_shape_tuple(normalized_shape, x: np.ndarray) -> tuple[int, ...]:
    """Check that ``normalized_shape`` matches the trailing dimensions of ``x`` (as PyTorch requires)."""
    if isinstance(normalized_shape, (int, np.integer)):
        shape = (int(normalized_shape),)
    elif isinstance(normalized_shape, (str, bytes)):  # a str is a Sequence: "45" would read as (4, 5)
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}")
    elif isinstance(normalized_shape, Sequence) or isinstance(normalized_shape, np.ndarray):
        shape = tuple(int(s) for s in normalized_shape)
    else:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}")
    if len(shape) == 0:
        raise ValueError("normalized_shape must have at least one dimension")
    if len(shape) > x.ndim or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(f"normalized_shape {list(shape)} must match the trailing dimensions of the input, "
                         f"but the input has shape {list(x.shape)}")
    return shape


def check_channels(x: np.ndarray, c: int, name: str, vec) -> np.ndarray | None:
    """Check a per-channel vector (running statistics) has ``c`` entries; keeps the caller's array."""
    if vec is None:
        return None
    if not isinstance(vec, np.ndarray):
        vec = np.asarray(vec, dtype=np.float64)
    if vec.shape != (c,):
        raise ValueError(f"{name} must have shape ({c},) to match the {c} channels of input shape "
                         f"{list(x.shape)}, got {vec.shape}")
    return vec
