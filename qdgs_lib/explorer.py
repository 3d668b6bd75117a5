"""Archive explorer: pick a measure pair and a cell, see that cell's elite, QDGS beside random.

Two layers, as in pyribs' archive / visualize split:

* data (:class:`ArchiveData`, tested without a front end): an archive's elites projected on two
  measures (the best elite of each cell of the plane) and the facts of one elite: image,
  objective, measures, latent norm against the generator's prior, and, in worlds with ground
  truth (the toy faces), its true attributes and whether each CLIP measure agrees with them;
* view (:func:`explorer`): an ipywidgets panel over several archives. It displays as the live
  widget in JupyterLab and as a static PNG of the same view where no front end renders widgets
  (papermill, nbval, GitHub), so batch reproduction is unchanged.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import MaxNLocator

from . import plots
from .measures import Measure
from .plots import plane_maxima
from .search import solutions

Truth = Callable[[np.ndarray], dict[str, np.ndarray]]  # latents (N, d) -> attribute -> (N,)


@dataclass
class ArchiveData:
    """One archive's elites (``archive_frame`` / ``archive.parquet``) with what they mean.

    Args:
        frame: the elites (columns ``index``, ``objective``, ``measures_k``, ``solution_k``).
        measures: the profile's measure records (ranges, bins, labels, true attributes).
        decode: latents (N, d) -> images (N, 3, H, W) in [0, 1].
        prior_norms: latent norms of samples of the generator's prior (the reference an
            elite's norm is compared with).
        truth: the world's true attributes of latents, if it has any (toy faces).
    """

    frame: pd.DataFrame
    measures: Sequence[Measure]
    decode: Callable[[torch.Tensor], torch.Tensor]
    prior_norms: np.ndarray
    truth: Truth | None = None
    _cells: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        shape = tuple(int(m.bins) for m in self.measures)
        index = self.frame["index"].to_numpy() if len(self.frame) else np.zeros(0, int)
        if len(index) and (index.min() < 0 or index.max() >= np.prod(shape)):
            raise ValueError(f"archive cell indices do not fit the measures' grid {shape}: "
                             "pass the measures of the profile the search ran with")
        # pyribs numbers cells row-major over the grid (np.ravel_multi_index)
        self._cells = np.stack(np.unravel_index(index, shape), axis=1) if len(index) else \
            np.zeros((0, len(shape)), int)
        self.prior_norms = np.sort(np.asarray(self.prior_norms, dtype=float))

    def plane(self, dims: tuple[int, int]) -> np.ndarray:
        """Best objective of each cell of the (dims[0], dims[1]) plane, over the other
        measures: array (bins of dims[1], bins of dims[0]); NaN where no elite is."""
        return plane_maxima(self._cells, self.frame["objective"].to_numpy(),
                            self._check_dims(dims), [m.bins for m in self.measures])

    def elite_at(self, dims: tuple[int, int], cell: tuple[int, int]) -> int | None:
        """Row of the best elite in ``cell`` = (bin of dims[0], bin of dims[1]) of the plane,
        or None when the cell is empty."""
        i, j = self._check_dims(dims)
        for k, c in ((i, cell[0]), (j, cell[1])):
            if not 0 <= c < self.measures[k].bins:
                raise ValueError(f"bin {c} of measure {self.measures[k].key!r} is outside "
                                 f"0..{self.measures[k].bins - 1}")
        inside = np.flatnonzero((self._cells[:, i] == cell[0]) & (self._cells[:, j] == cell[1]))
        if len(inside) == 0:
            return None
        return int(inside[np.argmax(self.frame["objective"].to_numpy()[inside])])

    def facts(self, row: int) -> dict[str, Any]:
        """What is known about elite ``row``: cell, objective, measures, latent norm against
        the prior, and (with ``truth``) true attributes and CLIP agreement per measure."""
        if row is None:  # what elite_at returns for an empty cell
            raise ValueError("no elite: the cell is empty (elite_at returned None); pick a "
                             "filled cell (plane(dims) shows which hold an elite)")
        r = self.frame.iloc[row]
        z = solutions(self.frame.iloc[[row]])[0]
        norm = float(np.linalg.norm(z))
        out: dict[str, Any] = {
            "cell": tuple(int(c) for c in self._cells[row]),
            "objective": float(r["objective"]),
            "measures": {m.key: float(r[f"measures_{k}"]) for k, m in enumerate(self.measures)},
            "latent norm": norm,
            "prior norm (median)": float(np.median(self.prior_norms)),
            "prior samples with a smaller norm": float(
                np.searchsorted(self.prior_norms, norm) / len(self.prior_norms)),
        }
        if self.truth is not None:
            attrs = {k: float(v[0]) for k, v in self.truth(z[None]).items()}
            out["true attributes"] = attrs
            out["CLIP agrees"] = {
                m.key: bool((out["measures"][m.key] > 0) == (m.oriented(attrs[m.attribute]) > 0.5))
                for m in self.measures if m.attribute in attrs}
        return out

    def image(self, row: int) -> torch.Tensor:
        """The elite's image (3, H, W) in [0, 1]."""
        z = torch.as_tensor(solutions(self.frame.iloc[[row]]), dtype=torch.float32)
        with torch.no_grad():
            x = self.decode(z)
        if not torch.isfinite(x).all():
            raise ValueError(f"elite {row} decodes to a non-finite image")
        return x[0].detach().float().cpu().clamp(0, 1)

    def _check_dims(self, dims) -> tuple[int, int]:
        i, j = (int(d) for d in dims)
        n = len(self.measures)
        if i == j or not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"dims must be two different measures in 0..{n - 1}, got {dims}")
        return i, j


def toy_truth(latents: np.ndarray) -> dict[str, np.ndarray]:
    """The toy faces' true attributes (skin, age, hair, masc in [0, 1])."""
    from .generators.toy_faces import attributes

    a = attributes(torch.from_numpy(np.array(latents, dtype=np.float32)))  # a writable copy
    return {k: a[k].numpy() for k in ("skin", "age", "hair", "masc")}


def prior_norms(generator, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Latent norms of ``n`` seeded prior samples."""
    return generator.sample_prior(n, seed=seed).norm(dim=1).cpu().numpy()


def format_facts(f: dict[str, Any], measures: Sequence[Measure]) -> list[str]:
    """The facts as short lines (shared by the widget and the static view)."""
    labels = {m.key: m.label for m in measures}
    lines = [f"cell {f['cell']}   objective {f['objective']:.3f}",
             f"latent norm {f['latent norm']:.2f} (prior median "
             f"{f['prior norm (median)']:.2f}; {f['prior samples with a smaller norm']:.0%} of "
             "prior samples are smaller)"]
    agrees = f.get("CLIP agrees", {})
    for key, v in f["measures"].items():
        line = f"{labels[key]}: {v:+.3f}"
        if key in agrees:
            line += "  (CLIP agrees with truth)" if agrees[key] else "  (CLIP DISAGREES with truth)"
        lines.append(line)
    if "true attributes" in f:
        lines.append("true: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                          f["true attributes"].items()))
    return lines


# --- view -------------------------------------------------------------------------------------
def _draw_plane(ax, data: ArchiveData, dims, cell, title: str, vmax: float | None) -> None:
    i, j = dims
    grid = data.plane(dims)
    im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=vmax,
                   interpolation="nearest")
    plt.colorbar(im, ax=ax, label="best objective in the cell")
    ax.add_patch(plt.Rectangle((cell[0] - 0.5, cell[1] - 0.5), 1, 1, fill=False, ec="red",
                               lw=2))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{data.measures[i].label} (bin)")
    ax.set_ylabel(f"{data.measures[j].label} (bin)")
    ax.set_title(title, fontsize=10)


def _vmax(archives: dict[str, ArchiveData], dims) -> float | None:
    """One colour scale for all archives' planes."""
    return max((float(np.nanmax(a.plane(dims))) for a in archives.values() if len(a.frame)),
               default=None)


def render_view(archives: dict[str, ArchiveData], dims: tuple[int, int],
                cell: tuple[int, int]) -> plt.Figure:
    """The explorer's view as one matplotlib figure: per archive, the plane's heatmap with
    the chosen cell outlined, that cell's elite and its facts."""
    vmax = _vmax(archives, dims)
    fig, axes = plt.subplots(2, len(archives), figsize=(5.2 * len(archives), 8.4),
                             squeeze=False, gridspec_kw={"height_ratios": [1, 1.15]})
    for c, (name, data) in enumerate(archives.items()):
        _draw_plane(axes[0, c], data, dims, cell, name, vmax)
        ax = axes[1, c]
        ax.set_axis_off()
        row = data.elite_at(dims, cell)
        if row is None:
            ax.text(0.5, 0.5, f"cell {tuple(cell)}: no elite", ha="center", va="center")
            continue
        ax.imshow(data.image(row).permute(1, 2, 0).numpy(), extent=(0.2, 0.8, 0.42, 1.0))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.text(0.0, 0.38, "\n".join(format_facts(data.facts(row), data.measures)), va="top",
                fontsize=7.5, family="monospace", wrap=True)
    fig.tight_layout()
    return fig


def _png(fig: plt.Figure, footer: bool = False) -> bytes:
    plots.stamp(fig, footer=footer)   # random-weight views are labelled like saved figures
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


class ArchiveExplorer:
    """The panel: a measure pair (two dropdowns), a cell (two bin sliders), and per archive
    the heatmap, the elite's image and its facts. ``select`` drives it from code."""

    def __init__(self, archives: dict[str, ArchiveData], dims: tuple[int, int] = (0, 1),
                 cell: tuple[int, int] | None = None):
        import ipywidgets as w

        if not archives:
            raise ValueError("no archive to explore")
        self.archives = archives
        first = next(iter(archives.values()))
        self.measures = list(first.measures)
        options = [(m.label, k) for k, m in enumerate(self.measures)]
        self.x = w.Dropdown(options=options, value=dims[0], description="x measure")
        self.y = w.Dropdown(options=options, value=dims[1], description="y measure")
        self.bin_x = w.IntSlider(min=0, max=self.measures[dims[0]].bins - 1, description="x bin",
                                 continuous_update=False)
        self.bin_y = w.IntSlider(min=0, max=self.measures[dims[1]].bins - 1, description="y bin",
                                 continuous_update=False)
        self.panels = {name: (w.Image(format="png", layout=w.Layout(width="100%",
                                                                    max_width="420px")),
                              w.Image(format="png", layout=w.Layout(width="160px")), w.HTML())
                       for name in archives}
        columns = [w.VBox([w.HTML(f"<b>{html.escape(name)}</b>"), plane, img, facts],
                          layout=w.Layout(width="50%"))
                   for name, (plane, img, facts) in self.panels.items()]
        self.widget = w.VBox([w.HBox([self.x, self.y]), w.HBox([self.bin_x, self.bin_y]),
                              w.HBox(columns)])
        self.widget.add_class("qdgs-explorer")
        if cell is None:
            cell = self._best_cell(dims)
        self._updating = True
        self.bin_x.value, self.bin_y.value = cell
        self._updating = False
        for control in (self.x, self.y, self.bin_x, self.bin_y):
            control.observe(self._changed, names="value")
        self.refresh()

    @property
    def dims(self) -> tuple[int, int]:
        """The measure pair shown: (x, y) indices into ``measures``."""
        return int(self.x.value), int(self.y.value)

    @property
    def cell(self) -> tuple[int, int]:
        """The chosen cell: (x bin, y bin) along the measure pair shown."""
        return int(self.bin_x.value), int(self.bin_y.value)

    def select(self, dims: tuple[int, int] | None = None,
               cell: tuple[int, int] | None = None) -> None:
        """Choose the measure pair ``dims`` (x, y indices into ``measures``) and/or the cell
        ``cell`` (x bin, y bin) from code, then redraw once; None keeps the current choice. New dims
        also set the bin sliders' ranges to those measures' bins."""
        self._updating = True
        if dims is not None:
            self.x.value, self.y.value = dims
            self.bin_x.max = self.measures[dims[0]].bins - 1
            self.bin_y.max = self.measures[dims[1]].bins - 1
        if cell is not None:
            self.bin_x.value, self.bin_y.value = cell
        self._updating = False
        self.refresh()

    def _best_cell(self, dims) -> tuple[int, int]:
        """Start on the first archive's best elite (a filled cell)."""
        data = next(iter(self.archives.values()))
        plane = data.plane(dims)
        if np.isnan(plane).all():
            return (0, 0)
        b, a = np.unravel_index(np.nanargmax(plane), plane.shape)
        return int(a), int(b)

    def _changed(self, change) -> None:
        if self._updating:
            return
        if change["owner"] in (self.x, self.y):
            if self.x.value == self.y.value:  # two different measures: swap instead
                other = self.y if change["owner"] is self.x else self.x
                self._updating = True
                other.value = change["old"]
                self._updating = False
            self.select(dims=self.dims, cell=(min(self.bin_x.value, self.measures[self.x.value]
                                                  .bins - 1),
                                              min(self.bin_y.value, self.measures[self.y.value]
                                                  .bins - 1)))
            return
        self.refresh()

    def refresh(self) -> None:
        """Redraw every archive's panel for the current dims and cell: the plane's heatmap (one
        colour scale for all archives), the cell's elite image and its facts, or "no elite" where
        the cell is empty."""
        dims, cell = self.dims, self.cell
        vmax = _vmax(self.archives, dims)
        for name, data in self.archives.items():
            plane, img, facts = self.panels[name]
            fig, ax = plt.subplots(figsize=(4.2, 3.2))
            _draw_plane(ax, data, dims, cell, name, vmax)
            fig.tight_layout()
            plane.value = _png(fig)
            row = data.elite_at(dims, cell)
            if row is None:
                img.value = b""
                facts.value = f"<span class='qdgs-facts'>cell {cell}: no elite</span>"
                continue
            fig, ax = plt.subplots(figsize=(2.4, 2.4))
            ax.imshow(data.image(row).permute(1, 2, 0).numpy())
            ax.set_axis_off()
            img.value = _png(fig)
            lines = format_facts(data.facts(row), data.measures)
            facts.value = ("<div class='qdgs-facts'>"
                           + "<br>".join(html.escape(s) for s in lines) + "</div>")

    def _repr_mimebundle_(self, **kwargs):
        """The live widget for front ends that render widgets (JupyterLab prefers it), and a
        PNG of the same view for those that do not (papermill's output, GitHub)."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        png = _png(render_view(self.archives, self.dims, self.cell), footer=True)
        bundle["image/png"] = base64.b64encode(png).decode()
        return bundle


def explorer(archives: dict[str, ArchiveData], dims: tuple[int, int] = (0, 1),
             cell: tuple[int, int] | None = None) -> ArchiveExplorer:
    """The explorer over ``archives`` (name -> :class:`ArchiveData`), first showing the
    (dims[0], dims[1]) plane at ``cell`` (default: the first archive's best cell)."""
    return ArchiveExplorer(archives, dims, cell)
