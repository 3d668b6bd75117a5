"""The shapes world: red/blue triangles and squares (and colour splatters), rendered in torch.

Renders are anti-aliased signed-distance shapes on a white background. ``color`` runs
continuously from red (0) to blue (1); the color-biased dataset ties the majority color to each
shape (triangles red, squares blue) with probability ``bias``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..utils import resize_square

RED = torch.tensor([0.85, 0.10, 0.10])
BLUE = torch.tensor([0.10, 0.15, 0.85])
SHAPES = ("triangle", "square")  # label 0, 1
COLORS = ("red", "blue")  # color group 0, 1
BIAS_LEVELS = (0.98, 0.95, 0.90, 0.85, 0.80)


@dataclass
class ShapeParams:
    """Per-image parameters, each a tensor of shape (N,)."""

    shape: torch.Tensor  # 0 triangle, 1 square
    color: torch.Tensor  # 0 red .. 1 blue
    angle: torch.Tensor  # radians
    scale: torch.Tensor  # circumradius as a fraction of the image side
    cx: torch.Tensor  # center, fraction of the side
    cy: torch.Tensor


def _polygon_sdf(px, py, n_sides, angle, radius):
    """Signed distance (negative inside) to a regular polygon; px, py (N, H, W)."""
    theta = torch.atan2(py, px) - angle[:, None, None]
    r = torch.sqrt(px**2 + py**2)
    sector = 2 * math.pi / n_sides[:, None, None]
    apothem = radius[:, None, None] * torch.cos(math.pi / n_sides[:, None, None])
    local = torch.remainder(theta, sector) - sector / 2
    return r * torch.cos(local) - apothem


def render(params: ShapeParams, size: int = 128) -> torch.Tensor:
    """Render shapes -> (N, 3, size, size) in [0, 1]."""
    n = len(params.shape)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    px = xx[None] - params.cx[:, None, None]
    py = yy[None] - params.cy[:, None, None]
    sides = torch.where(params.shape > 0.5, 4.0, 3.0).float()
    sdf = _polygon_sdf(px, py, sides, params.angle, params.scale)
    alpha = torch.sigmoid(-sdf * size * 1.5)[:, None]  # ~1 px anti-aliasing
    rgb = (1 - params.color[:, None]) * RED[None] + params.color[:, None] * BLUE[None]
    img = alpha * rgb[:, :, None, None] + (1 - alpha) * torch.ones(n, 3, 1, 1)
    return img.clamp(0, 1)


def sample_params(n: int, colors: torch.Tensor, shapes: torch.Tensor,
                  generator: torch.Generator, color_jitter: float = 0.12) -> ShapeParams:
    """Random pose/size for given color groups (0 red, 1 blue) and shapes (0 tri, 1 sq)."""
    u = lambda: torch.rand(n, generator=generator)  # noqa: E731
    jitter = u() * color_jitter
    color = torch.where(colors > 0, 1 - jitter, jitter)
    return ShapeParams(shape=shapes.float(), color=color, angle=u() * 2 * math.pi,
                       scale=0.22 + 0.14 * u(), cx=0.35 + 0.3 * u(), cy=0.35 + 0.3 * u())


def render_splatters(n: int, generator: torch.Generator, size: int = 128,
                     blobs: int = 7) -> torch.Tensor:
    """Irregular blobs of mixed red/blue/purple: the objective's negative prompt."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    img = torch.ones(n, 3, size, size)
    for _ in range(blobs):
        cx, cy = (0.15 + 0.7 * torch.rand(2, n, generator=generator))
        rad = 0.04 + 0.12 * torch.rand(n, generator=generator)
        aspect = 0.5 + torch.rand(n, generator=generator)
        d = ((xx[None] - cx[:, None, None]) ** 2 * aspect[:, None, None]
             + (yy[None] - cy[:, None, None]) ** 2 / aspect[:, None, None])
        alpha = torch.sigmoid((rad[:, None, None] ** 2 - d) * size * 6)[:, None]
        c = torch.rand(n, generator=generator)
        rgb = (1 - c[:, None]) * RED[None] + c[:, None] * BLUE[None]
        img = alpha * rgb[:, :, None, None] + (1 - alpha) * img
    return img.clamp(0, 1)


def biased_groups(n: int, bias: float, generator: torch.Generator):
    """Shapes balanced 50/50; color = the shape's majority color with probability ``bias``
    (triangles red, squares blue)."""
    if not 0.5 <= bias <= 1.0:
        raise ValueError(f"bias must be in [0.5, 1], got {bias}")
    shapes = (torch.rand(n, generator=generator) < 0.5).long()
    majority = torch.rand(n, generator=generator) < bias
    colors = torch.where(majority, shapes, 1 - shapes)
    return colors, shapes


def balanced_groups(n: int):
    """Exactly n/4 of each (color, shape) group."""
    if n % 4:
        raise ValueError("a balanced set needs n divisible by 4")
    g = torch.arange(n) % 4
    return g // 2, g % 2  # colors, shapes


class ShapesDataset(Dataset):
    """Rendered shapes with labels (shape) and groups (color, shape); deterministic under seed.

    Args:
        n: number of images.
        bias: color bias in [0.5, 1]; None gives an exactly balanced set (evaluation).
        size: output resolution.
        seed: all randomness (groups, poses, augmentations' base seed) derives from it.
        augment: the paper's augmentations (random rotation, random resized crop).
    """

    def __init__(self, n: int, bias: float | None, size: int = 64, seed: int = 0,
                 augment: bool = False):
        if n < 1:
            raise ValueError(f"a shapes dataset needs n >= 1 images, got {n}")
        g = torch.Generator().manual_seed(seed)
        if bias is None:
            colors, shapes = balanced_groups(n)
        else:
            colors, shapes = biased_groups(n, bias, g)
        self.params = sample_params(n, colors, shapes, g)
        self.images = torch.cat([render(_slice(self.params, i, i + 512), size)
                                 for i in range(0, n, 512)])
        self.labels = shapes
        self.colors = colors
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def groups(self) -> torch.Tensor:
        """Group id 0..3 = 2 * color + shape."""
        return 2 * self.colors + self.labels

    def __getitem__(self, i):
        x = self.images[i]
        if self.augment:
            x = augment_shapes(x[None])[0]
        return x, self.labels[i]


def augment_shapes(x: torch.Tensor) -> torch.Tensor:
    """The project's shape augmentations, for a whole batch at once: a random rotation (+-30
    degrees, white fill) and a random resized crop (70-100% of the area, aspect 3/4-4/3),
    composed into one affine resampling per image (torch's global RNG: seeded runs repeat).
    The released code's training rotated each batch by one random angle in +-180 degrees."""
    import math

    import torch.nn.functional as F

    b = x.shape[0]
    u = torch.rand(b, 5, device=x.device)
    angle = math.radians(30) * (2 * u[:, 0] - 1)
    area = 0.7 + 0.3 * u[:, 1]
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 2]
    sw = (area * log_ratio.exp()).sqrt().clamp(max=1)  # crop size / image size
    sh = (area / log_ratio.exp()).sqrt().clamp(max=1)
    cx, cy = (1 - sw) * (2 * u[:, 3] - 1), (1 - sh) * (2 * u[:, 4] - 1)  # crop centre
    cos, sin = angle.cos(), angle.sin()
    # output (normalised) -> crop box -> rotated about the centre -> input
    theta = torch.stack([torch.stack([cos * sw, -sin * sh, cos * cx - sin * cy], 1),
                         torch.stack([sin * sw, cos * sh, sin * cx + cos * cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # white outside the image: sample x - 1 with zero padding, add 1 back
    return (F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False) + 1).clamp(0, 1)


def _slice(p: ShapeParams, a: int, b: int) -> ShapeParams:
    return ShapeParams(*(getattr(p, f)[a:b] for f in ShapeParams.__dataclass_fields__))


def group_names() -> list[str]:
    """The four color x shape group names: "red triangle", "red square", "blue triangle",
    "blue square"."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def class_balance(colors: np.ndarray, shapes: np.ndarray) -> dict[str, float]:
    """Share of each color x shape group (by :func:`group_names`) among the labels
    ``colors`` (0 red, 1 blue) and ``shapes`` (0 triangle, 1 square)."""
    out = {}
    for c in range(2):
        for s in range(2):
            out[f"{COLORS[c]} {SHAPES[s]}"] = float(np.mean((colors == c) & (shapes == s)))
    return out


# --- the released code's shapes (``shapes/dataset.py``, ``shapes/train.py``) -------------------
RELEASED_SIZE = 128  # its images' side
# its colors, as 8-bit RGB (``torch.tensor([216, 27, 96]).div(255)``)
RELEASED_RED, RELEASED_BLUE = (216, 27, 96), (30, 136, 229)


def released_base_shapes() -> torch.Tensor:
    """The released dataset's four base images (4, 3, 128, 128) on black: red triangle, blue
    triangle, red square, blue square. Its triangle: for column 32 + i (i < 64), rows
    32 + j for |32 - i| <= j < 32; its square: rows and columns 46..81."""
    data = torch.zeros(4, 3, RELEASED_SIZE, RELEASED_SIZE)
    i = torch.arange(64)[None, :]
    j = torch.arange(64)[:, None]
    triangle = torch.zeros(RELEASED_SIZE, RELEASED_SIZE, dtype=torch.bool)
    triangle[32:96, 32:96] = (j >= (32 - i).abs()) & (j < 32)
    square = torch.zeros_like(triangle)
    square[46:82, 46:82] = True
    for k, (mask, rgb) in enumerate([(triangle, RELEASED_RED), (triangle, RELEASED_BLUE),
                                     (square, RELEASED_RED), (square, RELEASED_BLUE)]):
        data[k][:, mask] = torch.tensor(rgb).div(255)[:, None]
    return data


def released_base_index(n: int, bias: float) -> np.ndarray:
    """Which base image each of the released dataset's ``n`` items shows, by position: the
    first half triangles (red while ``idx < n // 2 * bias``), the second squares (blue while
    ``idx < n // 2 * bias + n // 2``). ``n`` even: the released code fails on an odd one."""
    if n % 2:
        raise ValueError(f"the released shapes dataset needs an even number of images (half "
                         f"triangles, half squares; its code fails on the last of an odd "
                         f"number), got {n}")
    idx = np.arange(n)
    half = n // 2
    return np.select([idx < half * bias, idx < half, idx < half * bias + half],
                     [0, 1, 3], default=2)


def _released_transform():
    import torchvision.transforms as T

    return T.Compose([T.ToPILImage(), T.RandomRotation(180),
                      T.RandomResizedCrop(RELEASED_SIZE, scale=(0.5, 2)), T.ToTensor()])


class ReleasedShapesDataset(ShapesDataset):
    """The released ``ShapesDataset(size=n, color_bias=bias, stable=...)``'s images: each
    item its base image (:func:`released_base_index`) rotated by up to +-180 degrees,
    random-resized-cropped (scale 0.5-2) to 128 px, through 8 bits, its black pixels (all
    channels below 0.5: the background and the rotation's corners) made white. Drawn in item
    order from torch's global generator seeded with ``seed``, as the released code drew its
    stored sets (the caller's RNG state is left as it was). ``bias=None``: 0.5, its balanced
    test set. ``size`` other than 128 resizes the images afterwards (for small checks).

    ``labels``: 0 triangle, 1 square; ``colors``: 0 red, 1 blue (the released code's own
    color flag marks the majority color instead).
    """

    def __init__(self, n: int, bias: float | None, size: int = RELEASED_SIZE, seed: int = 0):
        if n < 1:
            raise ValueError(f"a shapes dataset needs n >= 1 images, got {n}")
        bias = 0.5 if bias is None else bias
        if not 0.5 <= bias <= 1.0:
            raise ValueError(f"bias must be in [0.5, 1], got {bias}")
        base, index = released_base_shapes(), released_base_index(n, bias)
        transform = _released_transform()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            images = torch.stack([transform(base[k]) for k in index])
        images[(images < 0.5).all(dim=1, keepdim=True).expand_as(images)] = 1.0
        self.images = resize_square(images, size)
        self.labels = torch.as_tensor(index // 2)
        self.colors = torch.as_tensor(index % 2)
        self.augment = False  # (its augmentation is the training's: released_batch_rotation)
        self.seed = seed


def released_batch_rotation(x: torch.Tensor) -> torch.Tensor:
    """The released training's augmentation: ``transforms.RandomRotation(180)`` on the whole
    batch, so one angle for all its images (nearest neighbour, black corners), from torch's
    global generator."""
    import torchvision.transforms as T

    return T.RandomRotation(180)(x)


def shapes_datasets(style: str) -> tuple[type, Any]:
    """The real shapes sets and their training augmentation: ``"project"`` (this project's
    renders, :func:`augment_shapes`) or ``"released"`` (:class:`ReleasedShapesDataset`,
    :func:`released_batch_rotation`)."""
    if style == "project":
        return ShapesDataset, augment_shapes
    if style == "released":
        return ReleasedShapesDataset, released_batch_rotation
    raise ValueError(f"shapes_data must be 'project' (this project's renders) or 'released' "
                     f"(the released code's shapes/dataset.py), got {style!r}")
