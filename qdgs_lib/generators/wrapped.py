"""Your own generator: any differentiable network from latents to images, for QDGS.

QDGS needs four things of a generator (:class:`~qdgs_lib.generators.base.Generator`): the
latent size, a differentiable ``decode`` to images in [0, 1], a seeded prior (the random
baseline and the search's start), and the prior's typical latent norm (the objective's
latent-norm penalty). :class:`WrappedGenerator` builds them around a network::

    gen = WrappedGenerator(my_gan, latent_dim=512, output_range=(-1, 1))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .base import Generator

Prior = Callable[[int, torch.Generator], torch.Tensor]  # (n, seeded generator) -> (n, d) latents


class WrappedGenerator(Generator):
    """``net`` (latents (B, ``latent_dim``) -> images (B, 3, H, H)) as a QDGS generator.

    Args:
        net: an ``nn.Module`` (frozen here: eval mode, no parameter gradients; gradients
            still flow to the latents) or any differentiable function of the latents.
        latent_dim: the size of the space the search moves through (``net``'s input).
        output_range: the range of ``net``'s pixels, mapped linearly onto [0, 1]: ``(-1, 1)``
            for most GANs, ``(0, 255)`` for 8-bit output. Small overshoots are clamped (as
            StyleGAN2's output is); images far outside the range are refused at construction.
        prior: the latents ``net`` was trained on, as ``prior(n, generator)`` drawing ``n``
            latents with the seeded ``torch.Generator``; default N(0, I).
        device: where a plain function's tensors live (a module's parameters say it).
        prior_samples: prior draws that estimate the typical latent norm (seed 0).
    """

    def __init__(self, net: nn.Module | Callable[[torch.Tensor], torch.Tensor],
                 latent_dim: int, output_range: tuple[float, float] = (0.0, 1.0),
                 prior: Prior | None = None, device: str | torch.device | None = None,
                 prior_samples: int = 1000):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be an nn.Module or a function of the latents, got "
                            f"{type(net).__name__}")
        if int(latent_dim) != latent_dim or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        lo, hi = (float(v) for v in output_range)
        if not hi > lo:
            raise ValueError(f"output_range must be (low, high) with high > low, got "
                             f"{output_range!r}")
        if isinstance(net, nn.Module):
            net.eval().requires_grad_(False)
        self.net = net  # a module registers as a submodule: .to() moves it
        # what a search's config records (with the weights' sha256, which a plain function
        # lacks): a resume under another network is refused by name at least
        self.name = f"WrappedGenerator({getattr(net, '__qualname__', type(net).__name__)})"
        self.latent_dim = int(latent_dim)
        self.output_range = (lo, hi)
        self.prior = prior
        if device is not None:  # a plain function has no parameters to tell the device by
            self.register_buffer("_device_anchor", torch.empty(0, device=device),
                                 persistent=False)
        with torch.no_grad():
            z = self.sample_prior(max(2, prior_samples), seed=0)
            self.latent_norm = float(z.norm(dim=1).mean())
            try:
                raw = self._raw(z[:8])
            except RuntimeError as e:
                if "device" not in str(e) or device is not None:
                    raise
                raise ValueError(f"net failed on latents on {self.device} ({e}): a function "
                                 "over a network on another device needs device=, e.g. "
                                 "WrappedGenerator(fn, latent_dim, device='cuda')") from e
        self._check_output(raw)
        self.image_size = raw.shape[-1]

    def _raw(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(z)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"net must return a tensor of images, got {type(x).__name__} "
                            "(wrap a network that returns a tuple or dict in a function that "
                            "picks the images)")
        return x

    def _check_output(self, raw: torch.Tensor) -> None:
        """Shape (B, 3, H, H), finite, inside ``output_range`` up to a 5% overshoot."""
        if raw.ndim != 4 or raw.shape[1] != 3 or raw.shape[2] != raw.shape[3]:
            raise ValueError(f"net must map latents (B, {self.latent_dim}) to square RGB images "
                             f"(B, 3, H, H), got {tuple(raw.shape)} (grayscale: repeat the "
                             "channel; channels last: permute(0, 3, 1, 2); crop to a square)")
        if not torch.isfinite(raw).all():
            raise ValueError("net's images of prior latents contain NaN or inf: check its "
                             "weights and the prior")
        lo, hi = self.output_range
        got_lo, got_hi = float(raw.min()), float(raw.max())
        slack = 0.05 * (hi - lo)
        if got_lo < lo - slack or got_hi > hi + slack:
            raise ValueError(f"net's images of prior latents lie in [{got_lo:.3g}, {got_hi:.3g}]"
                             f", outside output_range=({lo:g}, {hi:g}): pass the range net "
                             "really produces, e.g. output_range=(-1, 1) for a GAN's tanh "
                             "output, (0, 255) for 8-bit images")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = self.check_latents(z).to(self.device)  # latents may come from the host
        lo, hi = self.output_range
        return ((self._raw(z) - lo) / (hi - lo)).clamp(0, 1)

    def sample_prior(self, n: int, seed: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        if self.prior is None:
            z = torch.randn(n, self.latent_dim, generator=g)
        else:
            z = torch.as_tensor(self.prior(n, g))
            if z.shape != (n, self.latent_dim) or not z.is_floating_point():
                raise ValueError(f"prior(n={n}, generator) must return float latents of shape "
                                 f"({n}, {self.latent_dim}), got {z.dtype} {tuple(z.shape)}")
        return z.to(self.device)
