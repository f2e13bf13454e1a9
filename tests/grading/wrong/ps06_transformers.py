"""Wrong implementations of problem set 6's functions: the mistakes the set warns about (unscaled or
overflowing softmax, the softmax over the queries, entropy in bits, NaN at zero, epsilon fudges, the
placements swapped, the skip forgotten, the summed loss or the wrong FFN weight, ``.backward()``, the
notebook's own buggy LayerNorm, and experiments that normalize at the wrong place). Keyed by the learner's
names (see ``wrong/__init__.py``)."""

import ast
import functools

import numpy as np
import torch

from normcourse.lab.transformer import residual
from problem_notebooks import notebook


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


def _entropy_epsilon(eps):
    def entropy(probs):
        p = np.asarray(probs, dtype=np.float64)
        return -np.sum(p * np.log(p + eps), axis=-1)
    entropy.__name__ = f"entropy_log_p_plus_{eps:g}"
    return entropy


def _entropy_clipped(low):
    def entropy(probs):
        p = np.asarray(probs, dtype=np.float64)
        return -np.sum(p * np.log(np.clip(p, low, 1.0)), axis=-1)
    entropy.__name__ = f"entropy_clip_{low:g}"
    return entropy


def _residual_swapped(x, sublayer, norm, placement):
    return residual(x, sublayer, norm, {"pre": "post", "post": "pre"}[placement])


def _residual_pre_without_skip(x, sublayer, norm, placement):
    return sublayer(norm(x)) if placement == "pre" else norm(x + sublayer(x))


def _residual_roles_swapped(x, sublayer, norm, placement):
    return residual(x, norm, sublayer, placement)


def _residual_anything_else_is_post(x, sublayer, norm, placement):
    """Right for 'pre' and 'post', but takes any other placement for Post-LN instead of raising ValueError."""
    return x + sublayer(norm(x)) if placement == "pre" else norm(x + sublayer(x))


def _ffn_weights(model):
    return [block.ffn.fc2.weight for block in model.blocks]


def _grad_norms_summed_loss(model, tokens, targets):
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             reduction="sum")
    return np.array([g.norm().item() for g in torch.autograd.grad(loss, _ffn_weights(model))])


def _grad_norms_first_ffn_weight(model, tokens, targets):
    weights = [block.ffn.fc1.weight for block in model.blocks]
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return np.array([g.norm().item() for g in torch.autograd.grad(loss, weights)])


def _grad_norms_backward(model, tokens, targets):
    """backward() fills every .grad (and a second call adds to them)."""
    logits = model(tokens)
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()
    return np.array([w.grad.norm().item() for w in _ffn_weights(model)])


@functools.cache
def _notebooks_buggy_layer_norm():
    """The notebook's own ``buggy_layer_norm``, defined from its locked cell (without the cell's prints)."""
    cell = next(c for c in notebook("ps06_transformers").cells
                if c.metadata.get("nbgrader", {}).get("grade_id") == "buggy_layer_norm")
    definitions = [node for node in ast.parse(cell.source).body if isinstance(node, ast.FunctionDef)]
    namespace = {"np": np}
    exec(compile(ast.Module(body=definitions, type_ignores=[]), "<buggy_layer_norm>", "exec"), namespace)
    return namespace["buggy_layer_norm"]


def _buggy_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """The notebook's buggy_layer_norm (leading axes, unbiased std, eps outside, no int shape)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _notebooks_buggy_layer_norm()(x, normalized_shape, weight, bias, eps)


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


def _saturation(scales, seeds, seq_len=16, d=32, *, qk_before_projection=False, weights_fixed=False, bits=False):
    def ln(v):
        centered = v - v.mean(-1, keepdims=True)
        return centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5)

    def entropy(q, k):
        logits = q @ k.T / np.sqrt(d)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
        log = np.log2 if bits else np.log
        return float(-np.sum(p * log(np.where(p > 0, p, 1.0)), -1).mean())

    out = {s: {v: np.zeros((len(seeds), len(scales))) for v in ("none", "pre_ln", "qk_norm")} for s in ("input", "weight")}
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(seq_len, d))
        w_q, w_k = rng.normal(size=(d, d)) / np.sqrt(d), rng.normal(size=(d, d)) / np.sqrt(d)
        for j, c in enumerate(scales):
            weight_c = 1.0 if weights_fixed else c
            for sweep, (xs, wq, wk) in (("input", (c * x, w_q, w_k)), ("weight", (x, weight_c * w_q, weight_c * w_k))):
                qk = (ln(xs) @ wq, ln(xs) @ wk) if qk_before_projection else (ln(xs @ wq), ln(xs @ wk))
                out[sweep]["none"][i, j] = entropy(xs @ wq, xs @ wk)
                out[sweep]["pre_ln"][i, j] = entropy(ln(xs) @ wq, ln(xs) @ wk)
                out[sweep]["qk_norm"][i, j] = entropy(*qk)
    return out


_saturation_qk_before = functools.partial(_saturation, qk_before_projection=True)
_saturation_qk_before.__name__ = "saturation_qk_norm_before_the_projections"
_saturation_weights_fixed = functools.partial(_saturation, weights_fixed=True)
_saturation_weights_fixed.__name__ = "saturation_weights_never_scaled"
_saturation_bits = functools.partial(_saturation, bits=True)
_saturation_bits.__name__ = "saturation_in_bits"


#: The epsilon fudges the entropy's hidden cases are built to catch (test_problems_ps04_06 checks each
#: fails on the rows of tiny probabilities).
ENTROPY_FUDGES = [_entropy_epsilon(1e-12), _entropy_epsilon(1e-15), _entropy_epsilon(1e-300),
                  _entropy_clipped(1e-12), _entropy_clipped(1e-300)]

WRONG = {
    "attention_probabilities": [_attention_unscaled, _attention_naive_exp, _attention_over_queries],
    "attention_entropy": [_entropy_bits_direct, _entropy_nan_at_zero, *ENTROPY_FUDGES],
    "residual_block": [_residual_swapped, _residual_pre_without_skip, _residual_roles_swapped,
                       _residual_anything_else_is_post],
    "per_layer_grad_norms": [_grad_norms_summed_loss, _grad_norms_first_ffn_weight, _grad_norms_backward],
    "layer_norm": [_buggy_layer_norm, _layer_norm_with(ddof=1), _layer_norm_with(eps_outside=True)],
    "attention_saturation": [_saturation_qk_before, _saturation_weights_fixed, _saturation_bits],
}
