"""Figures: archive heatmaps, QD-metric curves, image grids, per-seed statistics (seaborn).
Saved as PNG and PDF."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from ribs.archives import GridArchive
from ribs.visualize import grid_archive_heatmap

from .utils import atomic_path, atomic_write_csv

_WATERMARK: str | None = None
_FOOTER: str | None = None
PALETTE = "colorblind"  # seaborn's colour-blind-safe palette, for every statistical figure


def arm_color(name: str) -> tuple[float, float, float] | None:
    """One colour per arm in every figure: QDGS blue, random sampling orange, no synthetic
    data (biased only, no pretraining) and prior samples grey; None for anything else (the
    axes' own colour cycle). Read from the name, e.g. "+ QDGS synthetic", "random-sampling
    elites", "none"."""
    colors = sns.color_palette(PALETTE)
    key = str(name).lower()
    if "qdgs" in key:
        return colors[0]
    if "random" in key:
        return colors[1]
    if key in ("none", "biased only") or "prior" in key:
        return colors[7]
    return None


def set_watermark(text: str | None) -> None:
    """Stamp ``text`` across every figure :func:`savefig` writes (None: no stamp); used to
    label figures made from random weights."""
    global _WATERMARK
    _WATERMARK = text


def set_footer(text: str | None) -> None:
    """Write ``text`` under every figure :func:`savefig` writes (None: none); notebooks name
    the profile and the assets there, so a figure says where it comes from."""
    global _FOOTER
    _FOOTER = text


def stamp(fig: plt.Figure, footer: bool = True) -> plt.Figure:
    """Add the watermark (and the footer) set now to ``fig``, once each."""
    if _WATERMARK and not getattr(fig, "_qdgs_watermarked", False):
        fig.text(0.5, 0.5, _WATERMARK, ha="center", va="center", rotation=20, fontsize=22,
                 color="red", alpha=0.35, weight="bold")
        fig._qdgs_watermarked = True
    if footer and _FOOTER and not getattr(fig, "_qdgs_footer", False):
        # below the figure's content: bbox_inches="tight" grows the saved image to hold it
        fig.text(0.0, -0.01, _FOOTER, ha="left", va="top", fontsize=7, color="0.35")
        fig._qdgs_footer = True
    return fig


def savefig(fig: plt.Figure, path: str | Path, pdf: bool = True) -> list[Path]:
    """Save ``fig`` as PNG (and PDF) atomically, with the watermark and footer set now
    (:func:`stamp`); returns the written paths."""
    stamp(fig)
    path = Path(path)
    if path.suffix.lower() in (".png", ".pdf"):  # only these: "bias_0.9" keeps its ".9"
        path = path.with_suffix("")
    out = []
    for ext in (".png", ".pdf") if pdf else (".png",):
        target = path.with_name(path.name + ext)
        with atomic_path(target) as tmp:
            # no creation date: an unchanged figure is an unchanged file (clean git status
            # after a reproduction)
            meta = {"CreationDate": None} if ext == ".pdf" else None
            fig.savefig(tmp, format=ext[1:], dpi=150, bbox_inches="tight", metadata=meta)
        out.append(relative(target))
    return out


def save_table(table: pd.DataFrame, path: str | Path, **to_csv: Any) -> Path:
    """Write a figure's numbers as CSV (``to_csv``: pandas' options), atomically
    (:func:`~qdgs_lib.utils.atomic_write_csv`)."""
    return relative(atomic_write_csv(table, path, **to_csv))


def relative(path: Path) -> Path:
    """Paths under the repository, relative to the working directory (short to print, and
    still valid to open); others unchanged."""
    from .paths import REPO_ROOT

    path = Path(path).resolve()
    if not path.is_relative_to(REPO_ROOT):
        return path
    return Path(os.path.relpath(path, Path.cwd()))


def plane_maxima(cells: np.ndarray, objective: np.ndarray, dims: tuple[int, int],
                 shape: Sequence[int]) -> np.ndarray:
    """Best objective in each cell of the (dims[0], dims[1]) plane of a grid of ``shape``,
    over the other measures: (shape[dims[1]], shape[dims[0]]), NaN where no elite is.
    ``cells``: the elites' grid indices (N, len(shape))."""
    i, j = dims
    grid = np.full((shape[j], shape[i]), np.nan)
    for (a, b), obj in zip(np.asarray(cells)[:, [i, j]], objective, strict=True):
        grid[b, a] = obj if np.isnan(grid[b, a]) else max(grid[b, a], obj)
    return grid


def shared_vmax(archives: Sequence[GridArchive]) -> float | None:
    """The best objective over ``archives`` (one colour scale for several heatmaps); None
    when all are empty."""
    return max((a.stats.obj_max for a in archives if a.stats.obj_max is not None),
               default=None)


def heatmap(archive: GridArchive, ax: plt.Axes | None = None, dims: tuple[int, int] = (0, 1),
            labels: Sequence[str] | None = None, vmin=None, vmax=None, title: str = "",
            cbar_label: str = "objective"):
    """Objective heatmap of an archive over two of its measures, its colour bar labelled
    ``cbar_label``.

    2-D archives use pyribs' ``grid_archive_heatmap``; for more measures each cell of the
    (dims[0], dims[1]) plane shows the best objective over the other measures (say so in
    ``cbar_label``).
    """
    ax = ax or plt.gca()
    if archive.measure_dim == 2 and tuple(dims) == (0, 1):
        grid_archive_heatmap(archive, ax=ax, vmin=vmin, vmax=vmax, cmap="viridis",
                             cbar_kwargs={"label": cbar_label})
    else:
        i, j = dims
        df = archive.data(return_type="pandas")
        cells = archive.int_to_grid_index(df["index"].to_numpy()) if len(df) else \
            np.zeros((0, archive.measure_dim), int)
        grid = plane_maxima(cells, df["objective"].to_numpy(), dims, archive.dims)
        lo_i, hi_i = archive.lower_bounds[i], archive.upper_bounds[i]
        lo_j, hi_j = archive.lower_bounds[j], archive.upper_bounds[j]
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                       extent=(lo_i, hi_i, lo_j, hi_j), interpolation="nearest")
        plt.colorbar(im, ax=ax, label=cbar_label)
    if labels:
        ax.set_xlabel(labels[dims[0]])
        ax.set_ylabel(labels[dims[1]])
    ax.set_title(title)
    return ax


def qd_curves(metrics: dict[str, pd.DataFrame], x: str = "evaluations",
              ys: Sequence[str] = ("coverage", "qd_score"), axes=None):
    """One panel per metric, one line per run (``{label: metrics.csv frame}``)."""
    if axes is None:
        _, axes = plt.subplots(1, len(ys), figsize=(4.5 * len(ys), 3.4))
    axes = np.atleast_1d(axes)
    for ax, y in zip(axes, ys, strict=True):
        for label, df in metrics.items():
            ax.plot(df[x], df[y], label=label, color=arm_color(label))
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    axes[0].legend()
    return axes


def image_grid(images: torch.Tensor, nrow: int, ax: plt.Axes | None = None, title: str = "",
               pad: int = 2):
    """Show (B, 3, H, W) images in [0, 1] as a grid with ``nrow`` images per row."""
    from torchvision.utils import make_grid

    ax = ax or plt.gca()
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=pad,
                     pad_value=1.0)
    ax.imshow(grid.permute(1, 2, 0).numpy())
    ax.set_axis_off()
    ax.set_title(title)
    return ax


def archive_image_grid(archive: GridArchive, decode, dims: tuple[int, int] = (0, 1),
                       cells: int = 6, ax=None, title: str = ""):
    """Decode the elite nearest to each point of a ``cells x cells`` lattice of the measure
    plane: how the images change across the two measures. Empty regions show blank tiles."""
    df = archive.data(return_type="pandas")
    if len(df) == 0:
        raise ValueError("the archive is empty: nothing to show")
    i, j = dims
    m = df[[f"measures_{i}", f"measures_{j}"]].to_numpy()
    sols = df[[c for c in df.columns if c.startswith("solution_")]].to_numpy()
    lo = archive.lower_bounds[[i, j]]
    hi = archive.upper_bounds[[i, j]]
    cell = (hi - lo) / cells
    tiles, chosen = [], []
    for r in range(cells - 1, -1, -1):  # top row = high measure j
        for c in range(cells):
            center = lo + (np.array([c, r]) + 0.5) * cell
            inside = np.all(np.abs(m - center) <= cell / 2, axis=1)
            chosen.append(int(np.flatnonzero(inside)[np.argmax(df["objective"].to_numpy()[inside])])
                          if inside.any() else -1)
    idx = [k for k in chosen if k >= 0]
    with torch.no_grad():
        imgs = decode(torch.as_tensor(sols[idx], dtype=torch.float32)).cpu() if idx else None
    it = iter(imgs) if imgs is not None else iter(())
    size = imgs.shape[-1] if imgs is not None else 8
    for k in chosen:
        tiles.append(next(it) if k >= 0 else torch.ones(3, size, size))
    return image_grid(torch.stack(tiles), nrow=cells, ax=ax, title=title)


def distributions(samples: dict[str, np.ndarray], ax: plt.Axes | None = None,
                  bins: int | np.ndarray = 30, xlabel: str = "", title: str = "",
                  threshold: float | None = None):
    """Overlaid density histograms, one per named sample; an optional vertical threshold."""
    ax = ax or plt.gca()
    for label, values in samples.items():
        ax.hist(np.asarray(values), bins=bins, density=True, alpha=0.45, label=label,
                color=arm_color(label))
    if threshold is not None:
        ax.axvline(threshold, color="k", lw=1, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return ax


def latent_norms(norms: dict[str, np.ndarray], typical: float, ax: plt.Axes | None = None,
                 bins: int = 40) -> plt.Axes:
    """Where are the elites? Densities of log10 latent norms per set (e.g. QDGS elites,
    random-sampling elites, prior samples), dashed at twice the prior's typical norm."""
    logs = {k: np.log10(np.maximum(np.asarray(v, dtype=float), 1e-3)) for k, v in norms.items()}
    logs = {k: v for k, v in logs.items() if len(v)}   # an empty archive has no norms to draw
    values = np.concatenate([*logs.values(), [np.log10(2 * typical)]])
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:   # all equal: a small window around the value, not a zero-width one
        lo, hi = lo - 0.05, hi + 0.05
    return distributions(logs, ax=ax, bins=np.linspace(lo, hi, bins + 1),
                         xlabel="log10 latent norm", threshold=np.log10(2 * typical),
                         title=f"latent norms (dashed: twice the prior's typical norm, "
                               f"{typical:.2f})")


def training_curves(logs: pd.DataFrame, axes=None):
    """Loss and training accuracy per epoch of :func:`qdgs_lib.recognition.training_logs`:
    one line per pretraining and stage (dashed: synthetic, solid: real), mean over seeds with
    the seeds' range shaded."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    seeds = logs["seed"].nunique() if "seed" in logs else 1
    for (pre, stage), df in logs.groupby(["pretraining", "stage"]):
        per_epoch = df.groupby("epoch")[["loss", "train_acc"]]
        mean, low, high = per_epoch.mean(), per_epoch.min(), per_epoch.max()
        color = arm_color(pre) or f"C{sorted(logs.pretraining.unique()).index(pre)}"
        for ax, col in zip(axes, ("loss", "train_acc"), strict=True):
            ax.plot(mean.index, mean[col], "--" if stage == "pre" else "-", color=color,
                    marker="o", markersize=3,  # one epoch is a point
                    label=f"{pre} ({'synthetic' if stage == 'pre' else 'real'})")
            ax.fill_between(mean.index, low[col], high[col], color=color, alpha=0.15, lw=0)
    for ax, label in zip(axes, ("AdaFace loss", "training accuracy"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"mean over {seeds} seed(s), shaded: their range", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return axes


# --- statistical figures (seaborn): seeds as points, 95% intervals ----------------------------


@contextmanager
def theme():
    """The project's style for statistical figures: seaborn's whitegrid, colour-blind-safe
    palette (a context, so other figures keep matplotlib's defaults)."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9), \
            sns.color_palette(PALETTE):
        yield


def _t_interval(values) -> tuple[float, float]:
    from .claims import mean_ci

    return mean_ci(values)[1:]


def seed_points(data: pd.DataFrame, x: str, y: str, hue: str, ax: plt.Axes | None = None,
                order: Sequence | None = None, hue_order: Sequence[str] | None = None,
                labels: dict[str, str] | None = None, title: str = "", xlabel: str = "",
                ylabel: str = "", ylim: tuple[float, float] | None = None) -> plt.Axes:
    """Per-seed results as points (one per seed, dodged by ``hue``) over the mean with its
    95% t-interval (:func:`qdgs_lib.claims.mean_ci`; n - 1 degrees of freedom, so few seeds
    give wide intervals, as they should; ``ylim`` cuts them at the axis, e.g. at accuracy 0
    and 1). Each arm's interval is its own: comparisons between arms are made on the paired
    differences (:mod:`qdgs_lib.claims`), which are narrower where seeds move both arms."""
    ax = ax or plt.gca()
    data = data.copy()
    levels = list(hue_order) if hue_order is not None else list(pd.unique(data[hue]))
    # arms keep their colours; any other level takes one of the palette's other colours
    others = [c for i, c in enumerate(sns.color_palette(PALETTE)) if i not in (0, 1, 7)]
    rest = iter(others * len(levels))
    colors = {h: arm_color(h) or next(rest) for h in levels}
    if labels:
        data[hue] = data[hue].map(lambda v: labels.get(v, v))
        hue_order = [labels.get(h, h) for h in hue_order] if hue_order is not None else None
        colors = {labels.get(h, h): c for h, c in colors.items()}
    kw = dict(data=data, x=x, y=y, hue=hue, order=order, hue_order=hue_order, ax=ax)
    with theme():
        sns.stripplot(**kw, dodge=True, jitter=False, alpha=0.55, size=5, legend=False,
                      palette=colors)
        sns.pointplot(**kw, dodge=0.8 - 0.8 / max(1, data[hue].nunique()), linestyle="none",
                      errorbar=_t_interval, capsize=0.08, markers="D", markersize=6,
                      err_kws={"linewidth": 1.5}, palette=colors)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or y)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(axis="y", alpha=0.35)  # the axes may predate the theme: style them here
        ax.set_axisbelow(True)
        sns.despine(ax=ax)
        ax.legend(fontsize=8, title=None, frameon=False)
    return ax
