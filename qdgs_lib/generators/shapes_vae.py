"""The shapes VAE: latent 6, 128x128 RGB, trained on color-biased shape renders.

Trained by ``scripts/train_shapes_vae.py`` on shapes with color bias 0.9, so its prior is
biased like the data; far from the prior it decodes to blobs ("splatters").
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..paths import RELEASED_SHAPES_VAE_WHERE, shipped_weights_fix, weights_dir
from .base import Generator

WEIGHTS_FILE = "shapes_vae.safetensors"


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


class ShapesVAE(Generator):
    """The project's shapes VAE: five stride-2 conv-BN-LeakyReLU layers and a linear layer
    encode a 128x128 image to ``(mu, logvar)``; a linear layer and nearest-upsampling convs
    decode a latent (prior N(0, I), ``latent_dim`` 6) to 128x128 RGB in [0, 1]."""

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
        """Images (B, 3, 128, 128) -> the posterior's ``(mu, logvar)``, each (B, latent_dim)."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = self.check_latents(z).to(self.device)  # latents may come from the host
        h = self.fc(z).view(-1, 4 * self.width, 4, 4)
        return torch.sigmoid(self.decoder(h))

    def forward(self, x: torch.Tensor):
        """The training pass: images (B, 3, 128, 128) -> (reconstructions, mu, logvar), decoding one
        reparameterized sample ``z = mu + eps * exp(logvar / 2)``."""
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
    """Write ``model``'s state dict to ``path`` as safetensors, as
    :func:`load_shapes_vae` reads it."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


# --- the released code's shapes VAE -----------------------------------------------------------
class _ReleasedEncoder(nn.Module):
    def __init__(self, latent_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.fc_mu = nn.Linear(16 * 16 * 32, latent_dim)
        self.fc_logvar = nn.Linear(16 * 16 * 32, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = torch.relu(conv(x))
        x = x.flatten(1)
        return self.fc_mu(x), self.fc_logvar(x)


class _ReleasedDecoder(nn.Module):
    def __init__(self, latent_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(latent_dim, 16 * 16 * 32)
        self.convT1 = nn.ConvTranspose2d(32, 32, 4, stride=2, padding=1)
        self.convT2 = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)
        self.convT3 = nn.ConvTranspose2d(16, 3, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(z)).view(-1, 32, 16, 16)
        x = torch.relu(self.convT1(x))
        x = torch.relu(self.convT2(x))
        return torch.sigmoid(self.convT3(x))


class ReleasedShapesVAE(Generator):
    """The released code's shapes VAE (``shapes/generator.py``: three stride-2 convs, three
    transposed convs, latent 6, 128x128 RGB in [0, 1]); parameter names follow its state dict,
    so ``vae-shapes.pt`` loads as it is. The search's latents are its z (prior N(0, I))."""

    def __init__(self, latent_dim: int = 6):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_size = 128
        self.latent_norm = latent_dim**0.5
        self.encoder = _ReleasedEncoder(latent_dim)
        self.decoder = _ReleasedDecoder(latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, 128, 128) -> the released encoder's ``(mu, logvar)``, each
        (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.check_latents(z).to(self.device))

    sample_prior = ShapesVAE.sample_prior  # N(0, I), seeded, like the project's VAE


def load_released_shapes_vae(path: str | Path, device: str | torch.device = "auto"
                             ) -> ReleasedShapesVAE:
    """The released code's ``vae-shapes.pt`` (a torch state dict; its tensors were saved on a
    GPU and are read onto the CPU first), in eval mode. Read with ``weights_only=True``: the
    file is data, never code."""
    from ..utils import reading, resolve_device

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the released shapes VAE is not at {path}: get "
                                f"{RELEASED_SHAPES_VAE_WHERE}")
    fix = f"Expected {RELEASED_SHAPES_VAE_WHERE}."
    model = ReleasedShapesVAE()
    with reading(path, "the released shapes VAE (a torch state dict)", fix):
        state = torch.load(path, map_location="cpu", weights_only=True)
    want = model.state_dict()
    if not isinstance(state, dict) or set(state) != set(want):
        got = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not the released shapes VAE's state dict (keys "
                         f"{sorted(want)[:6]}..., got {got}). {fix}")
    if bad := [k for k, v in state.items()
               if not isinstance(v, torch.Tensor) or v.shape != want[k].shape]:
        raise ValueError(f"{path}: {bad[0]} has shape "
                         f"{tuple(getattr(state[bad[0]], 'shape', ()))}, the released VAE's "
                         f"is {tuple(want[bad[0]].shape)} (latent 6, 128x128). {fix}")
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise ValueError(f"{path} holds NaN or inf weights: a damaged copy. {fix}")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False).to(resolve_device(device))
