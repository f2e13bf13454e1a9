"""Problem set 6, normalization in Transformers: the hidden-test parts.

- ``attention_probabilities`` (numpy): softmax of scaled dot products; the oracle is PyTorch's own
  ``torch.softmax`` in float64 (the course's outside oracle), since the reference package only
  computes attention inside :class:`normcourse.lab.transformer.MultiHeadSelfAttention`.
- ``attention_entropy`` (numpy): :func:`normcourse.reference.attention.attention_entropy`.
- ``residual_block``: :func:`normcourse.lab.transformer.residual`, Post-LN versus Pre-LN. It is generic (only
  ``+`` and calls); the hidden cases use numpy arrays, a numpy FFN and the reference LayerNorm/RMSNorm,
  because the out-of-kernel re-check ships results as numpy arrays only.
- ``per_layer_grad_norms`` (torch): :func:`normcourse.lab.placements.per_layer_grad_norms`.
- ``layer_norm`` (numpy, the find-the-bug exercise): :func:`normcourse.reference.layer_norm`, on the
  course's shared edge cases (:func:`normcourse.grading.cases.edge_cases`).

Tolerances: numpy parts (residual_block included) use the course defaults (1e-10 in float64, 1e-4 in float32, see
:func:`normcourse.grading.compare.tolerance_for`), except float32 attention input, where 1e-6 suffices
because the result is float64 (only the input was rounded). Torch parts run float64 models, where a
learner's result differs from the reference only by operation order: 1e-8 relative, 1e-10 absolute;
the float32 model is compared at 1e-4.

Thread counts: every case here gives the same result with one or two torch threads (checked by the
tests). Cases whose value is rounding noise amplified (for example a BatchNorm network in training
mode fed identical samples) are left out, because the re-check runs in a different process.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

from normcourse.reference import layer_norm as reference_layer_norm
from normcourse.lab.placements import per_layer_grad_norms
from normcourse.reference.attention import attention_entropy
from normcourse.lab.transformer import TinyTransformer, residual
from normcourse.grading.cases import edge_cases, random_affine, random_eps, random_input, random_shape
from normcourse.grading.parts import Case, Part, register

PROBLEM_SET = "ps06_transformers"
TORCH_RTOL, TORCH_ATOL = 1e-8, 1e-10
FLOAT32_TORCH_TOL = {"rtol": 1e-4, "atol": 1e-5}


# ---------------------------------------------------------------- attention probabilities
def attention_probabilities_reference(q, k):
    r"""``softmax(q k^T / sqrt(d))`` over the last axis, by ``torch.softmax`` in float64."""
    q64 = torch.from_numpy(np.asarray(q, dtype=np.float64))
    k64 = torch.from_numpy(np.asarray(k, dtype=np.float64))
    return torch.softmax(q64 @ k64.transpose(-2, -1) / math.sqrt(q64.shape[-1]), dim=-1).numpy()


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


def attention_entropy_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for _ in range(3):
        shape = tuple(int(v) for v in rng.integers(1, 5, size=3)) + (int(rng.integers(2, 9)),)
        cases.append(Case(f"random softmax rows of shape {shape}", (_softmax(rng.normal(size=shape) * 2),)))
    cases.append(Case("uniform rows (entropy log S)", (np.full((3, 7), 1 / 7),)))
    cases.append(Case("one-hot rows (0 log 0 counts as 0)", (np.eye(5)[rng.permutation(5)],)))
    cases.append(Case("a single key (S = 1): entropy 0", (np.ones((4, 1)),)))
    cases.append(Case("one row, no leading axes", (_softmax(rng.normal(size=6)),)))
    saturated = _softmax(1e4 * rng.normal(size=(3, 6)) / np.sqrt(6))
    cases.append(Case("magnitude 1e4 logits: saturated rows with exact zeros and tiny values", (saturated,)))
    tiny = np.array([[1.0 - 1e-300, 1e-300, 0.0], [0.5, 0.5 - 1e-200, 1e-200]])
    cases.append(Case("rows holding values near the smallest float64", (tiny,)))
    cases.append(Case("float32 probabilities (return float64)",
                      (_softmax(rng.normal(size=(2, 3, 5))).astype(np.float32),), rtol=1e-6, atol=1e-6))
    probs = np.transpose(np.ascontiguousarray(np.transpose(_softmax(rng.normal(size=(3, 4, 5))))))
    cases.append(Case("non-contiguous probabilities", (probs,)))
    return cases


# ---------------------------------------------------------------- residual block
def _linear(rng: np.random.Generator, d: int, dtype=np.float64):
    """A random linear sublayer on the last axis, ``x -> x W^T``, built from numpy alone
    (``partial(np.einsum, ...)`` pickles by reference to numpy, so the re-check can load it)."""
    return partial(np.einsum, "ij,...j->...i", (rng.normal(size=(d, d)) / np.sqrt(d)).astype(dtype))


def _gain(rng: np.random.Generator, d: int, dtype=np.float64):
    """A random per-feature gain, ``x -> g * x``: a stand-in for the norm (``residual`` only calls it)."""
    return partial(np.multiply, (1 + 0.5 * rng.normal(size=d)).astype(dtype))


def residual_block_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    # The sublayer and the norm are numpy callables (a linear map, tanh, a gain): the block only adds
    # and calls, so these tell every wiring apart, and they load in the re-check without course code.
    for placement, sublayer, norm in [("pre", "linear", "gain"), ("post", "linear", "gain"), ("pre", "tanh", "gain"),
                                      ("post", "linear", "tanh")]:
        b, s, d = random_shape(rng, "BSD")
        x = random_input(rng, (b, s, d), scale=2.0)
        f = _linear(rng, d) if sublayer == "linear" else np.tanh
        g = _gain(rng, d) if norm == "gain" else np.tanh
        cases.append(Case(f"placement {placement!r}, sublayer {sublayer}, norm {norm}, x of shape {(b, s, d)}",
                          (x, f, g, placement)))
    shape = random_shape(rng, "BSD")
    for label, x in edge_cases(rng, shape):
        placement = ("pre", "post")[len(cases) % 2]
        cases.append(Case(f"{label}, placement {placement!r}",
                          (x, _linear(rng, shape[-1], x.dtype), _gain(rng, shape[-1], x.dtype), placement)))
    cases.append(Case("width d = 1, placement 'post'",
                      (random_input(rng, (2, 3, 1)), _linear(rng, 1), _gain(rng, 1), "post")))
    return cases


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


def per_layer_grad_norms_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for placement, norm in [("post", "layer_norm"), ("pre", "layer_norm"), ("pre", "rms_norm")]:
        depth, batch, seq = int(rng.integers(2, 5)), int(rng.integers(2, 4)), int(rng.integers(3, 9))
        model = _transformer(rng, depth=depth, placement=placement, norm=norm)
        cases.append(Case(f"{placement}-{norm} TinyTransformer of depth {depth}, batch {batch}, length {seq}",
                          (model, *_tokens(rng, batch, seq))))
    cases.append(Case("depth 1 (one block), Post-LN", (_transformer(rng, depth=1, placement="post"),
                                                       *_tokens(rng, 2, 5))))
    cases.append(Case("batch size 1, Pre-LN", (_transformer(rng, depth=2, placement="pre"), *_tokens(rng, 1, 6))))
    cases.append(Case("sequence length 1 (attention over one token), Post-LN",
                      (_transformer(rng, depth=2, placement="post"), *_tokens(rng, 3, 1))))
    cases.append(Case("PyTorch's default initialization, causal attention, Pre-LN",
                      (_transformer(rng, depth=3, placement="pre", init="default", causal=True),
                       *_tokens(rng, 2, 6))))
    cases.append(Case("float32 model, Post-LN", (_transformer(rng, depth=2, placement="post", dtype=torch.float32),
                                                 *_tokens(rng, 2, 6)), **FLOAT32_TORCH_TOL))
    return cases


# ---------------------------------------------------------------- find the bug: layer_norm
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


PARTS = [
    Part(PROBLEM_SET, "attention_probabilities_hidden", "attention_probabilities",
         attention_probabilities_reference, attention_probabilities_cases, points=2, seed=601,
         description="softmax(q k^T / sqrt(d)) over the keys, numerically stable"),
    Part(PROBLEM_SET, "attention_entropy_hidden", "attention_entropy", attention_entropy,
         attention_entropy_cases, points=2, seed=602,
         description="Shannon entropy of every attention row, with 0 log 0 = 0"),
    Part(PROBLEM_SET, "residual_block_hidden", "residual_block", residual, residual_block_cases,
         points=2, seed=603,
         description="Post-LN y = N(x + F(x)) and Pre-LN y = x + F(N(x))"),
    Part(PROBLEM_SET, "per_layer_grad_norms_hidden", "per_layer_grad_norms", per_layer_grad_norms,
         per_layer_grad_norms_cases, points=2, seed=604, rtol=TORCH_RTOL, atol=TORCH_ATOL,
         description="Frobenius norm of each block's second FFN weight gradient at initialization"),
    Part(PROBLEM_SET, "layer_norm_fixed_hidden", "layer_norm", reference_layer_norm, layer_norm_cases,
         points=3, seed=605, description="the fixed LayerNorm against the reference, edge cases included"),
]

register(PARTS, provides=("normcourse.lab.transformer",))
