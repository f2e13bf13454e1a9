"""Figures shared by the chapters, and the one plotting style they all use."""

from __future__ import annotations

import matplotlib

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
