"""The shapes VAE: latent 6, 128x128 RGB, trained on color-biased shape renders.

Trained by ``scripts/train_shapes_vae.py`` on shapes with color bias 0.9, so its prior is
biased like the data; far from the prior it decodes to blobs ("splatters").
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..paths import shipped_weights_fix, weights_dir
from .base import Generator

WEIGHTS_FILE = "shapes_vae.safetensors"


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class ShapesVAE(Generator):
    def __init__(self, latent_dim: int = 6, width: int = 16):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_size = 128
        self.latent_norm = latent_dim**0.5  # E|z| for z ~ N(0, I), approximately
        w = width
        # 128 -> 64 -> 32 -> 16 -> 8 -> 4
        self.encoder = nn.Sequential(_down(3, w), _down(w, w), _down(w, 2 * w), _down(2 * w, 4 * w),
                                     _down(4 * w, 4 * w), nn.Flatten(),
                                     nn.Linear(4 * w * 16, 2 * latent_dim))
        self.fc = nn.Linear(latent_dim, 4 * w * 16)
        self.decoder = nn.Sequential(_up(4 * w, 4 * w), _up(4 * w, 2 * w), _up(2 * w, w),
                                     _up(w, w), nn.Upsample(scale_factor=2, mode="nearest"),
                                     nn.Conv2d(w, 3, 3, 1, 1))
        self.width = w

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = self.check_latents(z).to(self.device)  # latents may come from the host
        h = self.fc(z).view(-1, 4 * self.width, 4, 4)
        return torch.sigmoid(self.decoder(h))

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z), mu, logvar

    def sample_prior(self, n: int, seed: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        return torch.randn(n, self.latent_dim, generator=g).to(self.device)


def load_shapes_vae(path: str | Path | None = None, device: str | torch.device = "auto"
                    ) -> ShapesVAE:
    """The shipped shapes VAE (``data/weights/shapes_vae.safetensors``), in eval mode."""
    path = Path(path) if path else weights_dir() / WEIGHTS_FILE
    fix = shipped_weights_fix(WEIGHTS_FILE, "train_shapes_vae.py")
    if not path.is_file():
        raise FileNotFoundError(f"shapes VAE weights not found at {path}. {fix}")
    from ..utils import check_recorded_sha256, reading, resolve_device

    check_recorded_sha256(path, fix)
    model = ShapesVAE()
    with reading(path, "shapes VAE weights (safetensors, latent 6)", fix):
        model.load_state_dict(load_file(str(path)))

    return model.eval().requires_grad_(False).to(resolve_device(device))


def save_shapes_vae(model: ShapesVAE, path: str | Path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
