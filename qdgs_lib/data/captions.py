"""Captioned renders for training the project's small CLIPs.

Each caption states some attributes; a caption is *true* for an image when every attribute it
states matches. Training uses all true pairs in a batch as positives (a multi-positive InfoNCE):
with a few dozen distinct captions, plain CLIP loss would treat duplicates as negatives.
"""

from __future__ import annotations

import torch

from .shapes import BLUE, RED, render, render_splatters, sample_params  # noqa: F401

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


# the renderer's color scale (0 red .. 1 blue): between these bounds a shape is purple
RED_BELOW, BLUE_ABOVE = 0.35, 0.65


def color_name(c: float) -> str:
    """The caption word for a render's ``color`` (0 red .. 1 blue): "red" below
    ``RED_BELOW``, "blue" above ``BLUE_ABOVE``, else "purple"."""
    return "red" if c < RED_BELOW else ("blue" if c > BLUE_ABOVE else "purple")


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
    attrs = [{"kind": "shape", "color": color_name(float(c)), "sides": "4" if s else "3"}
             for c, s in zip(p.color, p.shape, strict=True)]
    attrs += [{"kind": "splatter"}] * n_spl
    return images, attrs


def true_captions(attrs: dict[str, str], captions: dict[str, dict[str, str]]) -> list[str]:
    """The captions of ``captions`` that are true for an image with attributes ``attrs``
    (every attribute the caption states matches)."""
    return [c for c, need in captions.items()
            if all(attrs.get(k) == v for k, v in need.items())]


def match_matrix(attrs: list[dict], caption_list: list[str],
                 captions: dict[str, dict[str, str]]) -> torch.Tensor:
    """(images, captions) 0/1 matrix: is caption j true for image i."""
    return torch.tensor([[float(all(a.get(k) == v for k, v in captions[c].items()))
                          for c in caption_list] for a in attrs])


# --- toy faces ----------------------------------------------------------------------------------
QUALITY_POS = "A detailed photo of an individual with diverse features."
QUALITY_NEG = "An obscure, fake, or discolored photo of a person."
FACE_CAPTIONS: dict[str, dict[str, str]] = {
    QUALITY_POS: {"kind": "clean"},
    "A clear photo of a face.": {"kind": "clean"},
    QUALITY_NEG: {"kind": "corrupt"},
    "A blurry, noisy or discolored image.": {"kind": "corrupt"},
    "A person with dark skin.": {"kind": "clean", "skin": "dark"},
    "A person with light skin.": {"kind": "clean", "skin": "light"},
    "A person in their 20s.": {"kind": "clean", "age": "young"},
    "A person in their 50s.": {"kind": "clean", "age": "old"},
    "A young person.": {"kind": "clean", "age": "young"},
    "An old person with wrinkles.": {"kind": "clean", "age": "old"},
    "A person with long hair.": {"kind": "clean", "hair": "long"},
    "A person with short hair.": {"kind": "clean", "hair": "short"},
    "A masculine person.": {"kind": "clean", "masc": "masculine"},
    "A feminine person.": {"kind": "clean", "masc": "feminine"},
}
for _s in ("dark", "light"):
    for _a, _an in (("young", "in their 20s"), ("old", "in their 50s")):
        for _m, _mn in (("masculine", "man"), ("feminine", "woman")):
            FACE_CAPTIONS[f"A {_mn} {_an} with {_s} skin."] = {
                "kind": "clean", "skin": _s, "age": _a, "masc": _m}


def _level(v: float, low: str, high: str, margin: float = 0.15) -> str | None:
    return high if v > 0.5 + margin else (low if v < 0.5 - margin else None)


def face_attrs(a: dict[str, torch.Tensor], i: int) -> dict[str, str]:
    """Caption attributes of face ``i`` from its true attributes ``a`` (as
    ``generators.toy_faces.attributes`` returns them): ``kind`` "clean", plus skin, age,
    hair and masc only where clearly on one side (beyond 0.5 +- 0.15), so that no caption
    states an ambiguous attribute."""
    out = {"kind": "clean"}
    for key, low, high in (("skin", "light", "dark"), ("age", "young", "old"),
                           ("hair", "short", "long"), ("masc", "feminine", "masculine")):
        level = _level(float(a[key][i]), low, high)
        if level:
            out[key] = level
    return out


def corrupt(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Discolor, blur, add noise or occlude: the quality prompt's negative examples."""
    from torchvision.transforms.v2.functional import gaussian_blur

    if x.shape[-1] % 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"corrupt needs square images with a side divisible by 4 (4x4 "
                         f"tiles), got {tuple(x.shape[-2:])}")
    out = x.clone()
    kind = torch.randint(0, 4, (len(x),), generator=generator)
    for i, k in enumerate(kind.tolist()):
        img = out[i]
        if k == 0:  # discolor: permute channels and tint
            perm = torch.randperm(3, generator=generator)
            img = img[perm] * (0.6 + 0.8 * torch.rand(3, 1, 1, generator=generator))
        elif k == 1:
            img = gaussian_blur(img[None], kernel_size=15, sigma=4.0)[0]
        elif k == 2:
            img = img + 0.3 * torch.randn(img.shape, generator=generator)
        else:  # scrambled patches: a 4x4 grid of tiles, shuffled
            k = img.shape[-1] // 4
            p = img.unfold(1, k, k).unfold(2, k, k).reshape(3, 16, k, k)
            idx = torch.randperm(16, generator=generator)
            img = p[:, idx].reshape(3, 4, 4, k, k).permute(0, 1, 3, 2, 4).reshape(3, 4 * k, 4 * k)
        out[i] = img.clamp(0, 1)
    return out


def faces_batch(n: int, generator: torch.Generator, corrupt_frac: float = 0.2,
                size: int = 64):
    """Toy faces with *balanced* attributes (unlike the generator's prior) plus corrupted
    ones, with their attribute dicts."""
    from ..generators.toy_faces import attributes, balanced_latents, render

    z = balanced_latents(n, generator)
    with torch.no_grad():
        images = render(z, size)
        a = attributes(z)
    attrs = [face_attrs(a, i) for i in range(n)]
    n_bad = int(n * corrupt_frac)
    images[:n_bad] = corrupt(images[:n_bad], generator)
    for i in range(n_bad):
        attrs[i] = {"kind": "corrupt"}
    return images, attrs
