"""Hidden-test parts of problem sets 4-6 (Jacobians, optimization, Transformers) and their notebooks.

For every Part: the reference passes; wrong implementations (mistakes the course warns about) fail with
a GradingError naming the case; the promised edge cases are present; the Part's points equal its
notebook cell's. For every notebook: each hidden-test cell is backed by a Part, the solution functions
pass their Parts, the visible tests pass on the solution and fail on the release's stubs, and the
release leaks no solution, hidden test or rubric.

The notebook checks run the notebooks' code cells in this process (no kernel), which takes seconds;
the full nbgrader round trip (autograde gives full marks / zero) is the CI gate's job.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from normcourse.grading.parts import get_part, parts_of  # noqa: E402
from normcourse.reference import jacobians  # noqa: E402
from normcourse.lab.models import layer_groups  # noqa: E402
from normcourse.lab.transformer import residual  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROBLEM_SETS = ("ps04_jacobians", "ps05_optimization", "ps06_transformers")
ALL_PARTS = [p for ps in PROBLEM_SETS for p in parts_of(ps)]
TORCH_SETS = ("ps05_optimization", "ps06_transformers")


def _ids(parts):
    return [f"{p.problem_set}:{p.grade_id}" for p in parts]


def _notebook(problem_set: str, folder: str = "solutions"):
    return nbformat.read(ROOT / folder / problem_set / f"{problem_set}.ipynb", as_version=4)


def _meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


# The reference passing its own parts, and five parts per set, are checked in test_all_parts.py.

# ---------------------------------------------------------------------------------------------------
# Edge cases: each part names the ones that apply to its inputs (a vector has no batch axis, a
# model is not an array that can be non-contiguous). Labels are matched as substrings.

VECTOR_EDGES = ["width 2", "constant input", "magnitude 1e4", "float32"]
MODEL_EDGES = ["a single linear layer", "batch size 2", "constant input", "magnitude 1e4", "float32",
               "evaluation mode"]
STEP_EDGES = MODEL_EDGES + ["[0, 0.1, 0.3]"]
ARRAY_EDGES = ["batch size 1", "constant input", "magnitude 1e4", "float32", "non-contiguous"]
REQUIRED_EDGES = {
    "layer_norm_jacobian_hidden": VECTOR_EDGES + ["width d=1"],
    "rms_norm_jacobian_hidden": VECTOR_EDGES + ["width d=1", "eps=None"],
    "batch_norm_jacobian_hidden": VECTOR_EDGES,
    "layer_norm_jacobian_eigenvalues_hidden": VECTOR_EDGES + ["width d=1"],
    "spectral_norm_hidden": ["constant input", "magnitude 1e4", "float32", "the zero matrix", "rectangular"],
    "gradient_norm_hidden": MODEL_EDGES,
    "internal_covariate_shift_hidden": MODEL_EDGES + ["lr=0"],
    "loss_along_gradient_hidden": STEP_EDGES,
    "gradient_changes_hidden": STEP_EDGES,
    "effective_beta_smoothness_hidden": STEP_EDGES,
    "attention_probabilities_hidden": ["constant input", "magnitude 1e4", "float32", "non-contiguous",
                                       "a single key", "width d = 1"],
    "attention_entropy_hidden": ["one-hot", "magnitude 1e4", "float32", "non-contiguous", "a single key"],
    "residual_block_hidden": ARRAY_EDGES + ["width d = 1", "'pre'", "'post'", "rms_norm"],
    "per_layer_grad_norms_hidden": ["depth 1", "batch size 1", "sequence length 1", "float32", "pre-rms_norm",
                                    "post-layer_norm"],
    "layer_norm_fixed_hidden": ARRAY_EDGES + ["width 1", "as an int", "NCHW"],
}


def test_every_part_lists_its_edge_cases():
    assert {p.grade_id for p in ALL_PARTS} == set(REQUIRED_EDGES)


@pytest.mark.parametrize("part", ALL_PARTS, ids=_ids(ALL_PARTS))
def test_cases_cover_edge_cases(part):
    labels = " | ".join(case.label for case in part.make_cases())
    for edge in REQUIRED_EDGES[part.grade_id]:
        assert edge in labels, f"{part.grade_id}: no {edge!r} case among: {labels}"


def test_edge_cases_really_are_edge_cases():
    """The labels do not lie (spot checks on the inputs behind them)."""
    cases = {c.label: c for c in get_part("ps04_jacobians", "layer_norm_jacobian_hidden").make_cases()}
    assert cases["width d=1"].args[0].shape == (1,)
    assert np.ptp(cases["constant input (zero variance)"].args[0]) == 0
    assert np.abs(cases["magnitude 1e4"].args[0]).max() > 1e3
    assert cases["float32 input"].args[0].dtype == np.float32
    model_cases = {c.label: c for c in get_part("ps05_optimization", "gradient_norm_hidden").make_cases()}
    x = model_cases["constant input (8 identical samples), LayerNorm network"].args[2][0]
    assert torch.equal(x, x[:1].expand_as(x))
    assert not model_cases["BatchNorm network in evaluation mode (running statistics; keep the mode)"].args[0].training
    assert model_cases["float32 model and inputs, LayerNorm network"].args[2][0].dtype == torch.float32
    blocks = {c.label.split(",")[0]: c for c in get_part("ps06_transformers", "residual_block_hidden").make_cases()}
    assert not blocks["non-contiguous input (axes stored in reverse order)"].args[0].flags.c_contiguous


# ---------------------------------------------------------------------------------------------------
# Wrong implementations: each must fail, naming a case.

def _ln_jacobian_no_xhat_term(x, weight=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    d = x.size
    J = (np.eye(d) - 1.0 / d) / np.sqrt(x.var() + eps)
    return J * np.asarray(weight, dtype=np.float64)[:, None] if weight is not None else J


def _ln_jacobian_gain_on_columns(x, weight=None, eps=1e-5):
    J = jacobians.layer_norm_jacobian(x, None, eps)
    return J * np.asarray(weight, dtype=np.float64)[None, :] if weight is not None else J


def _rms_jacobian_float64_eps(x, weight=None, eps=None):
    """Machine epsilon of float64 even for float32 input (the contract says: of the input dtype)."""
    return jacobians.rms_norm_jacobian(np.asarray(x, dtype=np.float64), weight, eps)


def _rms_jacobian_centered(x, weight=None, eps=None):
    eps = np.finfo(np.asarray(x).dtype).eps if eps is None else eps
    return jacobians.layer_norm_jacobian(x, weight, eps)


def _bn_jacobian_uncoupled(x, weight=None, eps=1e-5):
    """The evaluation-mode answer: no coupling between samples."""
    x = np.asarray(x, dtype=np.float64)
    return (1.0 if weight is None else float(weight)) * np.eye(x.size) / np.sqrt(x.var() + eps)


def _bn_jacobian_unbiased(x, weight=None, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    m = x.size
    s = np.sqrt(x.var(ddof=1) + eps)
    x_hat = (x - x.mean()) / s
    return (1.0 if weight is None else float(weight)) * (np.eye(m) - 1.0 / m - np.outer(x_hat, x_hat) / m) / s


def _spectral_norm_frobenius(J):
    return float(np.linalg.norm(np.asarray(J, dtype=np.float64)))


def _spectral_norm_largest_eigenvalue(J):
    return float(np.abs(np.linalg.eigvals(np.asarray(J, dtype=np.float64))).max())


def _eigen_without_xhat_direction(x, eps=1e-5):
    x = np.asarray(x, dtype=np.float64)
    return np.sort(np.concatenate([[0.0], np.full(x.size - 1, 1 / np.sqrt(x.var() + eps))]))


def _eigen_descending(x, eps=1e-5):
    return jacobians.layer_norm_jacobian_eigen(x, eps)[::-1].copy()


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def _gradient_norm_weights_only(model, loss_fn, batch):
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    grads = torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), weights, allow_unused=True)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))


def _gradient_norm_squared(model, loss_fn, batch):
    grads = torch.autograd.grad(loss_fn(model(batch[0]), batch[1]), _trainable(model), allow_unused=True)
    return float(sum((g.double() ** 2).sum() for g in grads if g is not None))


def _ics_previous_layer_only(model, loss_fn, batch, lr):
    """Only layer i-1 steps before G_i' is taken (Definition 2.1 steps all of layers 1..i-1)."""
    groups = [ps for _, ps in layer_groups(model)]
    x, y = batch
    grads = [torch.autograd.grad(loss_fn(model(x), y), ps, allow_unused=True) for ps in groups]
    l2, cosine = [], []
    for i, ps in enumerate(groups):
        saved = [p.detach().clone() for p in groups[i - 1]] if i else []
        with torch.no_grad():
            for p, g in zip(groups[i - 1] if i else [], grads[i - 1] if i else []):
                p.sub_(lr * g)
        shifted = torch.autograd.grad(loss_fn(model(x), y), ps, allow_unused=True)
        with torch.no_grad():
            for p, s in zip(groups[i - 1] if i else [], saved):
                p.copy_(s)
        g0 = torch.cat([g.reshape(-1).double() for g in grads[i]])
        g1 = torch.cat([g.reshape(-1).double() for g in shifted])
        l2.append(float((g0 - g1).norm()))
        cosine.append(float(g0 @ g1 / (g0.norm() * g1.norm())))
    return np.array(l2), np.array(cosine)


def _probe(model, loss_fn, batch, step_sizes, sign=1.0):
    x, y = batch
    params = _trainable(model)
    start = [p.detach().clone() for p in params]
    grads = torch.autograd.grad(loss_fn(model(x), y), params)
    g0 = torch.cat([g.reshape(-1).double() for g in grads])
    losses, changes = [], []
    for eta in np.asarray(step_sizes, dtype=float).reshape(-1):
        with torch.no_grad():
            for p, p0, g in zip(params, start, grads):
                p.copy_(p0 - sign * float(eta) * g)
        loss = loss_fn(model(x), y)
        g1 = torch.cat([g.reshape(-1).double() for g in torch.autograd.grad(loss, params)])
        losses.append(float(loss.detach()))
        changes.append(float((g0 - g1).norm()))
    return np.array(losses), np.array(changes), float(g0.norm())


def _losses_uphill(model, loss_fn, batch, step_sizes):
    return _probe(model, loss_fn, batch, step_sizes, sign=-1.0)[0]


def _changes_relative(model, loss_fn, batch, step_sizes):
    _, changes, g_norm = _probe(model, loss_fn, batch, step_sizes)
    return changes / g_norm


def _beta_per_unit_eta(model, loss_fn, batch, step_sizes):
    steps = np.asarray(step_sizes, dtype=float)
    _, changes, _ = _probe(model, loss_fn, batch, steps)
    return float(np.max(changes[steps > 0] / steps[steps > 0]))


def _attention_unscaled(q, k):
    logits = np.asarray(q, float) @ np.swapaxes(np.asarray(k, float), -1, -2)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _attention_naive_exp(q, k):
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.exp(np.asarray(q, float) @ np.swapaxes(np.asarray(k, float), -1, -2) / np.sqrt(np.shape(q)[-1]))
        return z / z.sum(-1, keepdims=True)


def _attention_over_queries(q, k):
    logits = np.asarray(q, float) @ np.swapaxes(np.asarray(k, float), -1, -2) / np.sqrt(np.shape(q)[-1])
    z = np.exp(logits - logits.max(-2, keepdims=True))
    return z / z.sum(-2, keepdims=True)


def _entropy_bits_direct(probs):
    p = np.asarray(probs, dtype=np.float64)
    return -np.sum(p * np.log2(np.where(p > 0, p, 1.0)), axis=-1)


def _entropy_nan_at_zero(probs):
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(p * np.log(p), axis=-1)


def _residual_swapped(x, sublayer, norm, placement):
    return residual(x, sublayer, norm, {"pre": "post", "post": "pre"}[placement])


def _residual_pre_without_skip(x, sublayer, norm, placement):
    return sublayer(norm(x)) if placement == "pre" else norm(x + sublayer(x))


def _grad_norms_summed_loss(model, tokens, targets):
    weights = [block.ffn.fc2.weight for block in model.blocks]
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             reduction="sum")
    return np.array([g.norm().item() for g in torch.autograd.grad(loss, weights)])


def _grad_norms_first_ffn_weight(model, tokens, targets):
    weights = [block.ffn.fc1.weight for block in model.blocks]
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return np.array([g.norm().item() for g in torch.autograd.grad(loss, weights)])


def _buggy_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """The notebook's buggy_layer_norm (leading axes, unbiased std, eps outside, no int shape)."""
    threads = torch.get_num_threads()
    namespace = _run_cells(_notebook("ps06_transformers"),
                           lambda m: m.get("grade_id") in ("setup", "buggy_layer_norm"))
    torch.set_num_threads(threads)
    with np.errstate(divide="ignore", invalid="ignore"):
        return namespace["buggy_layer_norm"](x, normalized_shape, weight, bias, eps)


def _layer_norm_with(ddof=0, eps_outside=False):
    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        x = np.asarray(x)
        n = 1 if np.isscalar(normalized_shape) else len(normalized_shape)
        axes = tuple(range(x.ndim - n, x.ndim))
        x64 = x.astype(np.float64)
        centered = x64 - x64.mean(axes, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):  # ddof=1 over one element divides by 0
            var = x64.var(axes, ddof=ddof, keepdims=True)
            y = centered / (np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps))
        y = y * weight if weight is not None else y
        y = y + bias if bias is not None else y
        return y.astype(x.dtype)
    layer_norm.__name__ = f"layer_norm_ddof{ddof}_eps_outside{eps_outside}"
    return layer_norm


WRONG = {
    ("ps04_jacobians", "layer_norm_jacobian_hidden"): [_ln_jacobian_no_xhat_term, _ln_jacobian_gain_on_columns],
    ("ps04_jacobians", "rms_norm_jacobian_hidden"): [_rms_jacobian_float64_eps, _rms_jacobian_centered],
    ("ps04_jacobians", "batch_norm_jacobian_hidden"): [_bn_jacobian_uncoupled, _bn_jacobian_unbiased],
    ("ps04_jacobians", "spectral_norm_hidden"): [_spectral_norm_frobenius, _spectral_norm_largest_eigenvalue],
    ("ps04_jacobians", "layer_norm_jacobian_eigenvalues_hidden"): [_eigen_without_xhat_direction,
                                                                   _eigen_descending],
    ("ps05_optimization", "gradient_norm_hidden"): [_gradient_norm_weights_only, _gradient_norm_squared],
    ("ps05_optimization", "internal_covariate_shift_hidden"): [_ics_previous_layer_only],
    ("ps05_optimization", "loss_along_gradient_hidden"): [_losses_uphill],
    ("ps05_optimization", "gradient_changes_hidden"): [_changes_relative],
    ("ps05_optimization", "effective_beta_smoothness_hidden"): [_beta_per_unit_eta],
    ("ps06_transformers", "attention_probabilities_hidden"): [_attention_unscaled, _attention_naive_exp,
                                                              _attention_over_queries],
    ("ps06_transformers", "attention_entropy_hidden"): [_entropy_bits_direct, _entropy_nan_at_zero],
    ("ps06_transformers", "residual_block_hidden"): [_residual_swapped, _residual_pre_without_skip],
    ("ps06_transformers", "per_layer_grad_norms_hidden"): [_grad_norms_summed_loss, _grad_norms_first_ffn_weight],
    ("ps06_transformers", "layer_norm_fixed_hidden"): [_buggy_layer_norm, _layer_norm_with(ddof=1),
                                                       _layer_norm_with(eps_outside=True)],
}
# These wrong implementations (and case reproducibility) are checked in test_all_parts.py, for all six sets at once.


# ---------------------------------------------------------------------------------------------------
# Results must not depend on the number of torch threads: the out-of-kernel re-check runs in
# another process, possibly with another thread count than the learner's kernel.

TORCH_PARTS = [p for ps in TORCH_SETS for p in parts_of(ps)]


@pytest.mark.parametrize("part", TORCH_PARTS, ids=_ids(TORCH_PARTS))
def test_results_do_not_depend_on_the_thread_count(part):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = [part.expected(case) for case in part.make_cases()]
        torch.set_num_threads(2)
        for case, expected in zip(part.make_cases(), single):
            part.judge(expected, case)  # the one-thread result must pass against the two-thread reference
    finally:
        torch.set_num_threads(before)


def test_attention_oracle_matches_the_formula():
    """The ps06 attention reference (torch.softmax in float64) against a numpy transcription."""
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))
    logits = q @ k.transpose(0, 2, 1) / 2.0
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    from normcourse.problems.ps06_transformers import attention_probabilities_reference
    np.testing.assert_allclose(attention_probabilities_reference(q, k), expected, rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------------------------------------------
# Notebooks: metadata agrees with the Parts, solutions pass, visible tests bite, the release is clean.

HIDDEN_CALL = re.compile(r"""check_part\(["'](?P<ps>\w+)["'], ["'](?P<gid>\w+)["'], (?P<fn>\w+)\)""")


@pytest.mark.parametrize("problem_set", PROBLEM_SETS)
def test_hidden_cells_and_parts_agree(problem_set):
    nb = _notebook(problem_set)
    hidden = {}
    for cell in nb.cells:
        meta = _meta(cell)
        if "### BEGIN HIDDEN TESTS" in cell.source:
            assert meta.get("grade") and meta.get("locked") and not meta.get("solution"), meta
            match = HIDDEN_CALL.search(cell.source)
            assert match and match["ps"] == problem_set and match["gid"] == meta["grade_id"], cell.source
            hidden[meta["grade_id"]] = (match["fn"], meta["points"])
    parts = {p.grade_id: p for p in parts_of(problem_set)}
    assert set(hidden) == set(parts)
    for grade_id, (function, points) in hidden.items():
        assert parts[grade_id].function == function
        assert parts[grade_id].points == points, f"{grade_id}: Part has {parts[grade_id].points} points, cell {points}"


@pytest.mark.parametrize("problem_set", PROBLEM_SETS)
def test_notebook_metadata_follows_the_conventions(problem_set):
    nb = _notebook(problem_set)
    ids = [_meta(c)["grade_id"] for c in nb.cells if _meta(c)]
    assert len(ids) == len(set(ids)), "grade_ids must be unique"
    kinds = {"solution_code": 0, "autograded": 0, "written": 0}
    for cell in nb.cells:
        meta = _meta(cell)
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
    assert kinds["autograded"] >= 10 and kinds["written"] >= 1 and kinds["solution_code"] >= 5, kinds


class _Quiet:
    def write(self, *_):
        pass

    def flush(self):
        pass


def _run_cells(nb, select, namespace=None, quiet=True):
    """Execute the code cells whose nbgrader metadata satisfies ``select``, in order, in one namespace."""
    import contextlib

    namespace = {"__name__": "__main__"} if namespace is None else namespace
    for cell in nb.cells:
        if cell.cell_type == "code" and select(_meta(cell)):
            with contextlib.redirect_stdout(_Quiet()) if quiet else contextlib.nullcontext():
                exec(compile(cell.source, f"<{_meta(cell).get('grade_id')}>", "exec"), namespace)
    return namespace


def _is_program(meta):
    """Setup, read-only and solution cells: the learner's program without the tests."""
    return bool(meta) and not meta.get("grade")


@pytest.fixture(scope="module", params=PROBLEM_SETS)
def solved(request):
    threads = torch.get_num_threads()
    namespace = _run_cells(_notebook(request.param), _is_program)
    torch.set_num_threads(threads)  # the notebooks' setup cells pin one thread
    return request.param, namespace


def test_solution_functions_pass_their_parts(solved):
    problem_set, namespace = solved
    for part in parts_of(problem_set):
        assert part.check(namespace[part.function]) > 0


def test_visible_tests_pass_on_the_solution(solved):
    problem_set, namespace = solved
    nb = _notebook(problem_set)
    visible = [c for c in nb.cells if _meta(c).get("grade") and c.cell_type == "code"
               and "BEGIN HIDDEN TESTS" not in c.source]
    assert len(visible) >= 5
    _run_cells(nb, lambda m: m.get("grade") and m.get("grade_id") in {_meta(c)["grade_id"] for c in visible},
               namespace=dict(namespace))


@pytest.mark.parametrize("problem_set", PROBLEM_SETS)
def test_visible_tests_fail_on_the_release(problem_set):
    release = _notebook(problem_set, "exercises")
    namespace = _run_cells(release, _is_program)
    visible_ids = {_meta(c)["grade_id"] for c in _notebook(problem_set).cells
                   if _meta(c).get("grade") and c.cell_type == "code" and "BEGIN HIDDEN TESTS" not in c.source}
    visible = [c for c in release.cells if _meta(c).get("grade_id") in visible_ids]
    assert len(visible) >= 5
    for cell in visible:
        with pytest.raises(NotImplementedError):
            exec(compile(cell.source, _meta(cell)["grade_id"], "exec"), copy.copy(namespace))


LEAKS = ["### BEGIN SOLUTION", "### END SOLUTION", "BEGIN HIDDEN TESTS", "check_part", "Rubric", "Model answer"]


@pytest.mark.parametrize("problem_set", PROBLEM_SETS)
def test_release_leaks_nothing_and_keeps_the_structure(problem_set):
    source, release = _notebook(problem_set), _notebook(problem_set, "exercises")
    text = "\n".join(cell.source for cell in release.cells)
    for leak in LEAKS:
        assert leak not in text, f"the release of {problem_set} contains {leak!r}"
    graded_source = {_meta(c)["grade_id"]: _meta(c).get("points") for c in source.cells if _meta(c)}
    graded_release = {_meta(c)["grade_id"]: _meta(c).get("points") for c in release.cells if _meta(c)}
    assert graded_source == graded_release, "the release is stale: run nbgrader generate_assignment --force"
    for cell in release.cells:
        meta = _meta(cell)
        if meta.get("solution") and cell.cell_type == "code":
            assert "raise NotImplementedError()" in cell.source and '"""' in cell.source, \
                "the stub keeps the signature and docstring"
        if meta.get("solution") and cell.cell_type == "markdown":
            assert "YOUR ANSWER HERE" in cell.source
