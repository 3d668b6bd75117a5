"""The one protocol every generator follows."""

from __future__ import annotations

import itertools

import torch
from torch import nn


class Generator(nn.Module):
    """A differentiable image generator over a search latent space.

    Subclasses set ``latent_dim`` and implement :meth:`decode` and :meth:`sample_prior`.
    ``latent_norm`` is the typical norm of a prior sample (the paper's regularizer keeps the
    search near it); ``image_size`` is the output resolution.
    """

    latent_dim: int
    image_size: int
    latent_norm: float
    # how PromptScorer runs the 1+m backward passes ("batched" | "func" | "loop" |
    # "replicated", or a dict by device type such as {"cpu": "func", "cuda": "func"}; see
    # PromptScorer._with_jacobian); a fixed per-generator choice keeps seeded runs reproducible
    preferred_jacobian_mode: str = "batched"
    # False: decode gives no gradients to the latents (WrappedGenerator(differentiable=False)):
    # scorers refuse jacobians, searches take the gradient-free algorithms only
    differentiable: bool = True

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, latent_dim) -> images (B, 3, H, W) in [0, 1], differentiable in z."""
        raise NotImplementedError

    def sample_prior(self, n: int, seed: int | None = None) -> torch.Tensor:
        """``n`` latents from the generator's own (possibly biased) prior."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """The device of the first parameter (else of the first buffer); the CPU for a generator
        with neither."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def check_latents(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` checked for :meth:`decode`: a float tensor (B, latent_dim), cast to the dtype of
        the network's first floating-point parameter or buffer (float32 without one) and finite;
        TypeError or ValueError, naming the fix, otherwise. The finiteness check is skipped inside
        torch.compile and while a CUDA graph is captured (the scorer checks latents on the host
        first). Its device stays as given."""
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            kind = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
            raise TypeError(f"{type(self).__name__}.decode takes a float tensor of latents "
                            f"(B, {self.latent_dim}), got {kind}: use "
                            "torch.as_tensor(z, dtype=torch.float32)")
        dtype = next((t.dtype for t in itertools.chain(self.parameters(), self.buffers())
                      if t.is_floating_point()), torch.float32)  # (lazy: the first one)
        if z.dtype != dtype:  # e.g. float64 latents from numpy into a float32 network
            z = z.to(dtype)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"{type(self).__name__} expects latents of shape (B, {self.latent_dim}), "
                f"got {tuple(z.shape)}"
            )
        # Not while a CUDA graph is captured (reading the answer would sync with the host)
        # nor inside torch.compile (a data-dependent branch breaks the graph, and the capture
        # flag would recompile inside the capture); the scorer checks the latents on the host
        # before they reach a graph or a compiled pass.
        if torch.compiler.is_compiling():
            return z
        capturing = z.is_cuda and torch.cuda.is_current_stream_capturing()
        if not capturing and not torch.isfinite(z).all():
            raise ValueError("latents contain NaN or inf")
        return z
