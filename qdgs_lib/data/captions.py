"""Captioned renders for training the project's small CLIPs.

Each caption states some attributes; a caption is *true* for an image when every attribute it
states matches. Training uses all true pairs in a batch as positives (a multi-positive InfoNCE):
with a few dozen distinct captions, plain CLIP loss would treat duplicates as negatives.
"""

from __future__ import annotations

import torch

from .shapes import RED, BLUE, render, render_splatters, sample_params  # noqa: F401

# caption -> attributes it asserts: kind (shape/splatter), color (red/purple/blue), sides
SHAPE_CAPTIONS: dict[str, dict[str, str]] = {
    "A red shape.": {"kind": "shape", "color": "red"},
    "A blue shape.": {"kind": "shape", "color": "blue"},
    "A purple shape.": {"kind": "shape", "color": "purple"},
    "A triangle with 3 edges.": {"kind": "shape", "sides": "3"},
    "A square or diamond with 4 edges.": {"kind": "shape", "sides": "4"},
    "A triangle.": {"kind": "shape", "sides": "3"},
    "A square.": {"kind": "shape", "sides": "4"},
    "A regular square or a triangle.": {"kind": "shape"},
    "A geometric shape with straight edges.": {"kind": "shape"},
    "Splatters of colors.": {"kind": "splatter"},
    "Colorful blobs and splatters.": {"kind": "splatter"},
    "Irregular paint splatters.": {"kind": "splatter"},
}
for _c in ("red", "blue", "purple"):
    for _s, _n in (("triangle", "3"), ("square", "4")):
        SHAPE_CAPTIONS[f"A {_c} {_s}."] = {"kind": "shape", "color": _c, "sides": _n}


def _color_name(c: float) -> str:
    return "red" if c < 0.35 else ("blue" if c > 0.65 else "purple")


def shapes_batch(n: int, generator: torch.Generator, splatter_frac: float = 0.2,
                 size: int = 128):
    """Balanced renders (uniform color, shape) plus splatters, with their attribute dicts."""
    n_spl = int(n * splatter_frac)
    n_shp = n - n_spl
    colors = torch.zeros(n_shp, dtype=torch.long)
    shapes = (torch.rand(n_shp, generator=generator) < 0.5).long()
    p = sample_params(n_shp, colors, shapes, generator)
    p.color = torch.rand(n_shp, generator=generator)  # the full red..blue range
    images = torch.cat([render(p, size), render_splatters(n_spl, generator, size)])
    attrs = [{"kind": "shape", "color": _color_name(float(c)), "sides": "4" if s else "3"}
             for c, s in zip(p.color, p.shape, strict=True)]
    attrs += [{"kind": "splatter"}] * n_spl
    return images, attrs


def true_captions(attrs: dict[str, str], captions: dict[str, dict[str, str]]) -> list[str]:
    return [c for c, need in captions.items()
            if all(attrs.get(k) == v for k, v in need.items())]


def match_matrix(attrs: list[dict], caption_list: list[str],
                 captions: dict[str, dict[str, str]]) -> torch.Tensor:
    """(images, captions) 0/1 matrix: is caption j true for image i."""
    return torch.tensor([[float(all(a.get(k) == v for k, v in captions[c].items()))
                          for c in caption_list] for a in attrs])
