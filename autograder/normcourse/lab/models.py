r"""Small torch models, data and a training loop for the optimization chapters and problem sets.

Everything is sized for a laptop CPU: scikit-learn's bundled 8x8 digits (1797 images, no download),
ReLU MLPs and a two-layer CNN. Every random choice takes a seed, and building a model never touches
torch's global random state, so a chapter that calls ``mlp(..., seed=0)`` twice gets the same network.

Contents:

- :func:`load_digits_tensors` -- standardized digits, fixed train/test split, float32 tensors.
- :func:`mlp` -- ReLU MLP with an optional normalization (and optional Santurkar noise) per hidden layer.
- :class:`CovariateShiftNoise` and :class:`NoisyBatchNorm` -- the "noisy BatchNorm" of Santurkar et al.
- :func:`small_cnn` -- two 3x3 convolutions for the 8x8 digits, with BatchNorm, GroupNorm or nothing.
- :func:`train` and :func:`accuracy` -- minibatch SGD with a per-step history.
- :func:`layer_groups` -- which parameters make up "layer :math:`i`" (as Santurkar et al. count layers).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

__all__ = ["layer_groups", "DigitsData", "load_digits_tensors", "mlp", "CovariateShiftNoise", "NoisyBatchNorm",
           "small_cnn", "History", "train", "accuracy", "relu_inputs", "NORMS"]

#: Normalizations the model builders accept (``None`` means no normalization).
NORMS = (None, "batch_norm", "layer_norm", "group_norm")


class DigitsData(NamedTuple):
    """The digits split: flat float32 images ``(N, 64)`` and int64 labels ``(N,)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``load_digits(return_X_y=True)``: float64 pixels (1797, 64) and integer labels.

    The file scikit-learn ships is read directly: importing ``sklearn.datasets`` (and with it scipy)
    takes 1.5 to 3 s, longer than all of some chapters' experiments. scikit-learn's own loader is the
    fallback if its data folder has moved.
    """
    spec = importlib.util.find_spec("sklearn")                 # locates the package without importing it
    folders = list(spec.submodule_search_locations or []) if spec else []
    csv = next((Path(f) / "datasets" / "data" / "digits.csv.gz" for f in folders
                if (Path(f) / "datasets" / "data" / "digits.csv.gz").is_file()), None)
    if csv is None:
        from sklearn.datasets import load_digits
        return load_digits(return_X_y=True)
    with gzip.open(csv, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def load_digits_tensors(seed: int = 0, test_fraction: float = 0.2) -> DigitsData:
    r"""scikit-learn's bundled 8x8 digits as standardized float32 tensors with a fixed split.

    .. math::
        x' = \frac{x - \mu_{\text{train}}}{\sigma_{\text{train}}}

    per pixel, with the mean and (biased) standard deviation of the *training* split; pixels that are
    constant in the training split (the image corners) get :math:`\sigma = 1`, so they stay finite.

    Args:
        seed: seed of the random permutation that splits the 1797 images. Default: 0.
        test_fraction: share of the images held out, in (0, 1). Default: 0.2.

    Returns:
        :class:`DigitsData` ``(x_train, y_train, x_test, y_test)``.

    Shape:
        - ``x_*``: :math:`(N, 64)` float32 (reshape to ``(N, 1, 8, 8)`` for images; :func:`small_cnn`
          does it itself).
        - ``y_*``: :math:`(N,)` int64 labels in 0..9.

    Example:
        >>> data = load_digits_tensors()
        >>> data.x_train.shape, data.x_test.shape
        (torch.Size([1438, 64]), torch.Size([359, 64]))

    Reference: the UCI optical recognition of handwritten digits data, as shipped by scikit-learn
    (``sklearn.datasets.load_digits``).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = _bundled_digits()
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    test, train_ = order[:n_test], order[n_test:]
    mean = images[train_].mean(axis=0)
    std = images[train_].std(axis=0)
    std[std == 0] = 1.0
    standardized = ((images - mean) / std).astype(np.float32)

    def tensors(index):
        return torch.from_numpy(standardized[index]), torch.from_numpy(labels[index].astype(np.int64))

    return DigitsData(*tensors(train_), *tensors(test))


class CovariateShiftNoise(nn.Module):
    r"""Santurkar et al.'s time-varying, non-Gaussian noise, applied to activations of shape ``(N, C, *)``.

    At every forward pass in training mode (one training step) and for every unit :math:`j`:

    .. math::
        \mu_j \sim U(-0.5, 0.5), \qquad \sigma_j \sim U(1, 1.25),

    then for every sample :math:`n` (the same draw for all spatial positions of a channel):

    .. math::
        m_{nj} \sim U(\mu_j - 0.1, \mu_j + 0.1), \qquad s_{nj} \sim \mathcal N(\sigma_j, 0.1^2),
        \qquad a_{nj} \leftarrow s_{nj}\, a_{nj} + m_{nj}.

    The noise is a constant for autograd (gradients flow through :math:`a` only). In evaluation mode
    the module is the identity. The draws come from the module's own :class:`torch.Generator`, so a
    noisy network is reproducible and independent of torch's global random state.

    Args:
        seed: seed of the module's generator. Default: 0.

    Shape:
        - Input: :math:`(N, C)` or :math:`(N, C, *)`.
        - Output: same shape.

    Example:
        >>> noise = CovariateShiftNoise(seed=0)
        >>> noise(torch.zeros(4, 3)).shape
        torch.Size([4, 3])

    Reference: Santurkar, Tsipras, Ilyas & Madry, "How Does Batch Normalization Help Optimization?",
    NeurIPS 2018, Section 2.1 ("noisy" BatchNorm, Figure 2).
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, shape: torch.Size, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw random numbers of one step: ``U(0, 1)`` of shape ``(N + 2, C)`` and ``N(0, 1)`` of
        shape ``(N, C)``; :meth:`transform` turns them into the noise."""
        n, c = shape[0], shape[1]
        return (torch.rand(n + 2, c, generator=self.generator, dtype=dtype),
                torch.randn(n, c, generator=self.generator, dtype=dtype))

    @staticmethod
    def transform(uniform: torch.Tensor, normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Scale ``s`` and shift ``m`` from :meth:`draw`'s numbers (any leading axes, e.g. replicas).

        Row 0 of ``uniform`` gives :math:`\mu_j`, row 1 :math:`\sigma_j`, the other rows the shifts.
        The arithmetic is in place: sampling is most of a noisy network's training time.
        """
        mu = uniform[..., :1, :] - 0.5
        sigma = uniform[..., 1:2, :].mul(0.25).add_(1.0)
        shift = uniform[..., 2:, :].mul_(0.2).add_(mu - 0.1)                   # U(mu - 0.1, mu + 0.1)
        scale = normal.mul_(0.1).add_(sigma)                                     # N(sigma, 0.1^2)
        return scale, shift

    def sample(self, shape: torch.Size, dtype: torch.dtype = torch.float32
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's noise: per-sample scale ``s`` and shift ``m``, both of shape ``(N, C)``."""
        return self.transform(*self.draw(shape, dtype))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return a
        scale, shift = self.sample(a.shape, a.dtype)
        view = a.shape[:2] + (1,) * (a.dim() - 2)
        return scale.view(view) * a + shift.view(view)


class NoisyBatchNorm(nn.Sequential):
    r"""BatchNorm followed by :class:`CovariateShiftNoise`: Santurkar et al.'s "noisy BatchNorm".

    .. math::
        y = s \odot \mathrm{BN}(x) + m

    with :math:`s, m` drawn afresh at every training step as in :class:`CovariateShiftNoise`. The
    layer after it therefore sees inputs whose distribution shifts at every step *more* than in a
    plain network, yet the network still trains (the paper's Figure 2, and chapter 2 here).

    Args:
        num_features: :math:`C`, the number of channels or units.
        seed: seed of the noise generator. Default: 0.
        spatial: use ``BatchNorm2d`` for ``(N, C, H, W)`` input instead of ``BatchNorm1d``. Default: False.

    Shape:
        - Input: :math:`(N, C)` (or :math:`(N, C, H, W)` with ``spatial=True``).
        - Output: same shape.

    Example:
        >>> layer = NoisyBatchNorm(8, seed=1)
        >>> layer(torch.randn(16, 8)).shape
        torch.Size([16, 8])

    Reference: Santurkar et al., "How Does Batch Normalization Help Optimization?", NeurIPS 2018.
    """

    def __init__(self, num_features: int, seed: int = 0, spatial: bool = False):
        norm = nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)
        super().__init__(norm, CovariateShiftNoise(seed))


def _check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class _Seeded:
    """Build modules under a fixed seed without disturbing torch's global random state."""

    def __init__(self, seed: int | None):
        self.seed = seed
        self._fork = None

    def __enter__(self):
        if self.seed is not None:
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self._fork is not None:
            return self._fork.__exit__(*exc)
        return False


def mlp(*, in_dim: int = 64, width: int = 128, depth: int = 8, out_dim: int = 10, norm: str | None = None,
        noisy: bool = False, init: str = "default", seed: int | None = 0) -> nn.Sequential:
    r"""A ReLU MLP with an optional normalization after each hidden linear layer.

    .. math::
        h_0 = x, \qquad h_\ell = \mathrm{ReLU}\big(\xi_\ell(\mathrm{Norm}(W_\ell h_{\ell-1} + b_\ell))\big),
        \quad \ell = 1..\text{depth}, \qquad \text{logits} = W_{\text{out}} h_{\text{depth}} + b_{\text{out}}

    where Norm is BatchNorm1d, LayerNorm or the identity, and :math:`\xi_\ell` is
    :class:`CovariateShiftNoise` when ``noisy`` (the identity otherwise). ``noisy=True`` with
    ``norm="batch_norm"`` is Santurkar et al.'s noisy BatchNorm; with ``norm=None`` it is the same
    noise in a plain network.

    With ``init="default"`` the linear layers keep PyTorch's initialization (weights
    :math:`U(-1/\sqrt{n_{in}}, 1/\sqrt{n_{in}})`, which shrinks the signal by about
    :math:`\sqrt{6}` per ReLU layer, so a deep plain MLP starts with vanishing activations and
    gradients); ``init="kaiming"`` draws :math:`W \sim \mathcal N(0, 2/n_{in})` and :math:`b = 0` (He et
    al. 2015), which keeps the activation scale roughly constant through the ReLUs.

    Args (keyword-only, so calls read unambiguously):
        in_dim: input features. Default: 64 (the flat digits).
        width: units per hidden layer. Default: 128.
        depth: number of hidden layers (the network has ``depth + 1`` linear layers). Default: 8.
        out_dim: output logits. Default: 10.
        norm: ``None``, ``"batch_norm"`` or ``"layer_norm"``. Default: None.
        noisy: add :class:`CovariateShiftNoise` after each hidden layer's normalization. Default: False.
        init: ``"default"`` (PyTorch's) or ``"kaiming"``. Default: ``"default"``.
        seed: seed for the weights (and, offset per layer, the noise); ``None`` uses torch's global
            random state. Default: 0.

    Shape:
        - Input: :math:`(N, \text{in\_dim})`. Output: :math:`(N, \text{out\_dim})`.

    Example:
        >>> net = mlp(depth=3, width=32, norm="batch_norm")
        >>> net(torch.randn(5, 64)).shape
        torch.Size([5, 10])

    Reference: Ioffe & Szegedy, ICML 2015 (BatchNorm after the linear map, before the nonlinearity);
    Santurkar et al., NeurIPS 2018 (the noisy variant).
    """
    _check_norm(norm)
    if norm == "group_norm":
        raise ValueError("mlp supports norm=None, 'batch_norm' or 'layer_norm'")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if init not in ("default", "kaiming"):
        raise ValueError(f"init must be 'default' or 'kaiming', got {init!r}")
    layers: list[nn.Module] = []
    with _Seeded(seed):
        fan_in = in_dim
        for index in range(depth):
            layers.append(nn.Linear(fan_in, width))
            if norm == "batch_norm":
                layers.append(nn.BatchNorm1d(width))
            elif norm == "layer_norm":
                layers.append(nn.LayerNorm(width))
            if noisy:
                noise_seed = (0 if seed is None else seed) * 1000 + index + 1
                layers.append(CovariateShiftNoise(noise_seed))
            layers.append(nn.ReLU())
            fan_in = width
        layers.append(nn.Linear(fan_in, out_dim))
        if init == "kaiming":
            for layer in layers:
                if isinstance(layer, nn.Linear):
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


#: Modules that start a new "layer"; parameterized modules after them (e.g. a norm's gain and bias)
#: belong to the same layer.
WEIGHTED_MODULES = (nn.Linear, nn.modules.conv._ConvNd)


def layer_groups(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    r"""Split a model's trainable parameters into layers, in the order the modules are registered.

    A layer starts at each ``nn.Linear`` or convolution (or a module whose class sets
    ``starts_layer = True``, such as :class:`~normcourse.lab.replicas.ReplicaLinear`) and also owns the
    parameters of the modules registered after it up to the next one (a normalization's
    :math:`\gamma, \beta`). For
    ``Linear -> BatchNorm1d -> ReLU -> Linear`` this gives two layers: ``[W1, b1, gamma, beta]`` and
    ``[W2, b2]``.

    Args:
        model: any ``nn.Module``.

    Returns:
        list of ``(name, parameters)``, where ``name`` is the module name that starts the layer.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
        >>> [(name, len(ps)) for name, ps in layer_groups(net)]
        [('0', 4), ('3', 2)]
    """
    groups: list[tuple[str, list[nn.Parameter]]] = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if isinstance(module, WEIGHTED_MODULES) or getattr(module, "starts_layer", False) or not groups:
            groups.append((name or "model", own))
        else:
            groups[-1][1].extend(own)
    return groups



class _AsImage(nn.Module):
    """Reshape flat digits ``(N, 64)`` to ``(N, 1, 8, 8)``; leave 4-d input alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], 1, 8, 8) if x.dim() == 2 else x


def small_cnn(norm: str | None = "batch_norm", groups: int = 4, channels: tuple[int, int] = (16, 32),
              out_dim: int = 10, seed: int | None = 0) -> nn.Sequential:
    r"""Two 3x3 convolutions for the 8x8 digits, each followed by a normalization and a ReLU.

    .. math::
        x \to [\mathrm{Conv}_{3\times3} \to \mathrm{Norm} \to \mathrm{ReLU} \to \mathrm{MaxPool}_2]
        \to [\mathrm{Conv}_{3\times3} \to \mathrm{Norm} \to \mathrm{ReLU}] \to \mathrm{GlobalAvgPool}
        \to \mathrm{Linear}

    Norm is BatchNorm2d (statistics over N, H, W per channel), GroupNorm with ``groups`` groups
    (statistics over each sample's group of channels and H, W -- independent of the batch), or nothing.

    Args:
        norm: ``"batch_norm"``, ``"group_norm"`` or ``None``. Default: ``"batch_norm"``.
        groups: number of GroupNorm groups; must divide both channel counts. Default: 4.
        channels: output channels of the two convolutions. Default: (16, 32).
        out_dim: output logits. Default: 10.
        seed: seed for the weights; ``None`` uses torch's global random state. Default: 0.

    Shape:
        - Input: :math:`(N, 64)` flat digits or :math:`(N, 1, 8, 8)`. Output: :math:`(N, \text{out\_dim})`.

    Example:
        >>> net = small_cnn("group_norm", groups=4)
        >>> net(torch.randn(2, 64)).shape
        torch.Size([2, 10])

    Reference: Wu & He, "Group Normalization", ECCV 2018.
    """
    _check_norm(norm)
    if norm == "layer_norm":
        raise ValueError("small_cnn supports norm='batch_norm', 'group_norm' or None "
                         "(LayerNorm over (C, H, W) is group_norm with groups=1)")
    if norm == "group_norm" and any(c % groups for c in channels):
        raise ValueError(f"groups={groups} must divide both channel counts {channels}")

    def normalization(c: int) -> nn.Module:
        if norm == "batch_norm":
            return nn.BatchNorm2d(c)
        if norm == "group_norm":
            return nn.GroupNorm(groups, c)
        return nn.Identity()

    c1, c2 = channels
    with _Seeded(seed):
        return nn.Sequential(
            _AsImage(),
            nn.Conv2d(1, c1, 3, padding=1), normalization(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), normalization(c2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, out_dim),
        )


@dataclass
class History:
    """Per-step record of :func:`train`: the minibatch loss and accuracy *before* each update."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)

    def final(self, last: int = 20) -> tuple[float, float]:
        """Mean loss and accuracy over the ``last`` steps (a less noisy end point than one batch)."""
        return float(np.mean(self.loss[-last:])), float(np.mean(self.accuracy[-last:]))


def train(model: nn.Module, data, steps: int, lr: float, batch_size: int = 64, momentum: float = 0.0,
          seed: int = 0, loss_fn: Callable | None = None,
          on_step: Callable[[int, nn.Module], None] | None = None) -> History:
    r"""Minibatch SGD on the training split, in place; returns the per-step history.

    .. math::
        v \leftarrow \rho\, v + \nabla_\theta L_B(\theta), \qquad \theta \leftarrow \theta - \eta\, v

    (``torch.optim.SGD``'s convention) with :math:`B` drawn by reshuffling the training set at every
    epoch from a generator seeded with ``seed``. The model is put in training mode.

    Args:
        model: the network; modified in place.
        data: a :class:`DigitsData` (its training split is used) or a pair ``(x, y)``.
        steps: number of updates.
        lr: learning rate :math:`\eta`.
        batch_size: minibatch size. Default: 64.
        momentum: :math:`\rho`. Default: 0.
        seed: seed of the minibatch order. Default: 0.
        loss_fn: ``loss_fn(logits, y)``. Default: cross-entropy.
        on_step: called as ``on_step(step, model)`` before the first update (step 0) and after every
            update (steps 1..steps), e.g. to record activations. Default: None.

    Returns:
        :class:`History` with ``loss`` and ``accuracy`` per step (the minibatch's, computed in the
        same forward pass as the gradient). A diverged run records ``nan`` losses and carries on.

    Example:
        >>> data = load_digits_tensors()
        >>> history = train(mlp(depth=2, width=32), data, steps=50, lr=0.1)
        >>> len(history.loss)
        50
    """
    x, y = (data.x_train, data.y_train) if isinstance(data, DigitsData) else data
    loss_fn = loss_fn or nn.functional.cross_entropy
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    order_generator = torch.Generator().manual_seed(seed)
    history = History()
    model.train()
    if on_step is not None:
        on_step(0, model)
    order, position = torch.randperm(len(y), generator=order_generator), 0
    for step in range(1, steps + 1):
        if position + batch_size > len(y):
            order, position = torch.randperm(len(y), generator=order_generator), 0
        index = order[position:position + batch_size]
        position += batch_size
        logits = model(x[index])
        loss = loss_fn(logits, y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.loss.append(float(loss.detach()))
        history.accuracy.append(float((logits.argmax(dim=1) == y[index]).float().mean()))
        if on_step is not None:
            on_step(step, model)
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of correctly classified samples, in evaluation mode (the mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        return float((model(x).argmax(dim=1) == y).float().mean())
    finally:
        model.train(was_training)


@torch.no_grad()
def relu_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    r"""The input of every ``nn.ReLU`` of ``model`` on ``x``, in order: the pre-activations.

    For a hidden layer of :func:`mlp` this is :math:`\xi(\mathrm{Norm}(W h + b))`, the quantity whose
    distribution Ioffe & Szegedy watch drift during training (their Figure 1). The forward pass runs
    in the model's current mode, so in training mode BatchNorm normalizes with the statistics of ``x``;
    the running statistics, noise generators and random state it touches are put back afterwards
    (:func:`_preserved`; cheaper than running a deep copy, which cost as much as the measurement), so
    the model is left as it was.

    Args:
        model: the network (not modified).
        x: an input batch.

    Returns:
        list of tensors, one per ReLU, each of shape ``(N, units)`` (or ``(N, C, H, W)``).

    Example:
        >>> [a.shape for a in relu_inputs(mlp(depth=2, width=16), torch.randn(5, 64))]
        [torch.Size([5, 16]), torch.Size([5, 16])]
    """
    captured: list[torch.Tensor] = []
    hooks = [module.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
             for module in model.modules() if isinstance(module, nn.ReLU)]
    try:
        with _preserved(model):
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def _generators(model: nn.Module) -> list[torch.Generator]:
    return [m.generator for m in model.modules() if isinstance(getattr(m, "generator", None), torch.Generator)]


@contextlib.contextmanager
def _preserved(model: nn.Module):
    """Snapshot the model; yield ``replay`` (reset all randomness to the snapshot); restore on exit."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    generators = _generators(model)
    generator_states = [g.get_state() for g in generators]
    global_rng = torch.get_rng_state()
    modes = [m.training for m in model.modules()]

    def replay():
        for g, s in zip(generators, generator_states):
            g.set_state(s)
        torch.set_rng_state(global_rng)

    try:
        yield replay
    finally:
        with torch.no_grad():
            for key, tensor in model.state_dict(keep_vars=True).items():
                tensor.copy_(state[key])
        replay()
        for m, mode in zip(model.modules(), modes):
            m.training = mode
