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

import builtins
import copy
import os
import sys
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BUILTIN_EXCEPTIONS", "Observed", "observe", "module_state", "encode", "decode", "pack", "unpack", "Foreign",
           "ImportGuard", "ForbiddenModule", "main"]


#: The built-in exception types by name, taken when this module loads (before any learner code runs, in
#: the re-check): a case that must raise names its type, and a learner who rebinds ``builtins.ValueError``
#: does not change which type counts.
BUILTIN_EXCEPTIONS = {name: value for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}


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


# ------------------------------------------------------------------------------------------------
# Results as data: nested tuples/lists/dicts of arrays, numbers and strings, encoded as .npz (arrays
# plus a JSON description of the nesting). Never pickle: the grader loads learner output with
# ``allow_pickle=False``, and anything else (a tensor, an ndarray subclass, a custom object) arrives
# as a named stand-in that the comparison rejects.

def encode(value, arrays: dict, depth: int = 0) -> dict:
    """The JSON description of ``value``; its arrays are added to ``arrays``."""
    if depth > 12:
        return {"t": "foreign", "type": "deeply nested object"}
    if value is None:
        return {"t": "none"}
    if isinstance(value, bool) or type(value) in (int, float, complex):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(value)
        return {"t": "array", "k": key, "py": True}
    if isinstance(value, np.generic) and type(value).__module__ == "numpy":
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(value)
        return {"t": "array", "k": key, "scalar": True}
    if type(value) is np.ndarray:  # exactly: a subclass may redefine ==, -, abs
        if value.dtype.hasobject:
            return {"t": "foreign", "type": "numpy array of Python objects"}
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"t": "array", "k": key}
    if type(value) in (tuple, list):
        return {"t": type(value).__name__, "items": [encode(v, arrays, depth + 1) for v in value]}
    if type(value) is dict and all(type(k) is str for k in value):
        return {"t": "dict", "items": [[k, encode(v, arrays, depth + 1)] for k, v in value.items()]}
    if type(value) is str:
        return {"t": "str", "v": value[:10000]}
    kind = type(value)
    return {"t": "foreign", "type": f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', '?')}"}


class Foreign:
    """Stands in for a value the learner process could not ship (a tensor, a subclass, an object)."""

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __repr__(self):
        return f"<{self.type_name}>"


def decode(node: dict, arrays):
    kind = node["t"]
    if kind == "none":
        return None
    if kind == "array":
        value = arrays[node["k"]]
        return value[()].item() if node.get("py") else (value[()] if node.get("scalar") else value)
    if kind in ("tuple", "list"):
        items = [decode(x, arrays) for x in node["items"]]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: decode(v, arrays) for k, v in node["items"]}
    if kind == "str":
        return node["v"]
    return Foreign(node.get("type", "object"))


def pack(head: dict, arrays: dict) -> bytes:
    """One message: ``head`` (JSON) and ``arrays``, as the bytes of an .npz file."""
    import io
    import json
    buffer = io.BytesIO()
    np.savez(buffer, __json__=np.frombuffer(json.dumps(head).encode(), dtype=np.uint8), **arrays)
    return buffer.getvalue()


def unpack(data: bytes) -> tuple[dict, dict]:
    """(head, arrays) of a :func:`pack` message, loaded without pickle."""
    import io
    import json
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        head = json.loads(bytes(npz["__json__"]).decode())
        return head, {k: npz[k] for k in npz.files if k != "__json__"}


# ------------------------------------------------------------------------------------------------
# The learner process of the re-check: ``main(commands_fd, results_fd)``, forked by the zygote.
#
#   grader -> child (pickle; the child trusts the grader, never the reverse):
#       {"program": [cell source, ...], "cell_timeout": s, "hidden": {module: message},
#        "provided": [module, ...]}, then one {"call": {...}} per case, then EOF.
#   child -> grader (pack()):
#       {"kind": "ready", "cell_errors": [...], "forbidden": [...]} after the program ran, then one
#       {"kind": "result", "key": ..., "value": ...} or {"kind": "result", "key": ..., "error": ...}
#       per call, each with the forbidden imports it tried.

_FRAME = 4


def _read_frame(stream):
    head = stream.read(_FRAME)
    if len(head) < _FRAME:
        return None
    size = int.from_bytes(head, "big")
    return stream.read(size)


def write_frame(stream, data: bytes) -> None:
    stream.write(len(data).to_bytes(_FRAME, "big") + data)
    stream.flush()


class ImportGuard:
    """A meta-path finder that refuses the modules a part may not use, and remembers each attempt.

    Inside the sandbox the forbidden modules' files are not there at all; this guard only turns the
    failure into a message that names the rule. Outside the sandbox it is the enforcement (then a
    determined learner could remove it; the sandbox is what the grader relies on).
    """

    def __init__(self, hidden: dict, provided):
        self.hidden, self.provided = dict(hidden), set(provided)
        self.parents = {p.rsplit(".", i)[0] for p in self.provided for i in range(p.count(".") + 1)}
        self.attempts: list = []
        self.phase = "program"

    def rule_for(self, name: str):
        if name in self.provided or name in self.parents:
            return None
        if any(name.startswith(p + ".") for p in self.provided):
            return None
        for prefix, message in self.hidden.items():
            if name == prefix or name.startswith(prefix + "."):
                return message
        return None

    def find_spec(self, name, path=None, target=None):
        message = self.rule_for(name)
        if message is None:
            return None
        self.attempts.append({"phase": self.phase, "module": name, "message": message})
        raise ForbiddenModule(message.replace("{module}", name))

    def install(self) -> None:
        for name in list(sys.modules):
            if self.rule_for(name) is not None:  # nothing forbidden may stay reachable from a cache
                del sys.modules[name]
        sys.meta_path.insert(0, self)

    def take(self) -> list:
        taken, self.attempts = self.attempts, []
        return taken


class ForbiddenModule(ImportError):
    """Raised when learner code imports a module its part may not use (the message names the rule)."""


class _NoShell:
    """``get_ipython()`` for translated magics: every magic is a no-op outside a kernel."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class _TimeLimit(BaseException):
    pass


def _run_program(program, namespace, limit: int, guard: ImportGuard) -> list:
    """Run each cell statement by statement (a failing statement is recorded and skipped, so a
    forbidden ``import torch`` at the top of a cell costs only what uses it)."""
    import ast
    import signal

    errors = []
    for index, source in enumerate(program):
        guard.phase = f"cell {index}"
        try:
            statements = ast.parse(source, filename=f"<cell {index}>").body
        except SyntaxError as exc:
            errors.append(f"cell {index}: SyntaxError: {exc}"[:500])
            continue
        signal.alarm(limit)
        try:
            for statement in statements:
                try:
                    code = compile(ast.Module([statement], type_ignores=[]), f"<cell {index}>", "exec")
                    exec(code, namespace)
                except _TimeLimit:
                    raise
                except BaseException as exc:  # SystemExit, KeyboardInterrupt, errors: the kernel would go on
                    errors.append(f"cell {index}, line {statement.lineno}: {type(exc).__name__}: {exc}"[:500])
        except _TimeLimit:
            errors.append(f"cell {index}: time limit of {limit} s")
        finally:
            signal.alarm(0)
    return errors


def _exit_refuser(main_pid: int, exit_now):
    """``os._exit`` for learner code: in a kernel it would end the kernel; here it ends only the statement.
    A process the learner forked exits for real (else it would go on answering the grader's calls)."""
    def refuse_exit(code=0):
        if os.getpid() != main_pid:
            exit_now(code)
        raise SystemExit(f"os._exit({code}) was called")
    return refuse_exit


def main(commands_fd: int, results_fd: int) -> int:
    """Run the learner's program, then answer the grader's calls; see the protocol above."""
    import pickle
    import signal

    exit_now = os._exit
    main_pid = os.getpid()
    os._exit = _exit_refuser(main_pid, exit_now)  # a program that exits at the top still has its functions checked
    commands = os.fdopen(commands_fd, "rb")
    results = os.fdopen(results_fd, "wb")

    def send(data: bytes) -> None:
        if os.getpid() != main_pid:  # a fork of the learner's that got this far says nothing to the grader
            exit_now(0)
        write_frame(results, data)
    job = pickle.loads(_read_frame(commands))
    guard = ImportGuard(job.get("hidden", {}), job.get("provided", ()))
    guard.install()
    capture_torch_api()
    limit = max(1, int(job.get("cell_timeout", 30)))

    def alarm(signum, frame):
        raise _TimeLimit()
    signal.signal(signal.SIGALRM, alarm)
    sys.path.insert(0, os.getcwd())  # as in a kernel: the notebook's folder is importable
    namespace = {"__name__": "__main__", "get_ipython": lambda: _NoShell()}
    cell_errors = _run_program(job["program"], namespace, limit, guard)
    send(pack({"kind": "ready", "cell_errors": cell_errors, "forbidden": guard.take()}, {}))
    while True:
        frame = _read_frame(commands)
        if frame is None:
            break
        try:
            call = pickle.loads(frame)["call"]
        except BaseException as exc:  # a case the course built from modules this process does not have
            key = "?"
            send(pack({"kind": "result", "key": key, "forbidden": guard.take(),
                       "error": f"the grader's case could not be loaded in the learner process "
                                f"({type(exc).__name__}: {exc}); this is a problem of the course, "
                                f"not of your code: tell your instructor"}, {}))
            continue
        guard.phase = call["key"]
        fn = namespace.get(call["function"])
        arrays: dict = {}
        head = {"kind": "result", "key": call["key"]}
        signal.alarm(limit)
        try:
            if fn is None:
                head["error"] = f"{call['function']} is not defined (did its cell run without errors?)"
            elif not callable(fn):
                head["error"] = f"{call['function']} is not a function (got {type(fn).__name__})"
            else:
                seen = observe(fn, call["args"], call["kwargs"], inplace=call["inplace"],
                               state_of=call["state_of"], repeat=call["repeat"])
                head["value"] = encode({"results": seen.results,
                                        "states": {str(k): v for k, v in seen.states.items()}}, arrays)
        except _TimeLimit:
            head["error"] = f"{call['function']} did not return within {limit} s"
        except NotImplementedError:
            head["error"] = f"{call['function']} is not implemented yet (it raised NotImplementedError)"
        except BaseException as exc:
            promised = BUILTIN_EXCEPTIONS.get(call.get("raises") or "")
            if promised is not None and isinstance(exc, promised):
                head["raised"] = call["raises"]         # what the case asks for; the grader decides
            else:
                head["error"] = f"{call['function']} raised {type(exc).__name__}: {exc}"[:1000]
        finally:
            signal.alarm(0)
        head["forbidden"] = guard.take()
        try:
            data = pack(head, arrays)
        except BaseException as exc:
            data = pack({"kind": "result", "key": call["key"], "forbidden": head["forbidden"],
                         "error": f"the result could not be sent ({type(exc).__name__})"}, {})
        send(data)
    results.close()
    exit_now(0)  # skip learner-registered atexit handlers
