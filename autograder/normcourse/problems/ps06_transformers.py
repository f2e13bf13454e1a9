"""Problem set 6, normalization in Transformers: the autograded parts (visible, hidden and the experiment).

- ``attention_probabilities`` (numpy): softmax of scaled dot products; the oracle is PyTorch's own
  ``torch.softmax`` in float64 (the course's outside oracle), since the reference package only
  computes attention inside :class:`normcourse.lab.transformer.MultiHeadSelfAttention`.
- ``attention_entropy`` (numpy): :func:`normcourse.reference.attention.attention_entropy`. The hidden
  cases include rows of many tiny probabilities (1e-9, 1e-15) and values near the smallest float64,
  compared at a relative tolerance with no absolute floor, so that an epsilon fudge such as
  ``p * log(p + 1e-12)`` or ``log(clip(p, 1e-12))`` fails where it changes the entropy.
- ``residual_block`` (numpy, visible test only: two lines of code, one point):
  :func:`normcourse.lab.transformer.residual`, Post-LN versus Pre-LN, on numpy arrays with numpy
  callables (``np.tanh``, a linear map as ``functools.partial(np.tensordot, ...)``); any other
  placement must raise ``ValueError``, as the docstring promises (a :class:`Case` with ``raises``).
- ``per_layer_grad_norms`` (torch): :func:`normcourse.lab.placements.per_layer_grad_norms`; every case
  checks that the model is left as found (``.grad`` unset, parameters, modes), some call it twice.
- ``layer_norm`` (numpy, the find-the-bug exercise): :func:`normcourse.reference.layer_norm`, on the
  course's shared edge cases (:func:`normcourse.grading.cases.edge_cases`).
- ``attention_saturation`` (numpy, the experiment): no reference; :func:`saturation_properties` checks
  the learner's entropies for what chapter 6 predicts (see there).

Case arguments hold only numpy arrays, numpy functions, torch objects and the provided
:mod:`normcourse.lab.transformer`: the re-check process that calls learner code cannot import the rest
of the course (this module included). The numpy parts are graded without torch (``NO_TORCH``).

No warnings: the notebook's setup cell turns every ``RuntimeWarning`` (numpy's "divide by zero", "invalid
value", "overflow") into an error, so a function that warns fails its tests both in the learner's kernel
and in the grader's re-check, which runs the same setup cell (the rule is the notebook's own: the Parts
here compare values).

Tolerances: numpy parts use the course defaults (1e-10 in float64, 1e-4 in float32, see
:func:`normcourse.grading.compare.tolerance_for`), except float32 attention input, where 1e-6 suffices
because the result is float64 (only the input was rounded), and the entropy cases above. Torch parts run
float64 models, where a learner's result differs from the reference only by operation order: 1e-8
relative, 1e-10 absolute; the float32 model is compared at 1e-4.

Thread counts: every case here gives the same result with one or two torch threads (checked by the
tests). Cases whose value is rounding noise amplified (for example a BatchNorm network in training
mode fed identical samples) are left out, because the re-check runs in a different process.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

from normcourse.grading.cases import edge_cases, random_affine, random_eps, random_input, random_shape
from normcourse.grading.compare import GradingError
from normcourse.grading.parts import Case, Part, register
from normcourse.grading.rules import NO_TORCH
from normcourse.lab.placements import per_layer_grad_norms
from normcourse.lab.transformer import TinyTransformer, residual
from normcourse.reference import layer_norm as reference_layer_norm
from normcourse.reference.attention import attention_entropy

PROBLEM_SET = "ps06_transformers"
TORCH_RTOL, TORCH_ATOL = 1e-8, 1e-10
FLOAT32_TORCH_TOL = {"rtol": 1e-4, "atol": 1e-5}


# ---------------------------------------------------------------- attention probabilities
def attention_probabilities_reference(q, k):
    r"""``softmax(q k^T / sqrt(d))`` over the last axis, by ``torch.softmax`` in float64."""
    q64 = torch.from_numpy(np.asarray(q, dtype=np.float64))
    k64 = torch.from_numpy(np.asarray(k, dtype=np.float64))
    return torch.softmax(q64 @ k64.transpose(-2, -1) / math.sqrt(q64.shape[-1]), dim=-1).numpy()


def visible_attention_probabilities_cases(_rng=None) -> list[Case]:
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 3, 5, 8)), rng.normal(size=(2, 3, 7, 8))
    return [Case("visible test: q (2, 3, 5, 8), k (2, 3, 7, 8)", (q, k)),
            Case("visible test: 100 * q[0, 0], 100 * k[0, 0] (logits of magnitude 1e4)", (100 * q[0, 0], 100 * k[0, 0]))]


def attention_probabilities_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for _ in range(3):
        b, h, s_q, s_k, d = (int(v) for v in rng.integers(1, 6, size=5))
        q, k = rng.normal(size=(b, h, s_q, d + 1)), rng.normal(size=(b, h, s_k, d + 1))
        cases.append(Case(f"random q {q.shape}, k {k.shape}", (q, k)))
    cases.append(Case("no leading axes: q (4, 8), k (6, 8)", (rng.normal(size=(4, 8)), rng.normal(size=(6, 8)))))
    cases.append(Case("a single key (S_k = 1): every probability is 1",
                      (rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 1, 4)))))
    cases.append(Case("width d = 1", (rng.normal(size=(3, 5, 1)), rng.normal(size=(3, 5, 1)))))
    cases.append(Case("constant input (all queries and keys equal): uniform rows",
                      (np.full((2, 4, 6), 0.7), np.full((2, 5, 6), 0.7))))
    cases.append(Case("magnitude 1e4 logits (exp overflows unless you subtract the row maximum)",
                      (1e2 * rng.normal(size=(2, 5, 4)), 1e2 * rng.normal(size=(2, 5, 4)))))
    cases.append(Case("float32 input (return float64)",
                      (rng.normal(size=(2, 4, 8)).astype(np.float32), rng.normal(size=(2, 4, 8)).astype(np.float32)),
                      rtol=1e-6, atol=1e-9))
    q = np.transpose(np.ascontiguousarray(np.transpose(rng.normal(size=(2, 3, 5)))))
    cases.append(Case("non-contiguous q", (q, rng.normal(size=(2, 4, 5)))))
    return cases


# ---------------------------------------------------------------- attention entropy
def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def visible_attention_entropy_cases(_rng=None) -> list[Case]:
    """The visible cell's calls, at the cell's own tolerances (exact zeros are exact)."""
    logits = np.linspace(-2.0, 2.0, 35).reshape(5, 7) ** 2
    return [Case("visible test: one-hot rows np.eye(4)", (np.eye(4),), rtol=0.0, atol=0.0),
            Case("visible test: two keys of 0.5 and two exact zeros", (np.array([[0.5, 0.5, 0.0, 0.0]]),),
                 rtol=0.0, atol=1e-15),
            Case("visible test: uniform rows over 6 keys", (np.full((3, 6), 1 / 6),), rtol=0.0, atol=1e-12),
            Case("visible test: softmax rows of fixed logits (5, 7)", (_softmax(logits),), rtol=1e-12, atol=0.0)]


def _tiny_row(rng: np.random.Generator, tiny: float, count: int) -> np.ndarray:
    """One row: ``count`` probabilities of about ``tiny`` (within a factor 2) and one holding the rest."""
    small = tiny * rng.uniform(0.5, 2.0, size=count)
    return np.concatenate([[1.0 - small.sum()], small])[rng.permutation(count + 1)]


def attention_entropy_cases(rng: np.random.Generator) -> list[Case]:
    # Entropies of 0, 7e-303 or 1e-11 to 1e-5 are compared relatively. Exact rows (one-hot, a single key,
    # the 1e-305 row, whose sums are exactly 1.0) have no absolute floor: a correct -sum p log p is accurate
    # to a few ulps of each term there. Rows of 1000 tiny values keep an absolute floor of 1e-15: their
    # entropy moves by about 1e-16 per ulp of the large value (dH/dp = -(log p + 1), about -1), and a
    # learner may legitimately renormalize the row first, which can move that value by an ulp. Epsilon
    # fudges change these entropies by far more: log(p + 1e-12) by 1e-9 (row of 1e-9) and 7e-12 (row of
    # 1e-15), clip(p, 1e-12, 1) by 7e-12, log(p + 1e-300) or clip at 1e-300 by 2 % of the 1e-305 row's
    # (1e-305 is still a normal float64, so p log p keeps full relative precision there).
    exact = {"rtol": 1e-10, "atol": 0.0}
    tiny_rows = {"rtol": 1e-10, "atol": 1e-15}
    cases = []
    for _ in range(3):
        shape = tuple(int(v) for v in rng.integers(1, 5, size=3)) + (int(rng.integers(2, 9)),)
        cases.append(Case(f"random softmax rows of shape {shape}", (_softmax(rng.normal(size=shape) * 2),)))
    cases.append(Case("uniform rows (entropy log S)", (np.full((3, 7), 1 / 7),)))
    cases.append(Case("one-hot rows (0 log 0 counts as 0: entropy exactly 0)", (np.eye(5)[rng.permutation(5)],),
                      **exact))
    cases.append(Case("a single key (S = 1): entropy 0", (np.ones((4, 1)),), **exact))
    cases.append(Case("one row, no leading axes", (_softmax(rng.normal(size=6)),)))
    saturated = _softmax(1e4 * rng.normal(size=(3, 6)) / np.sqrt(6))
    cases.append(Case("magnitude 1e4 logits: saturated rows with exact zeros and tiny values", (saturated,)))
    cases.append(Case("1000 probabilities of about 1e-9 and one holding the rest (entropy about 2e-5)",
                      (np.stack([_tiny_row(rng, 1e-9, 1000) for _ in range(2)]),), **tiny_rows))
    cases.append(Case("1000 probabilities of about 1e-15 and one holding the rest (entropy about 4e-11)",
                      (np.stack([_tiny_row(rng, 1e-15, 1000) for _ in range(2)]),), **tiny_rows))
    tiny = np.array([[1.0 - 1e-305, 1e-305, 0.0], [0.5, 0.5 - 1e-200, 1e-200]])
    cases.append(Case("rows holding values near the smallest float64 (1e-305, 1e-200) and an exact zero", (tiny,),
                      **exact))
    cases.append(Case("float32 probabilities (return float64)",
                      (_softmax(rng.normal(size=(2, 3, 5))).astype(np.float32),), rtol=1e-6, atol=1e-6))
    probs = np.transpose(np.ascontiguousarray(np.transpose(_softmax(rng.normal(size=(3, 4, 5))))))
    cases.append(Case("non-contiguous probabilities", (probs,)))
    return cases


# ---------------------------------------------------------------- residual block (visible test only)
def visible_residual_block_cases(_rng=None) -> list[Case]:
    rng = np.random.default_rng(1)
    x = 3 * rng.normal(size=(2, 5, 8)) + 1
    linear = partial(np.tensordot, b=rng.normal(size=(8, 8)) / np.sqrt(8), axes=1)  # x -> x @ W
    return [Case("visible test: placement 'pre', sublayer x @ W, norm np.tanh", (x, linear, np.tanh, "pre")),
            Case("visible test: placement 'post', sublayer x @ W, norm np.tanh", (x, linear, np.tanh, "post")),
            Case("visible test: placement 'pre', sublayer np.sin, norm np.tanh, float32 x",
                 (x.astype(np.float32), np.sin, np.tanh, "pre")),
            Case("visible test: placement 'middle' (not a placement) raises ValueError",
                 (x, linear, np.tanh, "middle"), raises=ValueError)]


# ---------------------------------------------------------------- per-layer gradient norms
def _transformer(rng, *, depth, placement, norm="layer_norm", d_model=16, n_heads=2, vocab=11, seq_len=8,
                 init="xavier", causal=False, dtype=torch.float64) -> TinyTransformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2 ** 31)))
        model = TinyTransformer(vocab=vocab, d_model=d_model, n_heads=n_heads, depth=depth, seq_len=seq_len,
                                placement=placement, init=init, norm=norm, causal=causal)
    return model.to(dtype)


def _tokens(rng, batch, seq, vocab=11):
    return (torch.from_numpy(rng.integers(0, vocab, size=(batch, seq))),
            torch.from_numpy(rng.integers(0, vocab, size=(batch, seq))))


def demo_transformer(placement: str = "post", depth: int = 3):
    """The setup cell's ``demo_transformer()``: a float64 TinyTransformer built from seed 0 and a batch
    of 4 random sequences of 8 tokens with random targets."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyTransformer(vocab=20, d_model=16, n_heads=2, depth=depth, seq_len=8,
                                placement=placement).double()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 20, (4, 8), generator=generator)
    targets = torch.randint(0, 20, (4, 8), generator=generator)
    return model, tokens, targets


def visible_per_layer_grad_norms_cases(_rng=None) -> list[Case]:
    return [Case("visible test: the demo Post-LN TinyTransformer of depth 3, called twice on the same model",
                 demo_transformer(), state_of=(0,), repeat=2)]


def per_layer_grad_norms_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for placement, norm in [("post", "layer_norm"), ("pre", "layer_norm"), ("pre", "rms_norm")]:
        depth, batch, seq = int(rng.integers(2, 5)), int(rng.integers(2, 4)), int(rng.integers(3, 9))
        model = _transformer(rng, depth=depth, placement=placement, norm=norm)
        twice = placement == "post"
        cases.append(Case(f"{placement}-{norm} TinyTransformer of depth {depth}, batch {batch}, length {seq}"
                          + (", called twice on the same model" if twice else ""),
                          (model, *_tokens(rng, batch, seq)), state_of=(0,), repeat=2 if twice else 1))
    cases.append(Case("depth 1 (one block), Post-LN", (_transformer(rng, depth=1, placement="post"),
                                                       *_tokens(rng, 2, 5)), state_of=(0,)))
    cases.append(Case("batch size 1, Pre-LN, called twice on the same model",
                      (_transformer(rng, depth=2, placement="pre"), *_tokens(rng, 1, 6)), state_of=(0,), repeat=2))
    cases.append(Case("sequence length 1 (attention over one token), Post-LN",
                      (_transformer(rng, depth=2, placement="post"), *_tokens(rng, 3, 1)), state_of=(0,)))
    cases.append(Case("PyTorch's default initialization, causal attention, Pre-LN",
                      (_transformer(rng, depth=3, placement="pre", init="default", causal=True),
                       *_tokens(rng, 2, 6)), state_of=(0,)))
    cases.append(Case("model in evaluation mode (keep the mode), Pre-LN",
                      (_transformer(rng, depth=2, placement="pre").eval(), *_tokens(rng, 2, 5)), state_of=(0,)))
    cases.append(Case("float32 model, Post-LN", (_transformer(rng, depth=2, placement="post", dtype=torch.float32),
                                                 *_tokens(rng, 2, 6)), state_of=(0,), **FLOAT32_TORCH_TOL))
    return cases


# ---------------------------------------------------------------- find the bug: layer_norm
def visible_layer_norm_cases(_rng=None) -> list[Case]:
    rng = np.random.default_rng(3)
    x = rng.normal(loc=1.0, scale=2.0, size=(2, 5, 8))
    weight, bias = rng.normal(size=8), rng.normal(size=8)
    x2 = rng.normal(size=(3, 4, 6))
    return [Case("visible test: x (2, 5, 8), normalized_shape (8,), weight, bias, eps=1e-3",
                 (x, (8,), weight, bias), {"eps": 1e-3}),
            Case("visible test: x (3, 4, 6), normalized_shape (4, 6)", (x2, (4, 6))),
            Case("visible test: x (3, 4, 6), normalized_shape 6 (an int)", (x2, 6)),
            Case("visible test: x (3, 4, 6) as float32, normalized_shape (6,)", (x2.astype(np.float32), (6,)))]


def layer_norm_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for layout, n_normalized in [("BSD", 1), ("NC", 1), ("NCHW", 3), ("NCHW", 2)]:
        x = random_input(rng, random_shape(rng, layout))
        shape = x.shape[x.ndim - n_normalized:]
        weight, bias = random_affine(rng, shape)
        eps = random_eps(rng)
        cases.append(Case(f"random {layout} input {x.shape}, normalized_shape {shape}, eps={eps:.3g}, "
                          f"weight {'given' if weight is not None else 'None'}, "
                          f"bias {'given' if bias is not None else 'None'}", (x, shape, weight, bias, eps)))
    x = random_input(rng, (3, 5))
    cases.append(Case("normalized_shape given as an int (5)", (x, 5)))
    cases.append(Case("width 1: every output is the bias", (random_input(rng, (4, 1)), (1,), None,
                                                             np.array([0.3]))))
    shape = random_shape(rng, "BSD")
    for label, x in edge_cases(rng, shape):
        weight, bias = random_affine(rng, shape[-1:], weight=True, bias=True)
        if x.dtype == np.float32:
            weight, bias = weight.astype(np.float32), bias.astype(np.float32)
        cases.append(Case(label, (x, shape[-1:], weight, bias)))
    return cases


# ---------------------------------------------------------------- the experiment: attention saturation
#: The experiment's fixed call: logits scaled over more than two decades, three seeds, 16 tokens of width 32.
SATURATION_SCALES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
SATURATION_SEEDS = (0, 1, 2)
SATURATION_SEQ_LEN = 16
SWEEPS = ("input", "weight")
VARIANTS = ("none", "pre_ln", "qk_norm")
#: Which curves chapter 6 predicts to collapse (entropy falls toward 0 as the scale grows) and which to
#: stay flat: LN(c x) = LN(x) makes pre_ln immune to the input scale but not to the weights' scale;
#: normalizing q and k makes the logits immune to both.
COLLAPSES = {("input", "none"), ("weight", "none"), ("weight", "pre_ln")}
#: Thresholds, as fractions of log S: uniform-like at the smallest scale (logits of size 0.01), nearly
#: one-hot at the largest (logits of size 900). A flat curve may move by eps effects only: LN(c x) differs
#: from LN(x) by a factor sqrt(var / (var + eps / c^2)), at most 5e-4 here, which moves the entropy by
#: about 1e-3 nats; 0.02 nats leaves room for any LayerNorm eps up to 1e-4.
HIGH, LOW, FLAT = 0.9, 0.1, 0.02


def saturation_cases(_rng=None) -> list[Case]:
    return [Case(f"attention_saturation(scales={SATURATION_SCALES}, seeds={SATURATION_SEEDS})",
                 (SATURATION_SCALES, SATURATION_SEEDS))]


def saturation_properties(actual, expected, *, name, label, rtol=None, atol=None) -> None:
    """What chapter 6 predicts for the entropy of attention rows as the logits grow, on the learner's numbers.

    1. The result is ``{"input": {...}, "weight": {...}}``, each ``{"none", "pre_ln", "qk_norm"}`` of float
       arrays of shape (seeds, scales), finite, between 0 and log S (S = 16 keys).
    2. Curves that collapse (no normalization under both sweeps; LayerNorm before the projections when
       the *weights* grow): the entropy never increases with the scale, is above 0.9 log S at the smallest
       scale and below 0.1 log S at the largest, for every seed.
    3. Curves that stay flat (LayerNorm before the projections when the *input* grows; QK-norm under both
       sweeps): the entropy moves by less than 0.02 nats over the scales, for every seed.
    """
    del expected, rtol, atol  # no reference: properties only
    log_s = math.log(SATURATION_SEQ_LEN)
    shape = (len(SATURATION_SEEDS), len(SATURATION_SCALES))
    if not isinstance(actual, dict) or set(actual) != set(SWEEPS):
        got = sorted(actual) if isinstance(actual, dict) else type(actual).__name__
        raise GradingError(f"{name} for case {label!r}: expected a dict with the keys {list(SWEEPS)}, got {got}")
    for sweep in SWEEPS:
        curves = actual[sweep]
        if not isinstance(curves, dict) or set(curves) != set(VARIANTS):
            got = sorted(curves) if isinstance(curves, dict) else type(curves).__name__
            raise GradingError(f"{name}[{sweep!r}] for case {label!r}: expected a dict with the keys "
                               f"{list(VARIANTS)}, got {got}")
        for variant in VARIANTS:
            where = f"{name}[{sweep!r}][{variant!r}] for case {label!r}"
            h = curves[variant]
            if not isinstance(h, np.ndarray) or h.dtype.kind != "f" or h.shape != shape:
                raise GradingError(f"{where}: expected a float array of shape {shape} (seeds x scales), got "
                                   f"{type(h).__name__} of shape {np.shape(h)}")
            h = h.astype(np.float64)
            if not np.all(np.isfinite(h)):
                index = tuple(int(i) for i in np.argwhere(~np.isfinite(h))[0])
                raise GradingError(f"{where}: non-finite entropy {h[index]} at index {index} (seed, scale)")
            if h.min() < -1e-12 or h.max() > log_s + 1e-9:
                index = tuple(int(i) for i in np.unravel_index(np.argmax(np.maximum(-h, h - log_s)), h.shape))
                raise GradingError(f"{where}: entropy {h[index]:.6g} at index {index} (seed, scale) lies outside "
                                   f"[0, log {SATURATION_SEQ_LEN} = {log_s:.6g}]: the mean row entropy in nats "
                                   f"of attention over {SATURATION_SEQ_LEN} keys")
            for i, seed in enumerate(SATURATION_SEEDS):
                row = h[i]
                scales = ", ".join(f"{c:g}: {v:.4g}" for c, v in zip(SATURATION_SCALES, row))
                if (sweep, variant) in COLLAPSES:
                    rises = np.diff(row) > 1e-9
                    if rises.any() or row[0] < HIGH * log_s or row[-1] > LOW * log_s:
                        raise GradingError(
                            f"{where}: for seed {seed} the entropies by scale are {{{scales}}}; chapter 6 "
                            f"predicts a collapse: never increasing, above {HIGH} log S = {HIGH * log_s:.3g} at "
                            f"scale {SATURATION_SCALES[0]:g} and below {LOW} log S = {LOW * log_s:.3g} at scale "
                            f"{SATURATION_SCALES[-1]:g} (the logits grow like the square of the scale)")
                elif np.ptp(row) >= FLAT:
                    raise GradingError(
                        f"{where}: for seed {seed} the entropies by scale are {{{scales}}}, a spread of "
                        f"{np.ptp(row):.3g} nats; chapter 6 predicts a flat curve (spread below {FLAT}): "
                        f"{'LN(c x) = LN(x)' if variant == 'pre_ln' else 'normalized q and k do not grow'}")


def _numpy_part(grade_id, function, reference, cases, points, seed, description, **extra):
    return Part(PROBLEM_SET, grade_id, function, reference, cases, points=points, seed=seed,
                description=description, forbid=(NO_TORCH,), **extra)


def _torch_part(grade_id, function, reference, cases, points, seed, description):
    return Part(PROBLEM_SET, grade_id, function, reference, cases, points=points, seed=seed, rtol=TORCH_RTOL,
                atol=TORCH_ATOL, description=description)


PARTS = [
    _numpy_part("attention_probabilities", "attention_probabilities", attention_probabilities_reference,
                visible_attention_probabilities_cases, 1, 611, "visible test: the cell's two calls against torch.softmax"),
    _numpy_part("attention_probabilities_hidden", "attention_probabilities", attention_probabilities_reference,
                attention_probabilities_cases, 2, 601, "softmax(q k^T / sqrt(d)) over the keys, numerically stable"),
    _numpy_part("attention_entropy", "attention_entropy", attention_entropy, visible_attention_entropy_cases, 1, 612,
                "visible test: the cell's four calls against the reference"),
    _numpy_part("attention_entropy_hidden", "attention_entropy", attention_entropy, attention_entropy_cases, 2, 602,
                "Shannon entropy of every attention row, with 0 log 0 = 0 and no epsilon fudge"),
    _numpy_part("residual_block", "residual_block", residual, visible_residual_block_cases, 1, 613,
                "Post-LN y = N(x + F(x)) and Pre-LN y = x + F(N(x)) on the visible test's numpy inputs"),
    _torch_part("per_layer_grad_norms", "per_layer_grad_norms", per_layer_grad_norms,
                visible_per_layer_grad_norms_cases, 1, 614, "visible test: the demo model, called twice, left untouched"),
    _torch_part("per_layer_grad_norms_hidden", "per_layer_grad_norms", per_layer_grad_norms,
                per_layer_grad_norms_cases, 2, 604,
                "Frobenius norm of each block's second FFN weight gradient at initialization; the model left untouched"),
    _numpy_part("layer_norm_fixed", "layer_norm", reference_layer_norm, visible_layer_norm_cases, 1, 615,
                "visible test: the cell's four calls against the reference"),
    _numpy_part("layer_norm_fixed_hidden", "layer_norm", reference_layer_norm, layer_norm_cases, 1, 605,
                "the fixed LayerNorm against the reference, edge cases included"),
    _numpy_part("attention_saturation", "attention_saturation", None, saturation_cases, 2, 616,
                "experiment: mean attention entropy as the logits grow, without normalization, with LayerNorm "
                "before the projections and with QK-norm (properties chapter 6 predicts; no reference)",
                compare=saturation_properties),
]

register(PARTS, provides=("normcourse.lab.transformer",))
