"""The reference implementation: one source of truth for the book, the problem sets and the grader.

Everything here is plain numpy except :mod:`normcourse.reference.measurements` and
:mod:`normcourse.reference.attention`, which measure torch models. Those two are imported on first
access (``ref.attention_entropy``, ``from normcourse.reference import internal_covariate_shift``), so
that the numpy-only problem sets and their graded kernels do not pay for importing torch (about 1-2 s).
Import the pieces from this package::

    import normcourse.reference as ref
    ref.layer_norm(x, (d,))
"""

from .scopes import (CHANNEL_FIRST_LAYOUTS, LAYOUTS, NORMS, SCOPES, Scope, reduction_axes, scope,
                     scope_mask, statistics_view)
from .forward import batch_norm, group_norm, instance_norm, layer_norm, normalize, rms_norm
from .backward import batch_norm_backward, layer_norm_backward, rms_norm_backward
from .jacobians import (batch_norm_jacobian, layer_norm_jacobian, layer_norm_jacobian_eigen,
                        rms_norm_jacobian, spectral_norm)

# The torch-based names, and the submodule that defines each; see __getattr__.
_TORCH_NAMES = {
    "attention_entropy": "attention",
    "compare_placements": "attention",
    "per_layer_grad_norms": "attention",
    "internal_covariate_shift": "measurements",
    "landscape_probe": "measurements",
    "layer_groups": "measurements",
}


def __getattr__(name):
    """Import a torch-based name's submodule on first access (PEP 562) and cache the name here.
    ``ref.attention`` and ``ref.measurements`` (the submodules themselves) work as before too."""
    import importlib

    if name in set(_TORCH_NAMES.values()):
        return importlib.import_module(f".{name}", __name__)  # importing sets it as an attribute here
    if name not in _TORCH_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_TORCH_NAMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_TORCH_NAMES))
