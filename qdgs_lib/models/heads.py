"""Margin softmax heads: AdaFace (Kim et al., 2022), ArcFace, CosFace.

Each head holds the class-center matrix W (embedding_dim, num_classes) and maps (unit
embeddings, norms, labels) -> logits for cross-entropy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _MarginHead(nn.Module):
    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, eps: float = 1e-3):
        super().__init__()
        # unit-norm class centres, as AdaFace's and InsightFace's heads start: the logits use
        # the normalized kernel, so a centre's angular step per SGD step scales with
        # 1/|w|^2, and uniform(-1, 1) columns (norm sqrt(d/3): 13 for 512-d) learn ~100x slower
        self.kernel = nn.Parameter(
            torch.empty(embedding_dim, num_classes).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))
        self.s, self.eps = s, eps

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return (emb @ F.normalize(self.kernel, dim=0)).clamp(-1 + self.eps, 1 - self.eps)


class CosFace(_MarginHead):
    """CosFace: an additive cosine margin; the target logit is s * (cos(theta) - m), others
    s * cos(theta) (``norms`` are unused)."""

    def __init__(self, embedding_dim, num_classes, m: float = 0.4, s: float = 64.0):
        super().__init__(embedding_dim, num_classes, s)
        self.m = m

    def forward(self, emb, norms, labels):
        """Unit embeddings (B, D), their norms (unused) and labels (B,) -> logits (B, num_classes),
        the target's with the cosine margin."""
        cos = self.cosine(emb)
        onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return self.s * (cos - self.m * onehot)


class ArcFace(_MarginHead):
    """ArcFace: an additive angular margin; the target logit is s * cos(theta + m), others
    s * cos(theta), with angles clamped to [eps, pi - eps] (``norms`` are unused)."""

    def __init__(self, embedding_dim, num_classes, m: float = 0.5, s: float = 64.0):
        super().__init__(embedding_dim, num_classes, s)
        self.m = m

    def forward(self, emb, norms, labels):
        """Unit embeddings (B, D), their norms (unused) and labels (B,) -> logits (B, num_classes),
        the target's with the angular margin."""
        cos = self.cosine(emb)
        onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        theta = torch.acos(cos)
        theta_m = (theta + self.m * onehot).clamp(self.eps, math.pi - self.eps)
        return self.s * torch.cos(theta_m)


class AdaFace(_MarginHead):
    """AdaFace: the margin adapts to image quality, proxied by the feature norm.

    With z = clip((||f|| - mu) / (sigma + eps) * h, -1, 1) (mu, sigma: EMA of the batch's norm
    statistics), the target logit is s * (cos(theta - m z) - (m + m z)); others s * cos(theta).
    """

    def __init__(self, embedding_dim, num_classes, m: float = 0.4, h: float = 0.333,
                 s: float = 64.0, t_alpha: float = 0.01):
        super().__init__(embedding_dim, num_classes, s)
        self.m, self.h, self.t_alpha = m, h, t_alpha
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """Feature norms -> the margin scale z (B,) in [-1, 1]: each norm standardized by the EMA
        batch statistics, times ``h``. In training mode it first moves those EMAs (rate ``t_alpha``)
        towards this batch's norms; no gradient reaches the norms."""
        n = norms.detach().clamp(0.001, 100).view(-1)
        if self.training:
            with torch.no_grad():
                mean, std = n.mean(), n.std() if len(n) > 1 else torch.zeros(())
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * mean)
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * std)
        z = (n - self.batch_mean) / (self.batch_std + self.eps) * self.h
        return z.clamp(-1, 1)

    def forward(self, emb, norms, labels):
        """Unit embeddings (B, D), their norms (B, 1) and labels (B,) -> logits (B, num_classes),
        the target's margin scaled by :meth:`margin_scaler` (which updates the norm statistics in
        training mode)."""
        cos = self.cosine(emb)
        z = self.margin_scaler(norms)[:, None]
        onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        theta = torch.acos(cos)
        g_angle = -self.m * z * onehot  # angular margin, on the target only
        theta_m = (theta + g_angle).clamp(self.eps, math.pi - self.eps)
        g_add = (self.m + self.m * z) * onehot  # additive margin, on the target only
        return self.s * (torch.cos(theta_m) - g_add)


HEADS = {"adaface": AdaFace, "arcface": ArcFace, "cosface": CosFace}


def build_head(name: str, embedding_dim: int, num_classes: int, **kw) -> nn.Module:
    """The head ``name`` ("adaface", "arcface" or "cosface") over ``num_classes``
    identities; ``kw``: its own settings (``m``, ``s``, ...)."""
    if name not in HEADS:
        raise ValueError(f"unknown head '{name}'; choose from {sorted(HEADS)}")
    return HEADS[name](embedding_dim, num_classes, **kw)
