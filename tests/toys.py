"""A tiny differentiable generator and CLIP-like model for fast, weight-free tests."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from qdgs_lib.generators.base import Generator


def interrupt_at(search, iteration: int, exc: type[BaseException]) -> None:
    """Make ``search.run`` raise ``exc`` when it reaches ``iteration`` (a simulated kill)."""
    step = search._step

    def dying_step():
        if search.iteration == iteration:
            raise exc
        step()

    search._step = dying_step


class ToyGenerator(Generator):
    """z (d) -> 3x8x8 image through a fixed random smooth map; prior N(0, prior_std^2)."""

    def __init__(self, latent_dim: int = 4, prior_std: float = 0.3, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.latent_dim = latent_dim
        self.image_size = 8
        self.prior_std = prior_std
        self.latent_norm = prior_std * latent_dim**0.5
        self.register_buffer("w1", torch.randn(latent_dim, 32, generator=g))
        self.register_buffer("w2", torch.randn(32, 3 * 8 * 8, generator=g) / 32**0.5)

    def decode(self, z):
        z = self.check_latents(z).to(self.w1.device)
        return torch.sigmoid(torch.tanh(z @ self.w1) @ self.w2).view(-1, 3, 8, 8)

    def sample_prior(self, n, seed=None):
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        return (torch.randn(n, self.latent_dim, generator=g) * self.prior_std).to(self.w1.device)


class TinyNet(nn.Module):
    """A tiny face backbone with no batch norm and no dropout: a forward pass is a pure
    function of the weights (and DDP's averaged gradients over 2 x b samples equal one
    process's gradient over the same 2b samples; BN statistics would be per process)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, 2, 1), nn.Linear(8 * 4 * 4, 16)

    def forward(self, x):
        f = self.fc(F.relu(self.conv(x)).flatten(1))
        n = f.norm(dim=1, keepdim=True)
        return f / n, n


class ToyClip(nn.Module):
    """encode_image: fixed random projection; encode_text: a vector seeded by the prompt."""

    def __init__(self, dim: int = 16, seed: int = 1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(3 * 8 * 8, dim, generator=g))
        # An offset keeps the embedding's direction smooth around the mid-gray image.
        self.register_buffer("bias", 4 * torch.randn(dim, generator=g))
        self.dim = dim
        self.name = "toy"

    @property
    def device(self):
        return self.proj.device

    def encode_image(self, images, generator=None, normalize=True, check=True):
        emb = (images.flatten(1) - 0.5) @ self.proj + self.bias
        return F.normalize(emb, dim=-1)

    def encode_text(self, prompts, normalize=True):
        out = []
        for p in prompts:
            seed = int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)
            out.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(out), dim=-1).to(self.device)


def broken_scorer(p, device):
    """A scorer builder for worker processes that fails like missing weights would."""
    raise FileNotFoundError("toy weights are missing")


def dying_scorer(p, device):
    """A scorer builder whose worker process dies at once, as an out-of-memory kill would."""
    import os

    os._exit(9)
