"""Face alignment to the ArcFace 112x112 template.

* :func:`ffhq_crop`: FFHQ-aligned generator output (StyleGAN2-FFHQ) already has the eyes and
  mouth at fixed places, so a fixed crop + resize maps it close to the template.
* :func:`similarity_transform` / :func:`warp_to_template`: the standard alignment from five
  landmarks (Umeyama similarity fit), e.g. RFW's.
* :func:`aligner`: ``"crop"``, or ``"mtcnn"``: the released code's alignment
  (:mod:`qdgs_lib.mtcnn`: MTCNN landmarks, cp2tform's similarity, its template).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
# FFHQ's alignment (its dataset script: a square of side max(4 |eye-eye|, 3.6 |eye-mouth|)
# centred 0.1 eye-mouth below the eyes) puts a face shaped like the ArcFace template with its
# eyes at y = 0.472, 0.240 of the side apart, and its mouth at y = 0.750. This box (the
# least-squares fit of the five points) maps them onto the template within 0.2 px at 112 px
# (tests/test_align.py); it is 0.765 of the side wide.
FFHQ_CROP = (0.118, 0.120, 0.882, 0.885)  # x0, y0, x1, y1 as fractions of the side


def ffhq_crop(images: torch.Tensor, size: int = 112) -> torch.Tensor:
    """Fixed template crop of FFHQ-aligned images (B, 3, H, W) -> (B, 3, size, size)."""
    _, _, h, w = images.shape
    x0, y0, x1, y1 = FFHQ_CROP
    crop = images[..., int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)]
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst
    (Umeyama, 1991); returns a 2x3 matrix."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    if src.shape != dst.shape or src.shape[1] != 2 or len(src) < 2:
        raise ValueError("need matching (N >= 2, 2) point sets")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / s.var(0).sum()
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def warp_to_template(image: torch.Tensor, landmarks: np.ndarray, size: int = 112) -> torch.Tensor:
    """Warp one image (3, H, W) so its 5 landmarks (x, y pixels) land on the ArcFace template."""
    _, h, w = image.shape
    # the template in pixel-centre coordinates (cv2's, as the landmarks): scaled about the
    # image's edge, not about the centre of its first pixel
    m = similarity_transform(landmarks, (ARCFACE_TEMPLATE + 0.5) * size / 112 - 0.5)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]  # output pixel -> input pixel
    ys, xs = np.meshgrid(np.arange(size) + 0.0, np.arange(size) + 0.0, indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    src = inv @ pts
    grid = torch.tensor(np.stack([src[0] / (w - 1) * 2 - 1, src[1] / (h - 1) * 2 - 1], -1),
                        dtype=image.dtype, device=image.device).view(1, size, size, 2)
    return F.grid_sample(image[None], grid, mode="bilinear", align_corners=True)[0]


def aligner(method: str, size: int = 112, mtcnn_weights: str | os.PathLike | None = None):
    """``"crop"`` (fixed template crop of FFHQ-aligned images) or ``"mtcnn"`` (the released
    code's alignment, :func:`qdgs_lib.mtcnn.mtcnn_aligner`, with the weights in the folder
    ``mtcnn_weights``)."""
    if method == "crop":
        return lambda x: ffhq_crop(x, size)
    if method == "mtcnn":
        from .mtcnn import mtcnn_aligner

        if mtcnn_weights is None:
            raise ValueError("MTCNN alignment needs its weights folder (mtcnn_weights)")
        return mtcnn_aligner(mtcnn_weights, size)
    raise ValueError(f"unknown alignment {method!r}: use 'crop' or 'mtcnn'")
