"""AdaFace's training augmentations, on a batch wherever it lives (e.g. on the GPU).

AdaFace's ``Augmenter`` (the paper trains with each of its three augmentations at p = 0.2)
crops, lowers the resolution and jitters the colours of a sample, then the loader flips it
horizontally half of the time. Two styles of the same draws:

- ``"project"`` (the offline profiles): float math on RGB in [0, 1], torch's interpolations
  (cv2's five less Lanczos) and torchvision's tensor ``ColorJitter``.
- ``"released"`` (the paper profiles): as the paper's released pipeline ran it. Its datasets
  flip RGB to BGR before augmenting and hand PIL the BGR array as if it were RGB, so
  ``ColorJitter``'s gray level (contrast, saturation) weighs blue as red; every step works on
  uint8 (PIL's blends truncate); the low resolution draws among all five of cv2's
  interpolations, Lanczos included, here as matrices that equal ``cv2.resize`` within one gray
  level (``scripts/check_against_released.py`` compares the whole chain with the released
  ``Augmenter``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

AUGMENT_STYLES = ("project", "released")
# cv2's interpolations in AdaFace's low-resolution augmentation: the project style has all but
# Lanczos (torch has none), the released style all five
_TORCH_MODES = ("nearest", "bilinear", "area", "bicubic")
CV2_INTERPOLATIONS = ("nearest", "linear", "area", "cubic", "lanczos4")


def _resized_crop_box(h: int, w: int, g: torch.Generator, scale=(0.2, 1.0),
                      ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` (top, left, height, width), drawn
    from ``g``."""
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = h * w * (scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=g)))
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(torch.rand((), generator=g)))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            return top, left, ch, cw
    # torchvision's fallback: a centred crop at the nearest allowed aspect ratio
    if w / h < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif w / h > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _gray(img: torch.Tensor) -> torch.Tensor:
    """torchvision's ``rgb_to_grayscale`` weights (ITU-R 601-2 luma), one channel."""
    r, gr, b = img.unbind(-3)
    return (0.2989 * r + 0.587 * gr + 0.114 * b).unsqueeze(-3)


def color_jitter(img: torch.Tensor, order: list[int], factors: list[float]) -> torch.Tensor:
    """torchvision's ``adjust_brightness`` (0), ``adjust_contrast`` (1) and
    ``adjust_saturation`` (2) in ``order``, with ``factors`` indexed by those numbers; RGB in
    [0, 1], clamped after each as torchvision does."""
    for k in order:
        f = factors[k]
        if k == 0:
            img = (img * f).clamp(0, 1)
        elif k == 1:  # around the image's mean gray level
            img = (img * f + (1 - f) * _gray(img).mean((-3, -2, -1), keepdim=True)).clamp(0, 1)
        else:  # towards each pixel's gray
            img = (img * f + (1 - f) * _gray(img)).clamp(0, 1)
    return img


# --- the released style: PIL's uint8 arithmetic and cv2's resize --------------------------------

def _pil_gray(levels: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")`` of one image's uint8 levels (float, channels first, in PIL's
    order), fixed point as PIL computes it: every sum stays below 2**24, exact in float32."""
    c0, c1, c2 = levels.unbind(-3)
    return torch.floor((c0 * 19595 + c1 * 38470 + c2 * 7471 + 32768) / 65536).unsqueeze(-3)


def _pil_blend(degenerate: torch.Tensor, levels: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ``Image.blend`` in float32 as its C code computes it: truncated, then clipped."""
    f = torch.tensor(factor, dtype=torch.float32)
    return (degenerate + f * (levels - degenerate)).clamp(0, 255).floor()


def pil_color_jitter(levels: torch.Tensor, order: list[int], factors: list[float]
                     ) -> torch.Tensor:
    """torchvision's ``adjust_brightness`` (0), ``adjust_contrast`` (1) and
    ``adjust_saturation`` (2) on a PIL image (``ImageEnhance``), in ``order``: one image's
    uint8 levels as float32 (channels first, in the order PIL takes for R, G, B)."""
    for k in order:
        if k == 0:  # blend with black
            levels = _pil_blend(torch.zeros_like(levels), levels, factors[0])
        elif k == 1:  # with the rounded mean gray level (PIL's ImageStat, in float64; on
            # the device, so no sync)
            gray = _pil_gray(levels).double().mean((-3, -2, -1), keepdim=True)
            levels = _pil_blend(torch.floor(gray + 0.5).float().expand_as(levels), levels,
                                factors[1])
        else:  # with each pixel's gray level
            levels = _pil_blend(_pil_gray(levels).expand_as(levels), levels, factors[2])
    return levels


@lru_cache(maxsize=1024)
def _cv2_weights(n_in: int, n_out: int, mode: str) -> torch.Tensor:
    """cv2.resize's weights along one axis, (n_out, n_in) float64: its sample positions
    (pixel centres, as float32; nearest: floor(d * scale)), kernels (cubic a = -0.75;
    Lanczos a = 4 on 8 taps, normalized) and edges (replicated), no antialiasing; area: exact
    box averages down, cv2's linear-at-pixel-edges rule up."""
    if mode not in CV2_INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {mode!r}: one of {CV2_INTERPOLATIONS}")
    s = 1 / (n_out / n_in)  # as cv2 computes it: a floor at an exact integer may go either way
    d = np.arange(n_out, dtype=np.float64)
    if mode == "area" and s >= 1:  # the overlap of [d s, (d + 1) s] with each input pixel
        j = np.arange(n_in, dtype=np.float64)
        overlap = np.minimum((d + 1)[:, None] * s, j + 1) - np.maximum(d[:, None] * s, j)
        return torch.from_numpy(np.clip(overlap, 0, None) / s)
    if mode == "nearest":
        sx, taps = np.floor(d * s), np.ones((n_out, 1))
    elif mode == "area":  # up: a copy, blended with the next pixel where a pixel edge falls
        sx = np.floor(d * s)
        fx = ((d + 1) - (sx + 1) * (n_out / n_in)).astype(np.float32)  # (floats in cv2)
        fx = np.where(fx <= 0, np.float32(0), fx - np.floor(fx)).astype(np.float64)
        taps = np.stack([1 - fx, fx], 1)
    else:
        fx = ((d + 0.5) * s - 0.5).astype(np.float32)
        sx = np.floor(fx)
        fx = (fx - sx.astype(np.float32)).astype(np.float64)
        sx = sx.astype(np.float64)
        if mode == "linear":  # left of the first centre: the first pixel
            fx, sx = np.where(sx < 0, 0.0, fx), np.maximum(sx, 0)
            taps = np.stack([1 - fx, fx], 1)
        elif mode == "cubic":
            sx = sx - 1
            taps = np.stack([_cubic(fx + 1 - k) for k in range(4)], 1)
        else:
            sx = sx - 3
            taps = np.stack([_lanczos4(fx + 3 - k) for k in range(8)], 1)
            taps /= taps.sum(1, keepdims=True)
    cols = np.clip(sx[:, None].astype(np.int64) + np.arange(taps.shape[1]), 0, n_in - 1)
    w = np.zeros((n_out, n_in))
    np.add.at(w, (np.repeat(np.arange(n_out), taps.shape[1]), cols.ravel()), taps.ravel())
    return torch.from_numpy(w)


def _cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _lanczos4(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.sin(np.pi * x) * np.sin(np.pi * x / 4) / (np.pi**2 * x * x / 4)
    return np.where(np.abs(x) < 1e-12, 1.0, k)


def cv2_resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``cv2.resize`` of images (..., H, W) to ``size`` (height, width) with one of
    :data:`CV2_INTERPOLATIONS`, as two matrix products (on any device; float results, which
    round to cv2's uint8 within one gray level)."""
    if mode not in CV2_INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {mode!r}: one of {CV2_INTERPOLATIONS}")
    h, w = img.shape[-2:]
    rows = _cv2_weights(h, size[0], mode).to(img.device, torch.float32)
    cols = _cv2_weights(w, size[1], mode).to(img.device, torch.float32)
    return rows @ img.float() @ cols.T


def _keep_box(img: torch.Tensor, crop: tuple[int, int, int, int]) -> torch.Tensor:
    """AdaFace's crop: the box (top, left, height, width) kept in place, black around it."""
    top, left, ch, cw = crop
    mask = torch.zeros(1, 1, *img.shape[-2:], dtype=img.dtype, device=img.device)
    mask[..., top:top + ch, left:left + cw] = 1
    return img * mask


def released_augment_one(levels: torch.Tensor, crop: tuple[int, int, int, int] | None = None,
                         low_res: tuple[int, str, str] | None = None,
                         jitter: tuple[list[int], list[float]] | None = None) -> torch.Tensor:
    """The released ``Augmenter.augment`` on one image with its draws given: uint8 levels
    as float32, (1, 3, H, W), channels as the released datasets hold them (BGR).

    ``crop``: (top, left, height, width) kept in place on black; ``low_res``: (side, down,
    up), down to side x side and back with those cv2 interpolations, rounded and clipped to
    uint8 each way; ``jitter``: (order, factors) of :func:`pil_color_jitter`."""
    h, w = levels.shape[-2:]
    if crop is not None:
        levels = _keep_box(levels, crop)
    if low_res is not None:
        side, down, up = low_res
        levels = cv2_resize(levels, (side, side), down).round().clamp(0, 255)
        levels = cv2_resize(levels, (h, w), up).round().clamp(0, 255)
    if jitter is not None:
        levels = pil_color_jitter(levels, *jitter)
    return levels


def draw_augmentation(apply: list[bool], h: int, w: int, generator: torch.Generator,
                      modes: tuple[str, ...] = CV2_INTERPOLATIONS) -> tuple:
    """One sample's draws for :func:`released_augment_one` (crop, low_res, jitter; None where
    ``apply`` (crop, low resolution, photometric) is off), in :func:`face_augment`'s order:
    the crop box; the low resolution's side (0.2-1 of ``h``) and two of ``modes``; the jitter's
    order of brightness, contrast and saturation, and their factors in [0.5, 1.5)."""
    crop = _resized_crop_box(h, w, generator) if apply[0] else None
    low_res = jitter = None
    if apply[1]:
        side = max(int(h * (0.2 + 0.8 * float(torch.rand((), generator=generator)))), 1)
        down, up = (modes[int(k)] for k in torch.randint(0, len(modes), (2,), generator=generator))
        low_res = side, down, up
    if apply[2]:
        order = torch.randperm(3, generator=generator).tolist()
        jitter = order, (0.5 + torch.rand(3, generator=generator)).tolist()
    return crop, low_res, jitter


def face_augment(x: torch.Tensor, generator: torch.Generator,
                 p: float | tuple[float, float, float] = 0.2, flip: bool = True,
                 style: str = "project") -> torch.Tensor:
    """AdaFace's training augmentations (its ``Augmenter`` with the paper's probability
    ``p`` = 0.2 each, or one per augmentation (crop, low resolution, photometric), then
    ``RandomHorizontalFlip``), on RGB images in [0, 1]:

    1. crop: torchvision's ``RandomResizedCrop`` box (area 0.2-1, aspect 3/4-4/3) kept at its
       place, everything around it black (not resized: the face shrinks, as in AdaFace);
    2. low resolution: down to a square of side 0.2-1 of the height and back up, each way
       with a random interpolation (AdaFace draws among cv2's five; ``style`` "project" has
       torch's four, "released" all five);
    3. photometric: ``ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5)``, the three
       in a random order, each clamped as torchvision does;
    4. a horizontal flip with probability 0.5 (``flip``).

    ``style`` (module docstring): "project" in float on RGB, "released" as the released
    pipeline (uint8, the colour jitter on BGR, cv2's interpolations; its output, like
    ``ToTensor``'s, is levels / 255). The random draws come from ``generator`` on the host
    (no device sync); the image math runs where ``x`` is, e.g. on the GPU, so the loader only
    decodes. Only samples that draw one of 1-3 are touched one by one; the flip is one
    indexed copy.
    """
    if style not in AUGMENT_STYLES:
        raise ValueError(f"unknown augmentation style {style!r}: one of {AUGMENT_STYLES}")
    b, _, h, w = x.shape
    out = x.clone()
    apply = torch.rand(b, 3, generator=generator) < torch.as_tensor(p, dtype=torch.float32)
    flips = torch.rand(b, generator=generator) < 0.5
    modes = _TORCH_MODES if style == "project" else CV2_INTERPOLATIONS
    for i in torch.nonzero(apply.any(1)).flatten().tolist():
        crop, low_res, jitter = draw_augmentation(apply[i].tolist(), h, w, generator, modes)
        if style == "released":  # BGR uint8 levels in, RGB levels / 255 out
            levels = (out[i:i + 1].flip(-3) * 255).round()
            out[i:i + 1] = released_augment_one(levels, crop, low_res, jitter).flip(-3) / 255
        else:
            out[i:i + 1] = _project_augment_one(out[i:i + 1], crop, low_res, jitter)
    if flip and flips.any():
        idx = torch.nonzero(flips).flatten().to(out.device)
        out[idx] = out[idx].flip(-1)
    return out.clamp_(0, 1)


def _project_augment_one(img: torch.Tensor, crop, low_res, jitter) -> torch.Tensor:
    """The project style of :func:`released_augment_one`: RGB in [0, 1], float math."""
    h, w = img.shape[-2:]
    if crop is not None:
        img = _keep_box(img, crop)
    if low_res is not None:
        side, down, up = low_res
        img = F.interpolate(img, size=(side, side), mode=down)
        img = F.interpolate(img, size=(h, w), mode=up).clamp(0, 1)
    if jitter is not None:
        img = color_jitter(img, *jitter)
    return img
