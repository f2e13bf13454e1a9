"""Figures shared by the chapters, and the one plotting style they all use."""

from __future__ import annotations

import matplotlib
import numpy as np

from ..reference.scopes import scope_mask

STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "font.family": "DejaVu Sans",
}

#: One colour per normalization, used by every chapter so a reader learns them once.
NORM_COLORS = {
    "none": "#7f7f7f",
    "batch_norm": "#1f77b4",
    "layer_norm": "#d62728",
    "instance_norm": "#2ca02c",
    "group_norm": "#9467bd",
    "rms_norm": "#ff7f0e",
}


def use_style() -> None:
    """Apply the course's matplotlib style (call once at the top of a chapter)."""
    matplotlib.rcParams.update(STYLE)


def band(ax, x, runs, color, label=None, alpha: float = 0.15, **style):
    """Draw a multi-seed result: the median over the seeds as a line, the range (min to max) as a band.

    Args:
        ax: a matplotlib Axes.
        x: positions, shape ``(P,)``.
        runs: values of shape ``(seeds, P)``; NaN entries (a diverged run) are left out.
        color, label: of the line; the band takes the same colour.
        alpha: the band's opacity. Default: 0.15.
        **style: passed to ``ax.plot`` (``marker``, ``ls``, ...).

    Returns:
        the line, as ``ax.plot`` returns it.
    """
    runs = np.asarray(runs, dtype=np.float64)
    line = ax.plot(x, np.nanmedian(runs, 0), color=color, label=label, **style)
    ax.fill_between(x, np.nanmin(runs, 0), np.nanmax(runs, 0), color=color, alpha=alpha, lw=0)
    return line


# --------------------------------------------------------------------------------------------------
# The normalization cube: which elements share one statistic, drawn from the scope data.
# --------------------------------------------------------------------------------------------------

#: Names of the cube's three array axes for each layout (the cube is always 3-d; NCHW flattens H, W).
CUBE_AXIS_LABELS = {
    "NCHW": ("N (batch)", "C (channels)", "H, W (space)"),
    "BSD": ("B (batch)", "S (tokens)", "D (features)"),
}
#: Which array axis of the drawn cube goes to the plot's x, y and z axis, per layout. For sequences
#: tokens go up, so a LayerNorm "strip" runs along the feature axis, as in the usual drawings.
_CUBE_PLOT_ORDER = {"NCHW": (0, 1, 2), "BSD": (0, 2, 1)}

NORM_TITLES = {
    "batch_norm": "BatchNorm",
    "layer_norm": "LayerNorm",
    "instance_norm": "InstanceNorm",
    "group_norm": "GroupNorm",
    "rms_norm": "RMSNorm",
}


def cube_voxels(norm: str, layout: str = "NCHW", shape: tuple[int, ...] = (4, 6, 3, 3),
                index: tuple[int, ...] | None = None, num_groups: int | None = None) -> np.ndarray:
    """The 3-d boolean block that :func:`scope_cube` highlights, straight from ``scope_mask``.

    For ``NCHW`` the mask of :func:`normcourse.reference.scopes.scope_mask` on ``(N, C, H, W)`` is
    reshaped to ``(N, C, H*W)``: the two spatial axes become one axis of the cube, as in Wu & He's
    figure. For ``BSD`` the mask is already 3-d.

    Args:
        norm: one of ``normcourse.reference.scopes.NORMS``.
        layout: ``"NCHW"`` or ``"BSD"``.
        shape: the full input shape in that layout, ``(N, C, H, W)`` or ``(B, S, D)``.
        index: the element whose statistic is shown. Default: the first element.
        num_groups: number of channel groups (GroupNorm only).

    Shape:
        - Output: ``(N, C, H*W)`` for ``NCHW``, ``(B, S, D)`` for ``BSD``.

    Example:
        >>> int(cube_voxels("instance_norm", "NCHW", (2, 3, 2, 2)).sum())   # one channel of one image
        4
    """
    if layout not in CUBE_AXIS_LABELS:
        raise ValueError(f"the cube is drawn for layouts {tuple(CUBE_AXIS_LABELS)}, not {layout!r}")
    shape = tuple(int(s) for s in shape)
    index = (0,) * len(shape) if index is None else tuple(index)
    mask = scope_mask(norm, layout, shape, index, num_groups=num_groups)
    if layout == "NCHW":
        mask = mask.reshape(shape[0], shape[1], shape[2] * shape[3])
    return mask


def scope_cube(ax, norm: str, layout: str = "NCHW", shape: tuple[int, ...] = (4, 6, 3, 3),
               index: tuple[int, ...] | None = None, num_groups: int | None = None,
               padding: np.ndarray | None = None, title: str | None = None) -> dict:
    """Draw the elements that share one statistic with ``index`` as coloured voxels on a 3-d axes.

    The highlighted set is :func:`cube_voxels`, i.e. the course's own ``scope_mask``: the figure
    cannot disagree with the forward passes. Every other element is drawn as a faint grey voxel.

    Args:
        ax: a matplotlib 3-d axes (``fig.add_subplot(projection="3d")``).
        norm, layout, shape, index, num_groups: as in :func:`cube_voxels`.
        padding: optional boolean array of shape ``(B, S)`` (``BSD`` only), True at padding tokens;
            those tokens are drawn dark so one sees what a statistic includes.
        title: panel title. Default: the norm's name (with ``G`` for GroupNorm).

    Returns:
        dict mapping the ``(i, j, k)`` voxel index (in the cube's own axis order, see
        :func:`cube_voxels`) of every highlighted element to the matplotlib collection that draws it.

    Example:
        >>> import matplotlib.pyplot as plt
        >>> ax = plt.figure().add_subplot(projection="3d")
        >>> drawn = scope_cube(ax, "layer_norm")
        >>> len(drawn)   # one whole image: C * H * W elements
        54
    """
    highlighted = cube_voxels(norm, layout, shape, index, num_groups)
    order = _CUBE_PLOT_ORDER[layout]
    color = NORM_COLORS.get(norm, "#333333")
    pad = np.zeros_like(highlighted)
    if padding is not None:
        if layout != "BSD":
            raise ValueError("padding is only meaningful for the BSD layout")
        padding = np.asarray(padding, dtype=bool)
        if padding.shape != highlighted.shape[:2]:
            raise ValueError(f"padding must have shape (B, S) = {highlighted.shape[:2]}, got {padding.shape}")
        pad = np.broadcast_to(padding[:, :, None], highlighted.shape)
    to_plot = lambda a: np.transpose(a, order)  # noqa: E731 -- array axes -> plot x, y, z
    rest = ~highlighted
    ax.voxels(to_plot(rest & ~pad), facecolors=(0.85, 0.85, 0.85, 0.18), edgecolor=(0.5, 0.5, 0.5, 0.25),
              linewidth=0.3)
    drawn = {}
    if pad.any():
        ax.voxels(to_plot(rest & pad), facecolors=(0.25, 0.25, 0.25, 0.35), edgecolor=(0.2, 0.2, 0.2, 0.4),
                  linewidth=0.3)
        # padding that falls inside the scope contaminates the statistic: drawn dark but still highlighted
        drawn.update(ax.voxels(to_plot(highlighted & pad), facecolors="#3b3b3b", edgecolor="k",
                               linewidth=0.4))
    drawn.update(ax.voxels(to_plot(highlighted & ~pad), facecolors=color, edgecolor="k", linewidth=0.4,
                           alpha=0.9))
    inverse = np.argsort(order)
    drawn = {tuple(int(key[a]) for a in inverse): coll for key, coll in drawn.items()}
    # Axis names are written along three edges of the box: matplotlib's 3-d axis labels drift outside
    # small panels, plain text in data coordinates stays put.
    size = [highlighted.shape[a] for a in order]
    labels = [CUBE_AXIS_LABELS[layout][a] for a in order]
    ax.set_axis_off()
    ax.text(size[0] / 2, -0.9, 0, labels[0], zdir="x", ha="center", va="top", fontsize=8)
    ax.text(size[0] + 0.6, size[1] / 2, 0, labels[1], zdir="y", ha="left", va="top", fontsize=8)
    ax.text(-0.5, 0, size[2] / 2, labels[2], zdir="z", ha="right", va="center", fontsize=8)
    ax.set_box_aspect(size, zoom=0.85)
    ax.view_init(elev=20, azim=-60)
    ax.grid(False)
    if title is None:
        title = NORM_TITLES.get(norm, norm) + (f" (G={num_groups})" if norm == "group_norm" else "")
    ax.set_title(title)
    return drawn


def scope_cubes(norms=("batch_norm", "layer_norm", "instance_norm", "group_norm"), layout: str = "NCHW",
                shape: tuple[int, ...] = (4, 6, 3, 3), index: tuple[int, ...] | None = None,
                num_groups: int | None = 2, padding: np.ndarray | None = None, panel_size: float = 2.6):
    """A 1 x K panel of :func:`scope_cube`, one per norm: the familiar BN / LN / IN / GN figure.

    Args:
        norms: names of the norms to draw, or ``(name, num_groups)`` pairs to draw GroupNorm with
            several group counts side by side.
        layout, shape, index, padding: as in :func:`scope_cube`, shared by all panels.
        num_groups: group count used for a bare ``"group_norm"`` entry. Default: 2.
        panel_size: width of one panel in inches.

    Returns:
        ``(fig, axes, drawn)`` where ``drawn[k]`` is what :func:`scope_cube` returned for panel ``k``.

    Example:
        >>> fig, axes, drawn = scope_cubes(layout="BSD", shape=(3, 5, 8),
        ...                                norms=("batch_norm", "layer_norm", "rms_norm"))
    """
    import matplotlib.pyplot as plt

    entries = [(n, num_groups) if isinstance(n, str) else (n[0], n[1]) for n in norms]
    fig = plt.figure(figsize=(panel_size * len(entries), panel_size * 1.05))
    axes, drawn = [], []
    for k, (norm, groups) in enumerate(entries):
        ax = fig.add_subplot(1, len(entries), k + 1, projection="3d")
        drawn.append(scope_cube(ax, norm, layout, shape, index=index,
                                num_groups=groups if norm == "group_norm" else None, padding=padding))
        axes.append(ax)
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.02, top=0.9, wspace=0.05)
    return fig, axes, drawn


class Table:
    """A small results table that renders the same in Jupyter and in the built book.

    Chapters display measured numbers as tables. The book renders a cell's HTML output before its
    Markdown (MyST-NB renders Markdown outputs as CommonMark, which has no tables), so the table
    offers HTML, Markdown (for notebook front ends that prefer it) and plain text.

    Args:
        header: column titles.
        rows: sequences of cells, each converted with ``str``.

    Example:
        >>> Table(["norm", "axes"], [("batch_norm", "N,H,W")])._repr_markdown_().splitlines()[0]
        '| norm | axes |'
    """

    def __init__(self, header, rows):
        self.header = [str(h) for h in header]
        self.rows = [[str(c) for c in row] for row in rows]
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"row {row} has {len(row)} cells, the header has {len(self.header)}")

    def _repr_markdown_(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])

    def _repr_html_(self) -> str:
        import html

        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                       for row in self.rows)
        return f'<table class="table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def __repr__(self) -> str:
        widths = [max(len(r[i]) for r in [self.header] + self.rows) for i in range(len(self.header))]
        fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths))  # noqa: E731
        return "\n".join([fmt(self.header)] + [fmt(r) for r in self.rows])
