"""Toy faces: an offline, differentiable face renderer with an FFHQ-like biased prior.

Faces are drawn from soft (sigmoid) signed-distance shapes, so images are differentiable in the
latent. The 16-d latent splits into

* attributes: skin tone, age, hair length, masculinity (z[0:4]);
* identity geometry: face width/height, eye height/spacing/size, brow height, nose length/width
  (z[4:12]);
* nuisance: horizontal/vertical shift, lighting direction, expression (z[12:16]).

The prior is N(0, I), and the attributes are squashed thresholds of it chosen so that, like
FFHQ, light skin outnumbers dark about 7:1 (dark = skin > 0.5, P(z0 > 1.2) = 11.5%) and young
outnumbers old 2:1 (old = age > 0.5, P(z1 > 0.43) = 33%). Facial features are drawn as a
*fraction* of the skin color, so their absolute contrast shrinks on dark skin: a recognizer that
saw few dark faces really is worse there.
"""

from __future__ import annotations

import torch

from .base import Generator

LATENT_DIM = 16
SKIN, AGE, HAIR, MASC = 0, 1, 2, 3
IDENTITY = slice(4, 12)
NUISANCE = slice(12, 16)
ATTRIBUTES = ("skin", "age", "hair", "masc")

LIGHT_SKIN = torch.tensor([0.95, 0.80, 0.68])
DARK_SKIN = torch.tensor([0.34, 0.21, 0.14])
BACKGROUND = torch.tensor([0.80, 0.84, 0.90])
GRAY_HAIR = torch.tensor([0.78, 0.78, 0.80])
LIP = torch.tensor([0.75, 0.30, 0.32])


def attributes(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """True attributes in [0, 1]: skin (1 = dark), age (1 = old), hair (1 = long),
    masc (1 = masculine); and the identity/nuisance parameters in [-1, 1]."""
    return {
        "skin": torch.sigmoid(2.5 * (z[:, SKIN] - 1.2)),
        "age": torch.sigmoid(2.5 * (z[:, AGE] - 0.43)),
        "hair": torch.sigmoid(2.0 * z[:, HAIR]),
        "masc": torch.sigmoid(2.0 * z[:, MASC]),
        "id": torch.tanh(0.8 * z[:, IDENTITY]),
        "nuisance": torch.tanh(0.8 * z[:, NUISANCE]),
    }


def _ellipse(x, y, cx, cy, rx, ry, sharp):
    """Soft mask of an ellipse; all centers/radii (B, 1, 1)."""
    d = torch.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + 1e-8) - 1
    return torch.sigmoid(-d * torch.minimum(rx, ry) * sharp)


def _mix(img, color, mask):
    """Paint ``color`` (B, 3) over ``img`` (B, 3, H, W) with ``mask`` (B, H, W)."""
    return img + (color[:, :, None, None] - img) * mask[:, None]


def _darken(img, amount, mask):
    """Scale ``img`` down by ``amount`` (float or (B,)) inside ``mask`` (B, H, W)."""
    if torch.is_tensor(amount):
        amount = amount.view(-1, 1, 1, 1)
    return img * (1 - amount * mask[:, None])


def render(z: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Latents (B, 16) -> faces (B, 3, size, size) in [0, 1]."""
    b = z.shape[0]
    a = attributes(z)
    dev, dt = z.device, z.dtype
    sharp = size * 0.9  # edge softness ~ 1 px
    coords = torch.linspace(-1, 1, size, device=dev, dtype=dt)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    r = lambda v: v[:, None, None]  # noqa: E731  (B,) -> (B, 1, 1)
    i, n = a["id"], a["nuisance"]
    x = xx[None] - r(0.08 * n[:, 0])
    y = yy[None] - r(0.06 * n[:, 1])
    skin, age, hair, masc = a["skin"], a["age"], a["hair"], a["masc"]

    skin_rgb = LIGHT_SKIN.to(dev, dt) + (DARK_SKIN - LIGHT_SKIN).to(dev, dt) * skin[:, None]
    base_hair = 0.35 * (1 - 0.6 * skin[:, None]) * torch.tensor([1.0, 0.75, 0.55], device=dev,
                                                                dtype=dt)
    hair_rgb = base_hair + (GRAY_HAIR.to(dev, dt) - base_hair) * (age[:, None] ** 1.5)
    img = BACKGROUND.to(dev, dt)[None, :, None, None].expand(b, 3, size, size).clone()

    face_rx = 0.50 + 0.06 * i[:, 0] + 0.05 * masc
    face_ry = 0.64 + 0.05 * i[:, 1]
    # long hair behind the face: a rounded column reaching down with ``hair``
    hair_len = 0.05 + 0.85 * hair
    back = _ellipse(x, y, r(0 * hair), r(-0.1 + hair_len / 2), r(face_rx + 0.13),
                    r(0.62 + hair_len / 2), sharp)
    img = _mix(img, hair_rgb, back * r(hair.clamp(0.15, 1)))
    face = _ellipse(x, y, r(0 * hair), r(0.05 + 0 * hair), r(face_rx), r(face_ry), sharp)
    img = _mix(img, skin_rgb, face)
    # masculine cue: a darker jaw/beard shadow
    jaw = _ellipse(x, y, r(0 * hair), r(0.45 + 0 * hair), r(face_rx * 0.8), r(0.28 + 0 * hair),
                   sharp * 0.3) * face
    img = _darken(img, 0.22 * masc**2, jaw)
    # eyes, brows, nose, mouth: darkening by a fraction of the skin color
    eye_y = -0.08 + 0.07 * i[:, 2]
    eye_dx = 0.22 + 0.06 * i[:, 3]
    eye_r = 0.075 + 0.025 * i[:, 4]
    brow_y = eye_y - 0.15 - 0.04 * i[:, 5]
    expr = n[:, 3]
    for side in (-1.0, 1.0):
        eye = _ellipse(x, y, r(side * eye_dx), r(eye_y), r(eye_r), r(eye_r * 0.65), sharp)
        img = _darken(img, 0.75, eye)
        brow = _ellipse(x, y, r(side * eye_dx), r(brow_y), r(eye_r * 1.5),
                        r(0.025 + 0.02 * masc), sharp)
        img = _darken(img, 0.6, brow)
        # age: crow's feet (a soft darkening beside each eye)
        crow = _ellipse(x, y, r(side * (eye_dx + eye_r + 0.06)), r(eye_y), r(0.04 + 0 * expr),
                        r(0.05 + 0 * expr), sharp * 0.5)
        img = _darken(img, 0.25 * age, crow)
    nose_len = 0.14 + 0.05 * i[:, 6]
    nose = _ellipse(x, y, r(0 * expr), r(eye_y + 0.08 + nose_len / 2), r(0.045 + 0.02 * i[:, 7]),
                    r(nose_len / 2), sharp * 0.6)
    img = _darken(img, 0.28, nose)
    mouth_y = eye_y + 0.16 + nose_len + 0.08
    mouth = _ellipse(x, y, r(0 * expr), r(mouth_y), r(0.17 + 0.04 * i[:, 0] + 0.03 * expr),
                     r(0.035 + 0.03 * (1 - masc) * 0.5 + 0.02 * expr.clamp(min=0)), sharp)
    lip = skin_rgb * 0.55 + LIP.to(dev, dt) * 0.45 * (1 - 0.7 * skin[:, None])
    img = _mix(img, lip * (1 - 0.35 * masc[:, None]), mouth * 0.9)
    # age: forehead wrinkles
    for k, wy in enumerate((-0.50, -0.42, -0.34)):
        line = _ellipse(x, y, r(0 * expr), r(wy + 0 * expr), r(0.28 - 0.04 * k + 0 * expr),
                        r(0.012 + 0 * expr), sharp * 0.7) * face
        img = _darken(img, 0.35 * age, line)
    # hair on top of the head (a cap), for every hair length
    cap = _ellipse(x, y, r(0 * expr), r(-0.52 + 0 * expr), r(face_rx + 0.06), r(0.36 + 0 * expr),
                   sharp) * torch.sigmoid(-(y + 0.42 - 0.05 * r(i[:, 1])) * sharp)
    img = _mix(img, hair_rgb, cap)
    # lighting: a horizontal gradient and overall gain
    light = 1 + 0.18 * r(n[:, 2]) * x
    img = img * light[:, None]
    return img.clamp(0, 1)


class ToyFaces(Generator):
    """The toy-face world as a :class:`Generator` (latent 16, N(0, I) prior, 64x64)."""

    def __init__(self, image_size: int = 64):
        super().__init__()
        self.latent_dim = LATENT_DIM
        self.image_size = image_size
        self.latent_norm = float(LATENT_DIM**0.5)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return render(self.check_latents(z).to(self._anchor.device), self.image_size)

    def sample_prior(self, n: int, seed: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        return torch.randn(n, LATENT_DIM, generator=g).to(self._anchor.device)

    @staticmethod
    def attributes(z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The toy world's true attributes of latents (B, latent_dim), as :func:`attributes` gives
        them."""
        return attributes(z)


def balanced_latents(n: int, generator: torch.Generator) -> torch.Tensor:
    """Latents whose attributes are spread roughly uniformly over [0, 1] (unlike the biased
    prior): the faces CLIP's training renders and the measure calibration use these."""
    z = torch.randn(n, LATENT_DIM, generator=generator)
    z[:, SKIN] = 1.2 + 2.0 * (torch.rand(n, generator=generator) - 0.5) * 2
    z[:, AGE] = 0.43 + 2.0 * (torch.rand(n, generator=generator) - 0.5) * 2
    z[:, HAIR:MASC + 1] = 2.4 * (torch.rand(n, 2, generator=generator) - 0.5) * 2
    return z


def same_identity(z: torch.Tensor, n: int, generator: torch.Generator,
                  nuisance_std: float = 1.0, jitter: float = 0.05) -> torch.Tensor:
    """``n`` views of each identity in ``z`` (B, 16) -> (B * n, 16): nuisance resampled,
    identity and attributes kept (with a small jitter)."""
    views = z.repeat_interleave(n, 0).clone()
    noise = torch.randn(views.shape, generator=generator).to(z.device)
    views[:, NUISANCE] = noise[:, NUISANCE] * nuisance_std
    views[:, :12] = views[:, :12] + jitter * noise[:, :12]
    return views


def toy_latent_offsets(k: int, seed: int = 0, identity_jitter: float = 0.05) -> torch.Tensor:
    """Latent augmentations for toy faces: new pose/lighting/expression, same person."""
    g = torch.Generator().manual_seed(seed)
    off = identity_jitter * torch.randn(k, LATENT_DIM, generator=g)
    off[:, NUISANCE] = torch.randn(k, NUISANCE.stop - NUISANCE.start, generator=g)
    off[0] = 0  # the solution itself is always the first image
    return off
