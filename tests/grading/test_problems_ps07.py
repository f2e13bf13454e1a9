"""Autograded parts of problem set 7 (BatchNorm in practice) and its notebook.

For every Part: wrong implementations (mistakes chapter 8 and the notebook warn about) are listed in
``WRONG`` (the same shape as the tables of test_problems_ps01_03.py and test_problems_ps04_06.py, for
test_all_parts.py) and each must fail naming a case; correct implementations written differently from
the solution must pass; the hidden parts cover the promised edge cases; every autograded cell of the
notebook, visible or hidden, is backed by a Part of the same points; visible parts replay exactly the
calls of their visible cell; one wrong function costs only its own cells and Parts; the numpy parts are
graded without torch and the torch parts check the model's state. For the notebook: the solution passes
every Part and visible test, the release's visible tests fail on the stubs, the release leaks nothing,
the stated point totals add up and every instruction cell is locked.

The notebook checks run the notebook's code cells in this process (no kernel), which takes seconds; the
full nbgrader round trip (autograde gives full marks / zero) is the CI gate's job.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import io
import pickle
import re
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import normcourse.reference as ref  # noqa: E402
from normcourse.grading.compare import GradingError  # noqa: E402
from normcourse.grading.parts import get_part, parts_of, provided_modules  # noqa: E402
from normcourse.grading.rules import NO_TORCH  # noqa: E402
from normcourse.problems import ps07_batchnorm_practice as ps07  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PS = "ps07_batchnorm_practice"
ALL_PARTS = parts_of(PS)
HIDDEN_PARTS = [p for p in ALL_PARTS if p.grade_id.endswith("_hidden")]
VISIBLE_PARTS = [p for p in ALL_PARTS if not p.grade_id.endswith("_hidden")]
NUMPY_FUNCTIONS = {"fuse_linear_bn_weights", "fuse_conv_bn_weights", "ghost_batch_norm", "batch_renorm"}
TORCH_FUNCTIONS = {"freeze_batch_norm", "evaluate"}


def _ids(parts):
    return [p.grade_id for p in parts]


def _notebook(folder: str = "solutions"):
    return nbformat.read(ROOT / folder / PS / f"{PS}.ipynb", as_version=4)


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The notebook pins one thread; tiny models are also much faster so on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------
# The set's shape: parts, points, rules.

def test_parts_points_and_rules():
    points = {p.grade_id: p.points for p in ALL_PARTS}
    assert points == {"fuse_linear_bn": 1, "fuse_linear_bn_hidden": 1, "fuse_conv_bn": 1, "fuse_conv_bn_hidden": 2,
                      "freeze_batch_norm": 1, "freeze_batch_norm_hidden": 2, "evaluate": 1, "evaluate_hidden": 2,
                      "ghost_batch_norm": 1, "ghost_batch_norm_hidden": 3, "batch_renorm": 1,
                      "batch_renorm_hidden": 2}
    for part in ALL_PARTS:
        if part.function in NUMPY_FUNCTIONS:
            assert part.forbid == (NO_TORCH,), f"{part.grade_id} is numpy only"
        else:
            assert part.function in TORCH_FUNCTIONS and part.forbid == (), part.grade_id
    assert provided_modules(PS) == (), "the notebook hands the learner no course module"
    assert len({p.function for p in ALL_PARTS}) >= 5 and len(HIDDEN_PARTS) == len(VISIBLE_PARTS) == 6


# ---------------------------------------------------------------------------------------------------
# Edge cases: each hidden part names the ones that apply to its inputs (labels matched as substrings).

ARRAY_EDGES = ["batch size 1", "constant input", "magnitude 1e4", "float32", "non-contiguous"]
FOLD_EDGES = ["batch size 1 analogue", "running_var exactly 0", "magnitude 1e4", "float32", "non-contiguous"]
REQUIRED_EDGES = {
    "fuse_linear_bn_hidden": FOLD_EDGES + ["linear_b None", "bn_w None", "without a bias"],
    "fuse_conv_bn_hidden": FOLD_EDGES + ["Conv1d", "Conv3d", "ConvTranspose", "grouped", "C_in != C_out"],
    # A model has no batch, magnitude or memory layout: the edges are kinds of models and their states.
    "freeze_batch_norm_hidden": ["nested blocks", "evaluation mode", "frozen", "affine=False", "no BatchNorm at all",
                                 "InstanceNorm", "GroupNorm", "LayerNorm", "SyncBatchNorm", "BatchNorm3d",
                                 "a single BatchNorm2d", ".grad set", "float32", "called twice"],
    "evaluate_hidden": ARRAY_EDGES + ["Dropout", "frozen BatchNorm layers", "already in evaluation mode",
                                      "random submodules in evaluation mode", "larger than the data", ".grad set",
                                      "without BatchNorm", "called twice"],
    "ghost_batch_norm_hidden": ARRAY_EDGES + ["'average'", "'sequential'", "one ghost batch", "evaluation mode",
                                              "no running statistics", "NCHW", "NCL"],
    "batch_renorm_hidden": ARRAY_EDGES + ["r clipped above", "d clipped", "r_max=1, d_max=0", "evaluation mode",
                                          "far from the batch's", "NCHW"],
}


def test_every_hidden_part_lists_its_edge_cases():
    assert {p.grade_id for p in HIDDEN_PARTS} == set(REQUIRED_EDGES)


@pytest.mark.parametrize("part", HIDDEN_PARTS, ids=_ids(HIDDEN_PARTS))
def test_cases_cover_edge_cases(part):
    labels = " | ".join(case.label for case in part.make_cases())
    for edge in REQUIRED_EDGES[part.grade_id]:
        assert edge in labels, f"{part.grade_id}: no {edge!r} case among: {labels}"


def _case(grade_id, start):
    return next(c for c in get_part(PS, grade_id).make_cases() if c.label.startswith(start))


def test_edge_cases_really_are_edge_cases():
    """The labels do not lie (spot checks on the inputs behind them)."""
    assert _case("fuse_linear_bn_hidden", "batch size 1").args[0].shape == (1, 1)
    assert np.sum(_case("fuse_linear_bn_hidden", "constant input").args[3] == 0) == 2
    assert np.abs(_case("fuse_linear_bn_hidden", "magnitude 1e4").args[0]).max() > 1e3
    assert all(a.dtype == np.float32 for a in _case("fuse_linear_bn_hidden", "float32:").args
               if isinstance(a, np.ndarray))
    assert not _case("fuse_conv_bn_hidden", "non-contiguous").args[0].flags.c_contiguous
    transposed = _case("fuse_conv_bn_hidden", "ConvTranspose2d(2, 4, 3)")
    assert transposed.kwargs == {"transpose": True} and transposed.args[0].shape[1] == transposed.args[2].shape[0] != \
        transposed.args[0].shape[0]
    for label in ("batch size 1 per ghost batch", "batch size 1 in evaluation"):
        case = _case("ghost_batch_norm_hidden", label)
        assert case.args[1] == 1 or case.args[0].shape[0] == 1
    assert np.ptp(_case("ghost_batch_norm_hidden", "constant input").args[0]) == 0
    assert _case("ghost_batch_norm_hidden", "float32").args[0].dtype == np.float32
    assert _case("batch_renorm_hidden", "batch size 1 in training").args[0].shape[0] == 1
    x = _case("evaluate_hidden", "constant input").args[1]
    assert torch.equal(x, x[:1].expand_as(x))
    assert not _case("evaluate_hidden", "non-contiguous").args[1].is_contiguous()
    assert _case("evaluate_hidden", "float32").args[0][0].weight.dtype == torch.float32
    mixed = _case("evaluate_hidden", "frozen BatchNorm layers").args[0]
    assert mixed.training and any(isinstance(m, nn.BatchNorm1d) and not m.training for m in mixed.modules())
    single = _case("freeze_batch_norm_hidden", "the model is a single BatchNorm2d").args[0]
    assert isinstance(single, nn.BatchNorm2d)
    for grade_id in ("freeze_batch_norm_hidden", "evaluate_hidden"):
        cases = get_part(PS, grade_id).make_cases()
        assert all(c.state_of == (0,) and c.repeat == 2 for c in cases), "every model case checks the model, twice"


def test_renorm_cases_really_clip():
    """The clipping cases make the reference clip r or d (and the unclipped ones leave some inside)."""
    for label, which in (("r clipped above", "r"), ("d clipped", "d"), ("constant input", "r")):
        case = _case("batch_renorm_hidden", label)
        x, rm, rs = (np.asarray(a, dtype=np.float64) for a in case.args[:3])
        eps, r_max, d_max = case.args[7], case.args[8], case.args[9]
        axes = (0,) + tuple(range(2, x.ndim))
        sd = np.sqrt(x.var(axis=axes) + eps)
        raw = sd / rs if which == "r" else (x.mean(axis=axes) - rm) / rs
        limit = r_max if which == "r" else d_max
        assert np.any((raw > limit) | (raw < (1 / r_max if which == "r" else -d_max))), label


# ---------------------------------------------------------------------------------------------------
# Wrong implementations: each must fail its part, naming a case (test_all_parts.py runs them for all sets
# once the lead wires this table in; test_wrong_implementations_fail below runs them now).

def _scale(rv, eps, w, *, eps_outside=False):
    rv = np.asarray(rv, dtype=np.float64)
    scale = 1.0 / (np.sqrt(rv) + eps if eps_outside else np.sqrt(rv + eps))
    return scale if w is None else scale * np.asarray(w, dtype=np.float64)


def _fuse_linear(scale_columns=False, eps_outside=False, bias_unscaled=False, ignore_bias=False):
    def fuse(linear_w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
        dtype = np.asarray(linear_w).dtype
        w = np.asarray(linear_w, dtype=np.float64)
        a = _scale(bn_rv, bn_eps, bn_w, eps_outside=eps_outside)
        b = 0.0 if linear_b is None or ignore_bias else np.asarray(linear_b, dtype=np.float64)
        beta = 0.0 if bn_b is None else np.asarray(bn_b, dtype=np.float64)
        rm = np.asarray(bn_rm, dtype=np.float64)
        fused_b = (b + beta - a * rm) if bias_unscaled else a * (b - rm) + beta
        fused_w = w * a[None, :] if scale_columns else a[:, None] * w
        return fused_w.astype(dtype), (fused_b + 0 * rm).astype(dtype)
    fuse.__name__ = ("fuse_linear_scales_columns" if scale_columns else "fuse_linear_eps_outside" if eps_outside
                     else "fuse_linear_bias_unscaled" if bias_unscaled else "fuse_linear_ignores_linear_bias")
    return fuse


def _fuse_linear_float64_out(linear_w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
    """Right values, but float64 whatever the input dtype."""
    w, b = ref.fuse_linear_bn_weights(np.asarray(linear_w, dtype=np.float64),
                                      None if linear_b is None else np.asarray(linear_b, dtype=np.float64),
                                      bn_rm, bn_rv, bn_eps, bn_w, bn_b)
    return w, b


def _fuse_conv(transpose_ignored=False, four_d=False, eps_outside=False, bias_unscaled=False):
    def fuse(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, transpose=False):
        dtype = np.asarray(conv_w).dtype
        w = np.asarray(conv_w, dtype=np.float64)
        a = _scale(bn_rv, bn_eps, bn_w, eps_outside=eps_outside)
        rm = np.asarray(bn_rm, dtype=np.float64)
        b = np.zeros_like(rm) if conv_b is None else np.asarray(conv_b, dtype=np.float64)
        beta = np.zeros_like(rm) if bn_b is None else np.asarray(bn_b, dtype=np.float64)
        if four_d:
            shape = (1, -1, 1, 1) if transpose else (-1, 1, 1, 1)
        else:
            shape = [1] * w.ndim
            shape[1 if transpose and not transpose_ignored else 0] = -1
        fused_b = b + beta - a * rm if bias_unscaled else a * (b - rm) + beta
        return (w * a.reshape(shape)).astype(dtype), fused_b.astype(dtype)
    fuse.__name__ = ("fuse_conv_ignores_transpose" if transpose_ignored else "fuse_conv_assumes_2d_kernels" if four_d
                     else "fuse_conv_eps_outside" if eps_outside else "fuse_conv_bias_unscaled")
    return fuse


def _is_bn(module):
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _freeze_whole_model_eval(model):
    """model.eval() freezes the BatchNorm layers, and every other module's mode with them."""
    model.eval()
    names = []
    for name, module in model.named_modules():
        if _is_bn(module):
            module.requires_grad_(False)
            names.append(name)
    return names


def _freeze_norm_base(model):
    """Every _NormBase: InstanceNorm too."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.eval()
            module.requires_grad_(False)
            names.append(name)
    return names


def _freeze_mode_only(model):
    """Evaluation mode, but gamma and beta keep training."""
    names = []
    for name, module in model.named_modules():
        if _is_bn(module):
            module.eval()
            names.append(name)
    return names


def _freeze_children_only(model):
    """model.named_children(): misses BatchNorm layers inside nested blocks."""
    names = []
    for name, module in model.named_children():
        if _is_bn(module):
            module.eval()
            module.requires_grad_(False)
            names.append(name)
    return names


def _freeze_any_norm_by_name(model):
    """'Norm' in the class name: GroupNorm and LayerNorm too."""
    names = []
    for name, module in model.named_modules():
        if "Norm" in type(module).__name__:
            module.eval()
            module.requires_grad_(False)
            names.append(name)
    return names


def _evaluate_no_grad_only(model, x, batch_size=64):
    """The chapter's bug: torch.no_grad() but no model.eval()."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def _evaluate_restores_model_mode(model, x, batch_size=64):
    """model.train(was): un-freezes frozen BatchNorm layers inside a model in training mode."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()
    model.train(was)
    return out


def _evaluate_never_restores(model, x, batch_size=64):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def _evaluate_batch_norm_only(model, x, batch_size=64):
    """Switches only the BatchNorm layers to evaluation mode: dropout stays on."""
    modes = [(m, m.training) for m in model.modules()]
    for m in model.modules():
        if _is_bn(m):
            m.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()
    for m, mode in modes:
        m.training = mode
    return out


def _ghost_with(*, strided=False, whole=False, biased_running=False, spatial_n=True, always_average=False):
    def ghost(x, ghost_batch_size, running_mean=None, running_var=None, weight=None, bias=None, training=True,
              momentum=0.1, eps=1e-5, stats_update="average"):
        if not training:
            return ref.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
        x64 = np.asarray(x, dtype=np.float64)
        n, c = x64.shape[:2]
        b = n if whole else ghost_batch_size
        k = n // b
        order = np.arange(n).reshape(b, k).T.reshape(-1) if strided else np.arange(n)
        groups = x64[order].reshape((k, b) + x64.shape[1:])
        axes = (1,) + tuple(range(3, groups.ndim))
        mean, var = groups.mean(axis=axes, keepdims=True), groups.var(axis=axes, keepdims=True)
        y = np.empty_like(x64)
        y[order] = ((groups - mean) / np.sqrt(var + eps)).reshape(x64.shape)
        shape = (1, -1) + (1,) * (x64.ndim - 2)
        if weight is not None:
            y = y * np.reshape(weight, shape)
        if bias is not None:
            y = y + np.reshape(bias, shape)
        if running_mean is not None:
            count = groups[0].size // c if spatial_n else b
            factor = 1.0 if biased_running else count / max(count - 1, 1)
            means, variances = mean.reshape(k, c), var.reshape(k, c) * factor
            if stats_update == "average" or always_average:
                running_mean[...] = (1 - momentum) * running_mean + momentum * means.mean(0)
                running_var[...] = (1 - momentum) * running_var + momentum * variances.mean(0)
            else:
                for i in range(k):
                    running_mean[...] = (1 - momentum) * running_mean + momentum * means[i]
                    running_var[...] = (1 - momentum) * running_var + momentum * variances[i]
        return y.astype(np.asarray(x).dtype)
    ghost.__name__ = ("ghost_strided_groups" if strided else "ghost_whole_batch_statistics" if whole
                      else "ghost_biased_running_var" if biased_running else "ghost_n_without_spatial_axes"
                      if not spatial_n else "ghost_always_average_update")
    return ghost


def _renorm_with(*, clip_r=True, clip_d=True, update_first=False, running_variance=False, unbiased=False,
                 eval_as_variance=False):
    def renorm(x, running_mean, running_std, weight=None, bias=None, training=False, momentum=0.01, eps=1e-5,
               r_max=3.0, d_max=5.0):
        x64 = np.asarray(x, dtype=np.float64)
        shape = (1, -1) + (1,) * (x64.ndim - 2)
        if training:
            axes = (0,) + tuple(range(2, x64.ndim))
            mu = x64.mean(axis=axes)
            sigma = np.sqrt(x64.var(axis=axes, ddof=1 if unbiased else 0) + eps)
            if update_first:
                running_mean[...] += momentum * (mu - running_mean)
                running_std[...] += momentum * (sigma - running_std)
            r = sigma / running_std
            d = (mu - running_mean) / running_std
            r = np.clip(r, 1 / r_max, r_max) if clip_r else r
            d = np.clip(d, -d_max, d_max) if clip_d else d
            y = (x64 - mu.reshape(shape)) / sigma.reshape(shape) * r.reshape(shape) + d.reshape(shape)
            if not update_first:
                running_mean[...] += momentum * (mu - running_mean)
                new = sigma ** 2 if running_variance else sigma
                running_std[...] += momentum * (new - running_std)
        else:
            scale = np.sqrt(running_std + eps) if eval_as_variance else running_std
            y = (x64 - np.reshape(running_mean, shape)) / np.reshape(scale, shape)
        if weight is not None:
            y = y * np.reshape(weight, shape)
        if bias is not None:
            y = y + np.reshape(bias, shape)
        return y.astype(np.asarray(x).dtype)
    renorm.__name__ = ("renorm_r_not_clipped" if not clip_r else "renorm_d_not_clipped" if not clip_d
                       else "renorm_updates_before_r_and_d" if update_first else "renorm_running_variance"
                       if running_variance else "renorm_unbiased_batch_std" if unbiased
                       else "renorm_eval_treats_std_as_variance")
    return renorm


_FUSE_LINEAR_WRONG = [_fuse_linear(scale_columns=True), _fuse_linear(eps_outside=True),
                      _fuse_linear(bias_unscaled=True), _fuse_linear(ignore_bias=True)]
_FUSE_CONV_WRONG = [_fuse_conv(transpose_ignored=True), _fuse_conv(eps_outside=True), _fuse_conv(bias_unscaled=True)]
_FREEZE_WRONG = [_freeze_whole_model_eval, _freeze_mode_only, _freeze_children_only]
_EVALUATE_WRONG = [_evaluate_no_grad_only, _evaluate_never_restores, _evaluate_batch_norm_only,
                   _evaluate_restores_model_mode]
_GHOST_WRONG = [_ghost_with(strided=True), _ghost_with(whole=True), _ghost_with(biased_running=True),
                _ghost_with(always_average=True)]
_RENORM_WRONG = [_renorm_with(update_first=True), _renorm_with(running_variance=True), _renorm_with(unbiased=True),
                 _renorm_with(eval_as_variance=True)]

WRONG = {
    (PS, "fuse_linear_bn"): _FUSE_LINEAR_WRONG,
    (PS, "fuse_linear_bn_hidden"): _FUSE_LINEAR_WRONG + [_fuse_linear_float64_out],
    (PS, "fuse_conv_bn"): _FUSE_CONV_WRONG,
    (PS, "fuse_conv_bn_hidden"): _FUSE_CONV_WRONG + [_fuse_conv(four_d=True)],
    (PS, "freeze_batch_norm"): _FREEZE_WRONG + [_freeze_any_norm_by_name],
    (PS, "freeze_batch_norm_hidden"): _FREEZE_WRONG + [_freeze_norm_base, _freeze_any_norm_by_name],
    (PS, "evaluate"): _EVALUATE_WRONG,
    (PS, "evaluate_hidden"): _EVALUATE_WRONG,
    (PS, "ghost_batch_norm"): _GHOST_WRONG,
    (PS, "ghost_batch_norm_hidden"): _GHOST_WRONG + [_ghost_with(spatial_n=False)],
    (PS, "batch_renorm"): _RENORM_WRONG,
    (PS, "batch_renorm_hidden"): _RENORM_WRONG + [_renorm_with(clip_r=False), _renorm_with(clip_d=False)],
}
WRONG_CASES = [(key, fn) for key, fns in WRONG.items() for fn in fns]


def test_every_part_has_a_wrong_implementation():
    assert {(p.problem_set, p.grade_id) for p in ALL_PARTS} == set(WRONG)


@pytest.mark.parametrize("key, wrong", WRONG_CASES, ids=[f"{k[1]}:{f.__name__}" for k, f in WRONG_CASES])
def test_wrong_implementations_fail(key, wrong):
    """What test_all_parts.py does for every set (until this table is wired in there)."""
    part = get_part(*key)
    with pytest.raises(GradingError) as info:
        part.check(wrong)
    message = str(info.value)
    labels = [case.label for case in part.make_cases()]
    assert any(repr(label) in message for label in labels), f"message names no case: {message}"


def test_freeze_messages_say_what_the_contract_wants():
    """ModelPart's state messages: a BatchNorm that is not frozen is told to freeze, anything else to stay."""
    part = get_part(PS, "freeze_batch_norm_hidden")
    with pytest.raises(GradingError, match=r"requires_grad is True, expected False; this is a BatchNorm layer"):
        part.check(_freeze_mode_only)
    with pytest.raises(GradingError, match=r"\.training is False, expected True; this is not a BatchNorm layer"):
        part.check(_freeze_whole_model_eval)
    with pytest.raises(GradingError, match=r"not BatchNorm layers, or listed twice: \['2'\]"):
        part.check(_freeze_norm_base)


def test_evaluate_messages_name_the_state_that_changed():
    part = get_part(PS, "evaluate_hidden")
    with pytest.raises(GradingError, match=r"buffer .*running_mean|value mismatch"):
        part.check(_evaluate_no_grad_only)
    with pytest.raises(GradingError, match=r"\.training is False, expected True"):
        part.check(_evaluate_never_restores)
    frozen = [c for c in part.make_cases() if c.label.startswith("frozen BatchNorm layers")]
    with pytest.raises(GradingError, match=r"module 1 \.training is True, expected False; put back every submodule's own"):
        part.judge(part.call(_evaluate_restores_model_mode, frozen[0]), frozen[0])


# ---------------------------------------------------------------------------------------------------
# Correct implementations written differently from the solution must pass.

def _fuse_linear_einsum(linear_w, linear_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
    dtype = np.asarray(linear_w).dtype
    rm = np.asarray(bn_rm, dtype=np.float64)
    gamma = np.ones_like(rm) if bn_w is None else np.asarray(bn_w, dtype=np.float64)
    beta = np.zeros_like(rm) if bn_b is None else np.asarray(bn_b, dtype=np.float64)
    inv = gamma / np.sqrt(np.asarray(bn_rv, dtype=np.float64) + bn_eps)
    w = np.einsum("o,oi->oi", inv, np.asarray(linear_w, dtype=np.float64))
    b = beta - inv * rm if linear_b is None else beta + inv * (np.asarray(linear_b, dtype=np.float64) - rm)
    return w.astype(dtype), b.astype(dtype)


def _fuse_conv_moveaxis(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b, transpose=False):
    dtype = np.asarray(conv_w).dtype
    w = np.moveaxis(np.asarray(conv_w, dtype=np.float64), 1 if transpose else 0, -1)
    rm = np.asarray(bn_rm, dtype=np.float64)
    gamma = 1.0 if bn_w is None else np.asarray(bn_w, dtype=np.float64)
    a = gamma / np.sqrt(np.asarray(bn_rv, dtype=np.float64) + bn_eps)
    b = 0.0 if conv_b is None else np.asarray(conv_b, dtype=np.float64)
    beta = 0.0 if bn_b is None else np.asarray(bn_b, dtype=np.float64)
    fused = np.moveaxis(w * a, -1, 1 if transpose else 0)
    return fused.astype(dtype), (a * (b - rm) + beta).astype(dtype)


def _freeze_by_class_name(model):
    """'BatchNorm' in the class name: BatchNorm1d/2d/3d and SyncBatchNorm, nothing else. Correct here."""
    names = []
    for name, module in model.named_modules():
        if "BatchNorm" in type(module).__name__:
            module.train(False)
            for p in module.parameters(recurse=False):
                p.requires_grad = False
            names.append(name)
    return names


def _evaluate_state_dict_restore(model, x, batch_size=64):
    """No no_grad, detach instead; modes restored from a dict by name."""
    modes = {name: m.training for name, m in model.named_modules()}
    model.eval()
    outputs = [model(chunk).detach() for chunk in torch.split(x, batch_size)]
    for name, m in model.named_modules():
        m.training = modes[name]
    return torch.cat(outputs).numpy()


def _ghost_loops(x, ghost_batch_size, running_mean=None, running_var=None, weight=None, bias=None, training=True,
                 momentum=0.1, eps=1e-5, stats_update="average"):
    """A loop over ghost batches calling a BatchNorm step, like a module applied chunk by chunk."""
    if not training:
        return ref.batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
    chunks = np.split(np.asarray(x), np.asarray(x).shape[0] // ghost_batch_size)
    if stats_update == "sequential":
        return np.concatenate([ref.batch_norm(g, running_mean, running_var, weight, bias, True, momentum, eps)
                               for g in chunks])
    stats = [(np.zeros(np.asarray(x).shape[1]), np.ones(np.asarray(x).shape[1])) for _ in chunks]
    out = np.concatenate([ref.batch_norm(g, m, v, weight, bias, True, 1.0, eps) for g, (m, v) in zip(chunks, stats)])
    if running_mean is not None:
        running_mean[...] = (1 - momentum) * running_mean + momentum * np.mean([m for m, _ in stats], axis=0)
        running_var[...] = (1 - momentum) * running_var + momentum * np.mean([v for _, v in stats], axis=0)
    return out


def _renorm_float32_reductions(x, running_mean, running_std, weight=None, bias=None, training=False, momentum=0.01,
                               eps=1e-5, r_max=3.0, d_max=5.0):
    """Reduces a float32 input in float32 (as PyTorch would), through the correction helper."""
    x = np.asarray(x)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if training:
        axes = (0,) + tuple(range(2, x.ndim))
        mu, sigma = x.mean(axis=axes), np.sqrt(x.var(axis=axes) + np.float32(eps) if x.dtype == np.float32
                                               else x.var(axis=axes) + eps)
        r, d = ref.batch_renorm_correction(mu, sigma, running_mean, running_std, r_max, d_max)
        y = (x - mu.reshape(shape)) / sigma.reshape(shape) * r.reshape(shape) + d.reshape(shape)
        running_mean += momentum * (mu - running_mean)
        running_std += momentum * (sigma - running_std)
    else:
        y = (x - running_mean.reshape(shape)) / running_std.reshape(shape)
    y = y * (1 if weight is None else weight.reshape(shape)) + (0 if bias is None else bias.reshape(shape))
    return y.astype(x.dtype)


CORRECT = {
    (PS, "fuse_linear_bn_hidden"): [_fuse_linear_einsum],
    (PS, "fuse_conv_bn_hidden"): [_fuse_conv_moveaxis],
    (PS, "freeze_batch_norm_hidden"): [_freeze_by_class_name],
    (PS, "evaluate_hidden"): [_evaluate_state_dict_restore],
    (PS, "ghost_batch_norm_hidden"): [_ghost_loops],
    (PS, "batch_renorm_hidden"): [_renorm_float32_reductions],
}


@pytest.mark.parametrize("key, correct", [(k, f) for k, fs in CORRECT.items() for f in fs],
                         ids=[f"{k[1]}:{f.__name__}" for k, fs in CORRECT.items() for f in fs])
def test_correct_variants_pass(key, correct):
    assert get_part(*key).check(correct) > 0
    visible = get_part(key[0], key[1].removesuffix("_hidden"))
    assert visible.check(correct) > 0


# ---------------------------------------------------------------------------------------------------
# Cases: only numpy, torch and plain objects (the re-check process cannot import the course), results
# independent of the number of torch threads, and cheap.

def test_case_arguments_need_no_course_module():
    for part in ALL_PARTS:
        for case in part.make_cases():
            modules = set()

            class Recorder(pickle.Pickler):
                def reducer_override(self, obj):
                    module = getattr(obj, "__module__", None) if isinstance(obj, type) or callable(obj) else None
                    if module:
                        modules.add(module)
                    modules.add(type(obj).__module__)
                    return NotImplemented

            Recorder(io.BytesIO()).dump((case.args, case.kwargs))
            allowed = ("numpy", "torch", "builtins", "collections", "copyreg", "_codecs")
            bad = {m for m in modules if not m.startswith(allowed)}
            assert not bad, f"{part.grade_id}, case {case.label!r}: its arguments need {sorted(bad)}"
            if part.function in NUMPY_FUNCTIONS:
                assert not any(m.startswith("torch") for m in modules), f"{part.grade_id}: torch in a numpy case"


TORCH_PARTS = [p for p in ALL_PARTS if p.function in TORCH_FUNCTIONS]


@pytest.mark.parametrize("part", TORCH_PARTS, ids=_ids(TORCH_PARTS))
def test_results_do_not_depend_on_the_thread_count(part):
    single = [part.expected(case) for case in part.make_cases()]
    torch.set_num_threads(2)
    for case, expected in zip(part.make_cases(), single):
        part.judge(expected, case)  # the one-thread result passes against the two-thread reference


@pytest.mark.parametrize("part", ALL_PARTS, ids=_ids(ALL_PARTS))
def test_every_case_is_fast(part):
    """The grader re-runs every part out of the kernel: a case must stay well under a second. Measured
    below 0.1 s per case on a loaded 2-core machine; 1 s leaves room for a slower one."""
    for case in part.make_cases():
        start = time.perf_counter()
        part.judge(part.call(part.reference, case), case)
        assert time.perf_counter() - start < 1.0, case.label


# ---------------------------------------------------------------------------------------------------
# The notebook: metadata agrees with the Parts, solutions pass, visible tests bite, the release is clean.

HIDDEN_CALL = re.compile(r"""check_part\(["'](?P<ps>\w+)["'], ["'](?P<gid>\w+)["'], (?P<fn>\w+)\)""")


def _autograded(nb):
    return [c for c in nb.cells if _meta(c).get("grade") and not _meta(c).get("solution") and c.cell_type == "code"]


def test_every_autograded_cell_is_backed_by_a_part():
    parts = {p.grade_id: p for p in ALL_PARTS}
    cells = {_meta(c)["grade_id"]: c for c in _autograded(_notebook())}
    assert set(cells) == set(parts)
    for grade_id, cell in cells.items():
        meta, part = _meta(cell), parts[grade_id]
        assert meta.get("locked") and float(meta["points"]) == float(part.points), grade_id
        assert f'"{grade_id}"' in cell.source, f"{grade_id}: the cell names its part"
        match = HIDDEN_CALL.search(cell.source)
        if "### BEGIN HIDDEN TESTS" in cell.source:
            assert match and (match["ps"], match["gid"], match["fn"]) == (PS, grade_id, part.function)
        else:
            assert not match and re.search(rf"\b{part.function}\(", cell.source), grade_id


def test_no_bare_assert_in_any_test_cell():
    for cell in _autograded(_notebook()):
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Assert):
                assert node.msg is not None, f"{_meta(cell)['grade_id']} line {node.lineno}: assert without a message"


def test_notebook_metadata_follows_the_conventions():
    nb = _notebook()
    ids = [_meta(c)["grade_id"] for c in nb.cells if _meta(c)]
    assert len(ids) == len(set(ids)), "grade_ids must be unique"
    assert len({c.id for c in nb.cells}) == len(nb.cells), "cell ids must be unique"
    kinds = {"solution_code": 0, "autograded": 0, "written": 0}
    for cell in nb.cells:
        meta = _meta(cell)
        if cell.cell_type == "markdown":
            assert meta, f"markdown cell {cell.id} has no nbgrader metadata: lock every instruction cell"
        if not meta:
            continue
        assert meta["schema_version"] == 3
        if meta.get("solution"):
            assert not meta.get("locked")
            assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
            if cell.cell_type == "code":
                assert not meta.get("grade")
                kinds["solution_code"] += 1
            else:
                assert meta.get("grade") and meta["points"] > 0 and "Rubric" in cell.source
                kinds["written"] += 1
        elif meta.get("grade"):
            assert meta.get("locked") and meta["points"] > 0 and cell.cell_type == "code"
            kinds["autograded"] += 1
        else:
            assert meta.get("locked"), f"cell {cell.id} ({meta['grade_id']}) is neither graded nor locked"
    assert kinds == {"solution_code": 6, "autograded": 12, "written": 1}, kinds


TOTAL = re.compile(r"\*\*Points: (\d+) in total\*\*, (\d+) autograded and (\d+) graded by hand")


def test_the_stated_point_totals_add_up():
    nb = _notebook()
    total, auto, hand = (int(v) for v in TOTAL.search(nb.cells[0].source).groups())
    graded = [c for c in nb.cells if _meta(c).get("grade")]
    assert auto == sum(_meta(c)["points"] for c in graded if not _meta(c).get("solution")) == 18
    assert hand == sum(_meta(c)["points"] for c in graded if _meta(c).get("solution")) == 4
    assert total == auto + hand == 22
    for part in VISIBLE_PARTS:  # the intro's table of points agrees with the Parts
        hidden = get_part(PS, part.grade_id + "_hidden")
        row = f"`{part.function}`"
        line = next(ln for ln in nb.cells[0].source.splitlines() if row in ln)
        assert re.search(rf"\| {part.points:g} \| {hidden.points:g} \|", line), line


class _Quiet(io.StringIO):
    pass


def _run_cells(nb, select, namespace=None, tolerate=False):
    """Execute the code cells whose nbgrader metadata satisfies ``select``, in order, in one namespace.
    With ``tolerate``, a cell that raises is skipped, as in a kernel."""
    namespace = {"__name__": "__main__"} if namespace is None else namespace
    for cell in nb.cells:
        if cell.cell_type == "code" and select(_meta(cell)):
            with contextlib.redirect_stdout(_Quiet()):
                try:
                    exec(compile(cell.source, f"<{_meta(cell).get('grade_id')}>", "exec"), namespace)
                except Exception:
                    if not tolerate:
                        raise
    return namespace


def _is_program(meta):
    """Setup, read-only and solution cells: the learner's program without the tests (and without the
    ungraded explore cell, which has no metadata)."""
    return bool(meta) and not meta.get("grade")


@functools.lru_cache(maxsize=None)
def _solution_program() -> dict:
    threads = torch.get_num_threads()
    namespace = _run_cells(_notebook(), _is_program)
    torch.set_num_threads(threads)
    return namespace


def test_solution_functions_pass_their_parts():
    namespace = _solution_program()
    for part in ALL_PARTS:
        assert part.check(namespace[part.function]) > 0


def _visible_cells(nb):
    return [c for c in _autograded(nb) if "BEGIN HIDDEN TESTS" not in c.source]


def test_visible_tests_pass_on_the_solution():
    visible = {_meta(c)["grade_id"] for c in _visible_cells(_notebook())}
    assert visible == {p.grade_id for p in VISIBLE_PARTS}
    _run_cells(_notebook(), lambda m: m.get("grade_id") in visible, namespace=dict(_solution_program()))


def test_the_explore_cell_runs_on_the_solution():
    nb = _notebook()
    cell = next(c for c in nb.cells if c.id == "evaluate-explore")
    assert not _meta(cell)
    with contextlib.redirect_stdout(_Quiet()):
        exec(compile(cell.source, "explore", "exec"), dict(_solution_program()))


def _same(a, b) -> bool:
    """Equal inputs: arrays and tensors by value and dtype, modules by state and mode."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b))
    if isinstance(a, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict() if isinstance(b, torch.nn.Module) else None
        return (type(a) is type(b) and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
                and [m.training for m in a.modules()] == [m.training for m in b.modules()])
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("part", VISIBLE_PARTS, ids=_ids(VISIBLE_PARTS))
def test_visible_parts_replay_the_visible_cells(part):
    """A visible cell's Part re-checks exactly the calls the cell makes, in the same order: record them."""
    namespace = _solution_program()
    calls = []
    function = namespace[part.function]

    def recorder(*args, **kwargs):
        calls.append(copy.deepcopy((args, kwargs)))
        return function(*args, **kwargs)

    _run_cells(_notebook(), lambda m: m.get("grade_id") == part.grade_id,
               namespace={**namespace, part.function: recorder})
    expected = [(case.args, case.kwargs) for case in part.make_cases() for _ in range(case.repeat)]
    assert len(calls) == len(expected), f"the cell makes {len(calls)} calls, the Part {len(expected)}"
    for i, (call, case) in enumerate(zip(calls, expected)):
        assert _same(call[0], case[0]) and _same(call[1], case[1]), f"call {i + 1} differs from the Part's case"


def _program_with(function: str, wrong) -> dict:
    namespace = dict(_solution_program())
    namespace[function] = wrong
    return namespace


ONE_WRONG_PER_FUNCTION = {part.function: WRONG[(PS, part.grade_id)][0] for part in HIDDEN_PARTS}


@pytest.mark.parametrize("function", sorted(ONE_WRONG_PER_FUNCTION))
def test_one_bug_costs_one_part(function):
    """Replace one function by a wrong one: its own visible cell and Parts fail, every other cell and Part
    keeps full marks (tests call only the function they grade)."""
    namespace = _program_with(function, ONE_WRONG_PER_FUNCTION[function])
    nb = _notebook()
    for cell in _visible_cells(nb):
        part = get_part(PS, _meta(cell)["grade_id"])
        run = functools.partial(exec, compile(cell.source, part.grade_id, "exec"), dict(namespace))
        if part.function == function:
            with pytest.raises(Exception):
                with contextlib.redirect_stdout(_Quiet()):
                    run()
        else:
            with contextlib.redirect_stdout(_Quiet()):
                run()
    for part in ALL_PARTS:
        if part.function == function:
            with pytest.raises(GradingError):
                part.check(namespace[part.function])
        else:
            assert part.check(namespace[part.function]) > 0


def test_visible_tests_fail_on_the_release():
    release = _notebook("exercises")
    namespace = _run_cells(release, _is_program, tolerate=True)
    visible_ids = {p.grade_id for p in VISIBLE_PARTS}
    visible = [c for c in release.cells if _meta(c).get("grade_id") in visible_ids]
    assert len(visible) == 6
    for cell in visible:
        with pytest.raises((NotImplementedError, GradingError), match="not implemented|^$"):
            exec(compile(cell.source, _meta(cell)["grade_id"], "exec"), copy.copy(namespace))


LEAKS = ["### BEGIN SOLUTION", "### END SOLUTION", "BEGIN HIDDEN TESTS", "check_part", "Rubric", "Model answer"]


def test_release_leaks_nothing_and_keeps_the_structure():
    source, release = _notebook(), _notebook("exercises")
    text = "\n".join(cell.source for cell in release.cells)
    for leak in LEAKS:
        assert leak not in text, f"the release contains {leak!r}"
    graded_source = {_meta(c)["grade_id"]: _meta(c).get("points") for c in source.cells if _meta(c)}
    graded_release = {_meta(c)["grade_id"]: _meta(c).get("points") for c in release.cells if _meta(c)}
    assert graded_source == graded_release, "the release is stale: run normcourse release"
    assert [c.id for c in source.cells] == [c.id for c in release.cells]
    for cell in release.cells:
        meta = _meta(cell)
        if meta.get("solution") and cell.cell_type == "code":
            assert "raise NotImplementedError()" in cell.source and '"""' in cell.source, \
                "the stub keeps the signature and docstring"
        if meta.get("solution") and cell.cell_type == "markdown":
            assert "YOUR ANSWER HERE" in cell.source


def test_numpy_solutions_do_not_touch_torch():
    """The numpy parts are re-checked where torch does not exist: their solution cells never name it."""
    for cell in _notebook().cells:
        if _meta(cell).get("solution") and cell.cell_type == "code":
            function = re.search(r"def (\w+)\(", cell.source)[1]
            if function in NUMPY_FUNCTIONS:
                body = cell.source.split("### BEGIN SOLUTION")[1]
                assert not re.search(r"\b(torch|nn|F)\.", body), function
    setup = next(c for c in _notebook().cells if _meta(c).get("grade_id") == "setup")
    assert "torch" not in setup.source, "the numpy setup cell runs where torch is forbidden"


def test_demo_model_is_the_notebooks():
    """The visible Parts rebuild the setup cell's demo_model(): the same weights, statistics, modes, input."""
    namespace = _solution_program()
    (ours, x_ours), (theirs, x_theirs) = ps07.demo_model(), namespace["demo_model"]()
    assert _same(ours, theirs) and _same(x_ours, x_theirs)
