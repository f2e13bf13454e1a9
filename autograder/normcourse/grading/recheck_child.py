"""What a learner function did on one case, observed the same way in every process that calls it.

Three callers: the notebook's hidden-test cell (:meth:`normcourse.grading.parts.Part.check`, in the
learner's kernel), the reference (the expected side of every comparison, in the grader), and the
re-check's learner process (:mod:`normcourse.grading.recheck`), which runs this file as a script
inside the sandbox, where the course package does not exist. So this module imports the standard
library and numpy only, and uses torch only if it is already loaded (a torch part's cases bring it).

:func:`observe` calls a function on fresh copies of a case's arguments, possibly several times, and
records the results, the in-place arguments after each call, and the state of the torch modules it
was given (:func:`module_state`).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Observed", "observe", "module_state"]


@dataclass
class Observed:
    """What one case's calls produced.

    Attributes:
        results: one entry per call; with in-place arguments, ``(result, *in_place_args_after_call)``.
        states: ``{argument index: module_state(argument)}`` after the last call, for the case's
            ``state_of`` arguments.
    """

    results: list = field(default_factory=list)
    states: dict = field(default_factory=dict)


def observe(fn, args, kwargs, *, inplace=(), state_of=(), repeat: int = 1) -> Observed:
    """Call ``fn(*args, **kwargs)`` ``repeat`` times on one deep copy of the arguments; record it all.

    The copy is made once, so a second call sees what the first left behind (a model whose ``.grad``
    the first call filled, running statistics it moved): "call twice on the same model" is a case.
    """
    args = copy.deepcopy(tuple(args))
    kwargs = copy.deepcopy(dict(kwargs))
    observed = Observed()
    for _ in range(repeat):
        result = fn(*args, **kwargs)
        if inplace:
            result = (result, *(copy.deepcopy(args[i]) for i in inplace))
        observed.results.append(result)
    observed.states = {i: module_state(args[i]) for i in state_of}
    return observed


# The torch methods module_state uses, bound once (before learner code runs, in the re-check): a
# learner who patches torch.nn.Module.named_parameters cannot change what the grader is shown.
_TORCH_API: dict = {}


def capture_torch_api() -> None:
    """Bind the torch methods :func:`module_state` needs, if torch is loaded (idempotent)."""
    torch = sys.modules.get("torch")
    if torch is None or _TORCH_API:
        return
    module, tensor = torch.nn.Module, torch.Tensor
    _TORCH_API.update(
        Module=module, Tensor=tensor, named_parameters=module.named_parameters, named_buffers=module.named_buffers,
        named_modules=module.named_modules, detach=tensor.detach, to=tensor.to, numpy=tensor.numpy,
        is_floating_point=tensor.is_floating_point, float64=torch.float64, int64=torch.int64, bool=torch.bool,
        grad=tensor.grad.__get__, requires_grad=tensor.requires_grad.__get__)


def _array(tensor) -> np.ndarray:
    api = _TORCH_API
    value = api["detach"](tensor)
    if api["is_floating_point"](value):
        value = api["to"](value, api["float64"])  # exact for every float dtype, bfloat16 included
    elif value.dtype != api["bool"]:
        value = api["to"](value, api["int64"])
    return np.array(api["numpy"](api["to"](value, "cpu")), copy=True)


def module_state(module) -> dict[str, np.ndarray]:
    """The observable state of a torch module, as named numpy arrays.

    For every parameter: its value, whether it has a ``.grad`` (and the grad), ``requires_grad``; for
    every buffer (BatchNorm's running statistics), its value; for every submodule, ``training``.
    Anything that is not a torch module gives ``{}``.
    """
    capture_torch_api()
    if not _TORCH_API or not isinstance(module, _TORCH_API["Module"]):
        return {}
    api, state = _TORCH_API, {}
    for name, parameter in api["named_parameters"](module):
        grad = api["grad"](parameter)
        state[f"parameter {name}"] = _array(parameter)
        state[f"parameter {name} .grad is set"] = np.array(grad is not None)
        if grad is not None:
            state[f"parameter {name} .grad"] = _array(grad)
        state[f"parameter {name} requires_grad"] = np.array(bool(api["requires_grad"](parameter)))
    for name, buffer in api["named_buffers"](module):
        state[f"buffer {name}"] = _array(buffer)
    for name, submodule in api["named_modules"](module):
        state[f"module {name or '(the model itself)'} .training"] = np.array(bool(submodule.training))
    return state
