r"""Normalization placements at initialization: what tiny Transformers do to gradients and updates (torch).

* :func:`per_layer_grad_norms`: the per-block gradient norm of the FFN's second weight at
  initialization, the quantity Xiong et al. (2020) use to compare Post-LN and Pre-LN.
* :func:`compare_placements`: that measurement for Post-LN and Pre-LN over a range of depths.
* :func:`stream_profile`: in one forward and backward pass, the same gradient norms plus what explains
  them: the length of the residual stream entering each block, the gradient with respect to it, and
  the scale :math:`\sqrt d/\|z - \mu\|` of every normalization's input.
* :func:`placement_profiles`: :func:`stream_profile` over depths, placements and seeds.
* :func:`output_change_after_adam_step` and :func:`amplification_sweep`: how much one Adam step moves
  the model's output (the "amplification effect" of Liu et al. 2020), per placement and depth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .transformer import TinyTransformer

__all__ = ["per_layer_grad_norms", "compare_placements", "random_batch", "stream_profile",
           "placement_profiles", "output_change_after_adam_step", "amplification_sweep", "stream_growth"]


def _ffn_second_weight(block):
    return block.ffn.fc2.weight


def per_layer_grad_norms(model, tokens, targets,
                         weight_of: Callable | None = None) -> np.ndarray:
    r"""Frobenius norm of :math:`\partial L / \partial W_2^{(l)}` for every block :math:`l`.

    .. math::
        g_l = \Big\| \frac{\partial L}{\partial W_2^{(l)}} \Big\|_F, \qquad
        L = \frac{1}{BS} \sum_{b,s} -\log \mathrm{softmax}(\mathrm{logits}_{b,s})_{\mathrm{target}_{b,s}}

    where :math:`W_2^{(l)}` is the second weight of block :math:`l`'s feed-forward network. Measured
    on a freshly initialized model this is the quantity Xiong et al. (2020), "On Layer Normalization
    in the Transformer Architecture" (ICML), compare between Post-LN and Pre-LN. Gradients are taken
    with ``torch.autograd.grad``, so the model's ``.grad`` fields are left untouched.

    Args:
        model: a module with ``model.blocks`` (e.g. :class:`normcourse.lab.transformer.TinyTransformer`)
            whose ``model(tokens)`` returns logits of shape :math:`(B, S, V)`.
        tokens: integer tensor :math:`(B, S)`.
        targets: integer tensor :math:`(B, S)` of target classes.
        weight_of: maps a block to the weight to measure. Default: ``block.ffn.fc2.weight``.

    Returns:
        float64 array of shape ``(len(model.blocks),)``, first block first.
    """
    weight_of = weight_of or _ffn_second_weight
    weights = [weight_of(block) for block in model.blocks]
    logits = model(tokens)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    grads = torch.autograd.grad(loss, weights)
    return np.array([torch.linalg.matrix_norm(g).item() for g in grads], dtype=np.float64)


def compare_placements(depths: Sequence[int] = (2, 4, 6, 8, 12, 16, 20, 24), d_model: int = 128,
                       n_heads: int = 4, vocab: int = 100, seq_len: int = 32, batch: int = 8,
                       init: str = "xavier", placements: Sequence[str] = ("post", "pre"),
                       norm: str = "layer_norm", seed: int = 0) -> dict[str, dict[int, np.ndarray]]:
    r"""Per-block FFN gradient norms at initialization, Post-LN versus Pre-LN, for several depths.

    For every placement and depth a :class:`~normcourse.lab.transformer.TinyTransformer` is built from
    ``seed``, fed the same batch of uniformly random tokens with uniformly random targets (so no
    structure in the data favours either model), and measured with :func:`per_layer_grad_norms`.
    The global torch RNG is left as it was.

    Args:
        depths: numbers of blocks to try. Default: 2 to 24.
        d_model, n_heads, vocab, seq_len, batch: model and batch sizes (defaults: 128, 4, 100, 32, 8).
        init: ``"xavier"`` (Xiong et al.'s setting) or ``"default"``.
        placements: which of ``"post"``, ``"pre"`` to measure.
        norm: ``"layer_norm"`` (or ``"rms_norm"`` for Pre only).
        seed: seeds the data and every model.

    Returns:
        ``{placement: {depth: array of shape (depth,)}}``.

    Example::

        >>> out = compare_placements(depths=(2, 4), d_model=32, n_heads=2)
        >>> out["post"][4].shape
        (4,)
    """
    tokens, targets = random_batch(vocab, batch, seq_len, seed)
    results: dict[str, dict[int, np.ndarray]] = {}
    for placement in placements:
        results[placement] = {}
        for depth in depths:
            model = _seeded_model(seed, vocab=vocab, d_model=d_model, n_heads=n_heads, depth=depth,
                                  seq_len=seq_len, placement=placement, init=init, norm=norm)
            results[placement][depth] = per_layer_grad_norms(model, tokens, targets)
    return results


def random_batch(vocab: int, batch: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniformly random tokens and uniformly random targets, both :math:`(B, S)`, from their own generator.

    No structure in the data favours any model: the measurements at initialization see only the
    architecture.
    """
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    targets = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    return tokens, targets


def _seeded_model(seed: int, **kwargs) -> TinyTransformer:
    """A TinyTransformer built from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyTransformer(**kwargs)


def _centered(z: torch.Tensor, norm) -> torch.Tensor:
    """What the normalization divides by, before eps: z - mean(z) for LayerNorm, z itself for RMSNorm."""
    return z if isinstance(norm, torch.nn.RMSNorm) else z - z.mean(-1, keepdim=True)


def stream_profile(model: TinyTransformer, tokens: torch.Tensor, targets: torch.Tensor) -> dict[str, np.ndarray]:
    r"""One forward and backward pass through ``model``, and what it says about each block.

    With :math:`x_l` the residual stream entering block :math:`l` (:math:`x_1` is the embedding) and
    :math:`L` the mean token-level cross-entropy:

    - ``"w2_grad"``: :math:`\|\partial L/\partial W_2^{(l)}\|_F` (as :func:`per_layer_grad_norms`);
    - ``"stream_length"``: the mean over tokens of :math:`\|x_l - \mu(x_l)\mathbf 1\|`, for
      :math:`l = 1, \dots, \text{depth} + 1` (the last entry is the output of the last block);
    - ``"stream_grad"``: the mean over tokens of :math:`\|\partial L/\partial x_l\|`, one per block;
    - ``"norm_scale"``: for every normalization inside the blocks, in the order they run, the mean
      over tokens of :math:`\sqrt d/\|z - \mu(z)\mathbf 1\|` for its input :math:`z` (no centering for
      RMSNorm): chapter 5's :math:`1/s`, the factor by which it scales a gradient (at unit gain).

    The model's ``.grad`` fields are left untouched.

    Args:
        model: a :class:`~normcourse.lab.transformer.TinyTransformer`.
        tokens, targets: integer tensors :math:`(B, S)`.

    Returns:
        a dict of float64 arrays with the keys above.

    Example::

        >>> model = TinyTransformer(vocab=10, d_model=16, n_heads=2, depth=3, seq_len=4)
        >>> out = stream_profile(model, torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long))
        >>> out["stream_length"].shape, out["stream_grad"].shape, out["norm_scale"].shape
        ((4,), (3,), (6,))
    """
    streams, scales, hooks = [], [], []
    d = model.head.in_features

    def keep_stream(module, args):
        streams.append(args[0])

    def keep_scale(module, args):
        with torch.no_grad():
            z = _centered(args[0], module)
            scales.append((np.sqrt(d) / z.norm(dim=-1)).mean().item())

    for block in model.blocks:
        hooks.append(block.register_forward_pre_hook(keep_stream))
        for name in ("norm_attn", "norm_attn_out", "norm_ffn", "norm_ffn_out"):
            if hasattr(block, name):
                hooks.append(getattr(block, name).register_forward_pre_hook(keep_scale))
    try:
        x = model.embed(tokens)
        for block in model.blocks:
            x, _ = block(x)
        streams.append(x)
        logits = model.head(model.final_norm(x))
    finally:
        for hook in hooks:
            hook.remove()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    weights = [block.ffn.fc2.weight for block in model.blocks]
    grads = torch.autograd.grad(loss, weights + streams[:-1])
    depth = len(model.blocks)

    def token_norms(t):
        return t.detach().norm(dim=-1).mean().item()

    # Hooks fire in forward order: norm_attn, (norm_attn_out,) norm_ffn, (norm_ffn_out,) per block,
    # which for sandwich-LN is the order in, out, in, out.
    return {"w2_grad": np.array([torch.linalg.matrix_norm(g).item() for g in grads[:depth]]),
            "stream_length": np.array([token_norms(s - s.mean(-1, keepdim=True)) for s in streams]),
            "stream_grad": np.array([token_norms(g) for g in grads[depth:]]),
            "norm_scale": np.array(scales)}


def placement_profiles(depths: Sequence[int] = (2, 6, 12, 24), seeds: Sequence[int] = (0, 1, 2, 3, 4),
                       placements: Sequence[str] = ("post", "pre"), d_model: int = 128, n_heads: int = 4,
                       vocab: int = 100, seq_len: int = 32, batch: int = 8, init: str = "xavier",
                       norm: str = "layer_norm") -> dict[str, dict[int, dict[str, np.ndarray]]]:
    r""":func:`stream_profile` of fresh models for every placement, depth and seed.

    Seed :math:`s` builds the model (as :func:`compare_placements` with ``seed=s``) and draws the
    batch of random tokens and targets, so seed 0 reproduces :func:`compare_placements`' numbers.

    Args:
        depths: numbers of blocks. Default: (2, 6, 12, 24).
        seeds: one model and one batch per seed. Default: (0, 1, 2, 3, 4).
        placements: any of :data:`~normcourse.lab.transformer.VARIANTS`. Default: ("post", "pre").
        d_model, n_heads, vocab, seq_len, batch, init, norm: as in :func:`compare_placements`.

    Returns:
        ``{placement: {depth: {key: array of shape (len(seeds), ...)}}}`` with the keys of
        :func:`stream_profile`.

    Example::

        >>> out = placement_profiles(depths=(2,), seeds=(0, 1), d_model=16, n_heads=2, vocab=10, seq_len=4, batch=2)
        >>> out["post"][2]["w2_grad"].shape
        (2, 2)
    """
    results: dict[str, dict[int, dict[str, np.ndarray]]] = {p: {} for p in placements}
    for placement in placements:
        for depth in depths:
            runs = []
            for seed in seeds:
                tokens, targets = random_batch(vocab, batch, seq_len, seed)
                model = _seeded_model(seed, vocab=vocab, d_model=d_model, n_heads=n_heads, depth=depth,
                                      seq_len=seq_len, placement=placement, init=init, norm=norm)
                runs.append(stream_profile(model, tokens, targets))
            results[placement][depth] = {key: np.stack([run[key] for run in runs]) for key in runs[0]}
    return results


def output_change_after_adam_step(model: TinyTransformer, tokens: torch.Tensor, targets: torch.Tensor,
                                  lr: float = 1e-3) -> float:
    r"""How far one Adam step of size ``lr`` moves the model's final representation.

    Adam's first update moves every parameter by exactly :math:`\mathrm{lr}\cdot\operatorname{sign}(g)`
    (its bias-corrected moments are :math:`g` and :math:`g^2`; up to Adam's eps). We apply that step to
    the parameters of the blocks and return the root-mean-square change of the representation the
    head reads, :math:`h = N_{\text{final}}(x_{L+1})` (the last block's output for Post-LN variants):

    .. math::
        \Delta = \sqrt{\operatorname{mean}\big((h(W - \mathrm{lr}\,\operatorname{sign} g) - h(W))^2\big)}

    :math:`h` has unit root-mean-square per token, so :math:`\Delta` is a relative change. Liu et al.
    (2020), "Understanding the Difficulty of Training Transformers" (EMNLP), study this "amplification
    effect": the more each layer depends on its residual branch, the more an update of fixed size
    moves the output. The model is left as it was.

    Args:
        model: a :class:`~normcourse.lab.transformer.TinyTransformer` (profiled first if Admin).
        tokens, targets: integer tensors :math:`(B, S)`; the gradient is that of the mean cross-entropy.
        lr: the step size. Default: 1e-3.

    Returns:
        :math:`\Delta` as a float.
    """
    params = [p for p in model.blocks.parameters() if p.requires_grad]

    def representation():
        x = model.embed(tokens)
        for block in model.blocks:
            x, _ = block(x)
        return model.final_norm(x)

    h = representation()
    loss = F.cross_entropy(model.head(h).reshape(-1, model.head.out_features), targets.reshape(-1))
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        saved = [p.clone() for p in params]
        for p, g in zip(params, grads):
            p -= lr * torch.sign(g)
        change = (representation() - h).pow(2).mean().sqrt().item()
        for p, value in zip(params, saved):
            p.copy_(value)
    return change


def amplification_sweep(placements: Sequence[str] = ("post", "pre", "admin", "deepnorm"),
                        depths: Sequence[int] = (3, 6, 12, 24), seeds: Sequence[int] = (0, 1, 2, 3, 4),
                        lr: float = 1e-3, d_model: int = 64, n_heads: int = 4, vocab: int = 50,
                        seq_len: int = 16, batch: int = 8) -> dict[str, np.ndarray]:
    r""":func:`output_change_after_adam_step` for fresh models of every placement, depth and seed.

    Seed :math:`s` draws the batch and builds the model, the same weights for every placement (up to
    DeepNorm's :math:`\beta`); Admin is profiled on that batch (:meth:`TinyTransformer.admin_profile`).

    Args:
        placements: any of :data:`~normcourse.lab.transformer.VARIANTS`.
        depths: numbers of blocks. Default: (3, 6, 12, 24).
        seeds: Default: (0, 1, 2, 3, 4).
        lr: Adam step size. Default: 1e-3.
        d_model, n_heads, vocab, seq_len, batch: sizes (defaults 64, 4, 50, 16, 8).

    Returns:
        ``{placement: array of shape (len(depths), len(seeds))}``.

    Example::

        >>> out = amplification_sweep(placements=("post",), depths=(2,), seeds=(0,), d_model=16, n_heads=2)
        >>> out["post"].shape
        (1, 1)
    """
    results = {}
    for placement in placements:
        table = np.empty((len(depths), len(seeds)))
        for i, depth in enumerate(depths):
            for j, seed in enumerate(seeds):
                tokens, targets = random_batch(vocab, batch, seq_len, seed)
                model = _seeded_model(seed, vocab=vocab, d_model=d_model, n_heads=n_heads, depth=depth,
                                      seq_len=seq_len, placement=placement)
                if placement == "admin":
                    model.admin_profile(tokens)
                table[i, j] = output_change_after_adam_step(model, tokens, targets, lr)
        results[placement] = table
    return results


def stream_growth(placements: Sequence[str] = ("pre", "sandwich"), weight_scales: Sequence[float] = (1, 2, 4, 8),
                  seeds: Sequence[int] = (0, 1, 2, 3, 4), depth: int = 12, d_model: int = 64, n_heads: int = 4,
                  vocab: int = 50, seq_len: int = 16, batch: int = 8) -> dict[str, np.ndarray]:
    r"""Length of the residual stream after each block when every weight matrix of the blocks is scaled.

    Training grows weights; here we multiply all six weight matrices of every block (:math:`W_Q, W_K,
    W_V, W_O, W_1, W_2`) of a fresh model by :math:`c` and measure the mean centered length
    :math:`\|x_l - \mu(x_l)\mathbf 1\|` of the stream entering each block and leaving the last one. With
    zero biases a Pre-LN branch output grows like :math:`c^2`; a sandwich-LN branch output is normalized
    (Ding et al. 2021), so each block adds a vector of length about :math:`\sqrt d` whatever :math:`c`.

    Args:
        placements: any of :data:`~normcourse.lab.transformer.VARIANTS`. Default: ("pre", "sandwich").
        weight_scales: the values of :math:`c`. Default: (1, 2, 4, 8).
        seeds: one model and one batch per seed (the same weights for every placement). Default: 0 to 4.
        depth, d_model, n_heads, vocab, seq_len, batch: sizes (defaults 12, 64, 4, 50, 16, 8).

    Returns:
        ``{placement: array of shape (len(weight_scales), len(seeds), depth + 1)}``.

    Example::

        >>> out = stream_growth(weight_scales=(1, 2), seeds=(0,), depth=2, d_model=16, n_heads=2)
        >>> out["pre"].shape
        (2, 1, 3)
    """
    results = {}
    for placement in placements:
        table = np.empty((len(weight_scales), len(seeds), depth + 1))
        for j, seed in enumerate(seeds):
            tokens, _ = random_batch(vocab, batch, seq_len, seed)
            model = _seeded_model(seed, vocab=vocab, d_model=d_model, n_heads=n_heads, depth=depth,
                                  seq_len=seq_len, placement=placement)
            linears = [m for block in model.blocks for m in (block.attn.q_proj, block.attn.k_proj,
                                                             block.attn.v_proj, block.attn.out_proj,
                                                             block.ffn.fc1, block.ffn.fc2)]
            originals = [m.weight.detach().clone() for m in linears]
            with torch.no_grad():
                for i, c in enumerate(weight_scales):
                    for m, w in zip(linears, originals):
                        m.weight.copy_(c * w)
                    x, lengths = model.embed(tokens), []
                    for block in model.blocks:
                        lengths.append((x - x.mean(-1, keepdim=True)).norm(dim=-1).mean().item())
                        x, _ = block(x)
                    lengths.append((x - x.mean(-1, keepdim=True)).norm(dim=-1).mean().item())
                    table[i, j] = lengths
        results[placement] = table
    return results
