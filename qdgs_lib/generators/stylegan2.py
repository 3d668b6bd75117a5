"""StyleGAN2 mapping + synthesis networks in plain torch (files: :mod:`.stylegan2_legacy`).

Written from the published architecture (Karras et al., 2020; the StyleGAN2-ADA "skip"
generator): modulated convolution with demodulation, [1,3,3,1] FIR up-sampling, per-layer
noise, skip to-RGB outputs, truncation around ``w_avg``. Parameter and buffer names follow
NVIDIA's so that a network pickle maps onto this module one to one. No custom CUDA ops.

The paper searches a *normalized* w-space: ``w = q * std(w) + w_avg`` (one w for all layers);
:class:`StyleGAN2Generator` exposes that space through the :class:`Generator` protocol.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils import at_least_fp32
from .base import Generator

if TYPE_CHECKING:
    from .stylegan3 import StyleGAN3

SQRT2 = math.sqrt(2)


def _filter() -> torch.Tensor:
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f)
    return f / f.sum()


def _fir(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int], gain: float) -> torch.Tensor:
    """Pad (pad[0] before, pad[1] after, both axes) and convolve each channel with f * gain."""
    c = x.shape[1]
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    w = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1).to(x.dtype)
    return F.conv2d(x, w, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x up-sampling: zero insertion, pad (2, 1), FIR with gain 4."""
    b, c, h, w = x.shape
    up = torch.zeros(b, c, h, 2, w, 2, dtype=x.dtype, device=x.device)
    up[:, :, :, 0, :, 0] = x
    return _fir(up.view(b, c, 2 * h, 2 * w), f, (2, 1), 4.0)


def bias_act(x: torch.Tensor, b: torch.Tensor, act: str, gain: float,
             clamp: float | None) -> torch.Tensor:
    """NVIDIA's ``bias_act`` op (reference path): add ``b`` along dim 1, apply ``act``
    ("lrelu": leaky ReLU, slope 0.2; anything else: linear), scale by ``gain``, then clamp to
    [-``clamp``, ``clamp``] unless ``clamp`` is None."""
    x = x + b.view(1, -1, *([1] * (x.ndim - 2)))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    x = x * gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


class FullyConnectedLayer(nn.Module):
    """NVIDIA's ``FullyConnectedLayer``: a linear layer with equalized learning rate (weight
    scaled by ``lr_multiplier / sqrt(in_features)`` and bias by ``lr_multiplier`` at run
    time), optionally followed by a leaky ReLU with gain sqrt(2) (``activation="lrelu"``)."""

    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        """(B, in_features) -> (B, out_features), with weight and bias scaled by their gains at run
        time."""
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x @ w.t(), b, self.activation, SQRT2, None)


class MappingNetwork(nn.Module):
    """The mapping network (NVIDIA's ``MappingNetwork``, unconditional: no c): z, normalized
    to unit second moment, -> ``num_layers`` leaky-ReLU FC layers -> w, truncated towards
    ``w_avg`` by ``truncation_psi``, broadcast to (batch, ``num_ws``, ``w_dim``)."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 lr_multiplier: float = 0.01):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        features = [z_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], "lrelu",
                                                        lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        """z (B, z_dim) -> ws (B, num_ws, w_dim): one w per sample, truncated towards ``w_avg`` by
        ``truncation_psi`` (1: not truncated), repeated for every layer."""
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x.unsqueeze(1).repeat(1, self.num_ws, 1)


def modulated_conv2d(x, weight, styles, demodulate=True, up=1, padding=0, f=None):
    """Per-sample modulated (and demodulated) conv as one grouped convolution (NVIDIA's
    "fused" form: the fastest single forward pass)."""
    b = x.shape[0]
    cout, cin, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.view(b, 1, cin, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().view(b, cout, 1, 1, 1)
    x = x.reshape(1, b * cin, *x.shape[2:])
    if up == 1:
        x = F.conv2d(x, w.reshape(b * cout, cin, kh, kw), padding=padding, groups=b)
    else:  # transposed conv (in/out swapped, no flip), then FIR: 2H+1 -> pad 1 -> 2H
        w = w.transpose(1, 2).reshape(b * cin, cout, kh, kw)
        x = F.conv_transpose2d(x, w, stride=2, groups=b)
        x = _fir(x, f, (1, 1), 4.0)
    return x.reshape(b, cout, *x.shape[2:])


def _shared_conv(x, weight, up, padding, f):
    """The split form's convolution with the shared (frozen) weight."""
    if up == 1:
        return F.conv2d(x, weight, padding=padding)
    return _fir(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2), f, (1, 1), 4.0)


def _shared_conv_adjoint(g, weight, up, padding, f):
    """Gradient of :func:`_shared_conv` w.r.t. its input (both steps are linear)."""
    if up == 1:
        return F.conv_transpose2d(g, weight, padding=padding)
    # adjoint of "pad 1, correlate with flip(f)": full correlation with f (pad 3), crop 1
    g = _fir(g, f.flip([0, 1]), (2, 2), 4.0)
    return F.conv2d(g, weight.transpose(0, 1), stride=2)


class _SplitModulatedLayer(torch.autograd.Function):
    """``clamp(act(conv(x * s, W) * d + noise + bias) * gain)`` with a hand-written backward.

    NVIDIA's non-fused modulated convolution (same math as :func:`modulated_conv2d`), written
    for jacobians: the scorer runs 1 + m backward passes over one forward pass, so the forward
    stores the elementwise derivative once (``slope * d`` and ``slope * y``) and every backward
    pass is one convolution and a handful of passes over the activations, with no gradient for
    the frozen weight. Every op has a vmap rule, so the 1 + m passes can also run as one
    batched backward (``is_grads_batched`` or ``torch.func.vmap``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, styles, weight, noise, bias, up, padding, f, demodulate, slope, gain, clamp):
        y = _shared_conv(x * styles[:, :, None, None], weight, up, padding, f)
        shift = bias.view(1, -1, 1, 1) if noise is None else noise + bias.view(1, -1, 1, 1)
        w2 = weight.square().sum(dim=[2, 3])  # (Cout, Cin)
        if demodulate:  # sum_i (w_oi s_i)^2 = s^2 @ w2^T, in float32 even under autocast
            with torch.autocast(x.device.type, enabled=False):
                d = (at_least_fp32(styles).square() @ at_least_fp32(w2).t() + 1e-8).rsqrt()
            pre = torch.addcmul(shift, y, d[:, :, None, None])
        else:
            d = y.new_ones(1, 1)
            pre = y + shift
        # no in-place ops here: torch 2.11's torch.compile routes the gradient of a tensor
        # changed in place in a Function's forward to the wrong output (pytorch#180642): the
        # compiled jacobians came out zero (caught on an H200, reproduced on a CPU)
        grad_pre = torch.full_like(pre, gain).masked_fill(pre <= 0, gain * slope)  # dout/dpre
        out = pre * grad_pre
        if clamp is not None:
            grad_pre = grad_pre.masked_fill(out.abs() > clamp, 0)
            out = out.clamp(-clamp, clamp)
        grad_d = grad_pre * y if demodulate else y.new_zeros(1)
        return out, grad_pre * d[:, :, None, None], grad_d, d.pow(3), w2

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, styles, weight, _, _, up, padding, f, demodulate, _, _, _ = inputs
        _, grad_y, grad_d, d3, w2 = output
        ctx.mark_non_differentiable(grad_y, grad_d, d3, w2)
        ctx.save_for_backward(x, styles, weight, f, grad_y, grad_d, d3, w2)
        ctx.up, ctx.padding, ctx.demodulate = up, padding, demodulate
        # the backward convolution runs under the forward pass's autocast setting (as the
        # backward of torch's own ops does), also when the backward runs outside autocast
        kind = x.device.type
        ctx.autocast = (kind, torch.get_autocast_dtype(kind)) \
            if torch.is_autocast_enabled(kind) else None

    @staticmethod
    def backward(ctx, g, *_):
        x, styles, weight, f, grad_y, grad_d, d3, w2 = ctx.saved_tensors
        with nullcontext() if ctx.autocast is None else \
                torch.autocast(ctx.autocast[0], dtype=ctx.autocast[1], cache_enabled=False):
            g_xs = _shared_conv_adjoint(g * grad_y, weight, ctx.up, ctx.padding, f)
        # the reductions and the small matmul in float32 (range) under autocast too
        g_styles = (g_xs * x).sum(dim=(2, 3), dtype=at_least_fp32(g_xs).dtype)
        if ctx.demodulate:  # d = (s^2 @ w2^T + eps)^-1/2: dd_o/ds_i = -d_o^3 w2_oi s_i
            g_d = (g * grad_d).sum(dim=(2, 3))
            with torch.autocast(x.device.type, enabled=False):
                g_styles = g_styles - ((g_d * d3) @ at_least_fp32(w2)) * styles
        g_x = g_xs * styles[:, :, None, None] if ctx.needs_input_grad[0] else None
        return g_x, g_styles, *[None] * 10


def split_modulated_layer(x, weight, styles, noise, bias, up=1, padding=0, f=None,
                          demodulate=True, slope=0.2, gain=SQRT2, clamp=None):
    """Modulated conv + noise + bias + (leaky) activation + clamp, split form (see above).
    For frozen networks only: its backward gives no gradient to weight, bias or noise."""
    if any(t is not None and t.requires_grad for t in (weight, noise, bias)):
        raise ValueError("split modulated layers are for frozen weights (their backward skips "
                         "weight gradients): use fused_modconv=True to train the generator")
    kind = x.device.type
    if demodulate and torch.is_autocast_enabled(kind) and \
            torch.get_autocast_dtype(kind) == torch.float16:
        # float16's range (NVIDIA's pre-normalisation): the convolution runs before the
        # demodulation, on raw weights and styles, and could overflow. Demodulation makes the
        # output invariant to the scale of each output channel's weights and of each sample's
        # styles, so scale both down to a largest entry of 1 (the weights' to 1/sqrt(fan-in)).
        weight = weight * (1 / math.sqrt(weight[0].numel()) /
                           weight.abs().amax(dim=[1, 2, 3], keepdim=True).clamp_min(1e-30))
        styles = styles / styles.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    return _SplitModulatedLayer.apply(x, styles, weight, noise, bias, up, padding, f,
                                      demodulate, slope, gain, clamp)[0]


class SynthesisLayer(nn.Module):
    """One modulated conv of a synthesis block (NVIDIA's ``SynthesisLayer``): styles from w
    by ``affine``, a demodulated ``kernel_size`` conv (2x up-sampling when ``up=2``), per-pixel
    noise (``noise_mode`` "const": the stored ``noise_const``, "random": fresh, else none)
    times ``noise_strength``, bias, leaky ReLU with gain sqrt(2), clamp to ``conv_clamp``.
    Runs fused (one grouped conv) or split (:func:`split_modulated_layer`, frozen weights)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: int = 1, conv_clamp: float | None = 256, kernel_size: int = 3):
        super().__init__()
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("resample_filter", _filter())
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x, w, noise_mode: str = "const", fused_modconv: bool = True):
        """Features x (B, in_channels, r, r) (r / 2 with ``up=2``; r: ``resolution``) and w
        (B, w_dim) -> (B, out_channels, r, r). ``noise_mode``: "const", "random", anything else no
        noise; ``fused_modconv``: one grouped conv, else the split form
        (:func:`split_modulated_layer`: frozen weights only, cheaper jacobians)."""
        styles = self.affine(w)
        noise = None
        if noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        elif noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution,
                                device=x.device, dtype=x.dtype) * self.noise_strength
        if not fused_modconv:
            return split_modulated_layer(x, self.weight, styles, noise, self.bias, self.up,
                                         self.padding, self.resample_filter, True, 0.2, SQRT2,
                                         self.conv_clamp)
        x = modulated_conv2d(x, self.weight, styles, True, self.up, self.padding,
                             self.resample_filter)
        if noise is not None:
            x = x + noise
        return bias_act(x, self.bias, "lrelu", SQRT2, self.conv_clamp)


class ToRGBLayer(nn.Module):
    """A block's to-RGB output (NVIDIA's ``ToRGBLayer``): a 1x1 modulated conv without
    demodulation to ``out_channels`` (the image channels), plus bias, with no activation,
    clamped to ``conv_clamp``."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 conv_clamp: float | None = 256):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, w, fused_modconv: bool = True):
        """Features (B, in_channels, H, W) and w (B, w_dim) -> the block's RGB contribution
        (B, out_channels, H, W); ``fused_modconv`` as in :class:`SynthesisLayer`."""
        styles = self.affine(w) * self.weight_gain
        if not fused_modconv:
            return split_modulated_layer(x, self.weight, styles, None, self.bias, demodulate=False,
                                         slope=1.0, gain=1.0, clamp=self.conv_clamp)
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, "linear", 1.0, self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the "skip" synthesis network (NVIDIA's ``SynthesisBlock``): the
    first block (``in_channels=0``) starts from a learned constant and has one conv, the
    others up-sample 2x (``conv0``) and convolve (``conv1``); ``forward`` takes the block's
    ``num_conv + 1`` ws and returns the features and the image so far (the previous image
    FIR-up-sampled plus this block's to-RGB)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int = 3, conv_clamp: float | None = 256):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.register_buffer("resample_filter", _filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.num_conv = 1
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        conv_clamp=conv_clamp)
            self.num_conv = 2
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp)

    def forward(self, x, img, ws, noise_mode="const", fused_modconv: bool = True):
        """Features ``x``, the image so far ``img`` and the block's ws (B, num_conv + 1, w_dim) ->
        (features, image) at this block's resolution. The first block (``in_channels=0``) starts
        from its constant, so its ``x`` is unused and its ``img`` is None."""
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, ws[:, 0], noise_mode, fused_modconv)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, fused_modconv)
            x = self.conv1(x, ws[:, 1], noise_mode, fused_modconv)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, ws[:, self.num_conv], fused_modconv)
        return x, y if img is None else img + y


class SynthesisNetwork(nn.Module):
    """The synthesis network (NVIDIA's ``SynthesisNetwork``, "skip" architecture): ws
    (batch, ``num_ws``, ``w_dim``) -> images (batch, ``img_channels``, ``img_resolution``,
    ``img_resolution``) in about [-1, 1], through one :class:`SynthesisBlock` per resolution
    from 4x4 (``b4``, ``b8``, ...) with ``min(channel_base // r, channel_max)`` channels."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int = 3,
                 channel_base: int = 16384, channel_max: int = 512,
                 conv_clamp: float | None = 256):
        super().__init__()
        self.w_dim, self.img_resolution = w_dim, img_resolution
        log2 = int(np.log2(img_resolution))
        if 2**log2 != img_resolution or img_resolution < 4:
            raise ValueError(f"img_resolution must be a power of 2 >= 4, got {img_resolution}")
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        ch = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        self.num_ws = 0
        for r in self.block_resolutions:
            block = SynthesisBlock(ch[r // 2] if r > 4 else 0, ch[r], w_dim, r, img_channels,
                                   conv_clamp)
            self.num_ws += block.num_conv
            setattr(self, f"b{r}", block)
        self.num_ws += 1  # the last block's to-RGB

    def forward(self, ws: torch.Tensor, noise_mode: str = "const",
                fused_modconv: bool | None = None) -> torch.Tensor:
        """``fused_modconv=None``: fused unless a gradient will flow back to ``ws`` through
        frozen weights (the split form's backward skips weight gradients)."""
        if fused_modconv is None:
            fused_modconv = not (torch.is_grad_enabled() and ws.requires_grad) or any(
                p.requires_grad for p in self.parameters())
        x = img = None
        i = 0
        for r in self.block_resolutions:
            block = getattr(self, f"b{r}")
            x, img = block(x, img, ws[:, i:i + block.num_conv + 1], noise_mode, fused_modconv)
            i += block.num_conv
        return img


class StyleGAN2(nn.Module):
    """Mapping + synthesis (unconditional). ``forward(z)`` -> images in about [-1, 1]."""

    def __init__(self, z_dim: int = 512, w_dim: int = 512, img_resolution: int = 256,
                 img_channels: int = 3, mapping_layers: int = 8, channel_base: int = 16384,
                 channel_max: int = 512, conv_clamp: float | None = 256,
                 mapping_lr_multiplier: float = 0.01):
        super().__init__()
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.z_dim, self.w_dim, self.img_resolution = z_dim, w_dim, img_resolution
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base,
                                          channel_max, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers,
                                      mapping_lr_multiplier)

    def forward(self, z, truncation_psi: float = 1.0, noise_mode: str = "const",
                fused_modconv: bool | None = None):
        """z (B, z_dim) -> images (B, img_channels, img_resolution, img_resolution) in about
        [-1, 1]; ``truncation_psi`` goes to the mapping network, ``noise_mode`` and
        ``fused_modconv`` to the synthesis network."""
        return self.synthesis(self.mapping(z, truncation_psi), noise_mode, fused_modconv)


# --- the search space -------------------------------------------------------------------------
class StyleGAN2Generator(Generator):
    """The :class:`Generator` protocol over normalized w-space: ``w = q * w_std + w_avg``,
    for a StyleGAN2 or a StyleGAN3 network (:mod:`.stylegan3`; it has no noise inputs).

    ``latent_space="w"``: a latent is one w (``w_dim`` numbers) that every synthesis layer
    receives; ``"w+"``: one w per layer (``num_ws * w_dim`` numbers, layer-major), so a search
    can move the layers apart, as the released code's faces search did (14 x 512 for
    StyleGAN2-256). ``w_std`` is the per-dimension std of mapped prior samples, estimated once
    from ``num_std_samples`` seeded z's (the same for every layer: the mapping network gives
    every layer the same w); ``latent_norm`` is the mean norm of prior q's in the latent space.
    """

    # torch.func's vmapped backward runs each convolution once on the 1+m stacked cotangents:
    # the fastest mode on CPU, and on CUDA where a search's calls run as CUDA graphs (the
    # default): paper-scale CMA-MAEGA iteration on an H200 24.6-24.8 vs 28.1-28.4 ms batched,
    # 20.8 vs 24.9 with TF32 matmuls (bench/README.md). Eager, batched was faster there.
    preferred_jacobian_mode = {"cpu": "func", "cuda": "func"}

    def __init__(self, net: StyleGAN2 | StyleGAN3, num_std_samples: int = 10_000, seed: int = 0,
                 noise_mode: str = "const", latent_space: str = "w"):
        super().__init__()
        if num_std_samples < 2:
            raise ValueError(f"num_std_samples must be >= 2 (w's standard deviation is "
                             f"estimated from them), got {num_std_samples}")
        if noise_mode not in ("const", "random", "none"):
            raise ValueError(f"noise_mode must be const, random or none, got {noise_mode!r}")
        if latent_space not in ("w", "w+"):
            raise ValueError(f"latent_space must be 'w' (one w for every layer) or 'w+' (one "
                             f"per layer), got {latent_space!r}")
        self.net = net.eval().requires_grad_(False)
        self.latent_space = latent_space
        self.layers = net.num_ws if latent_space == "w+" else 1  # w's per latent
        self.latent_dim = self.layers * net.w_dim
        self.image_size = net.img_resolution
        self.noise_mode = noise_mode
        # "auto": grouped (fused) modulated convs for values, split ones when jacobians are
        # taken; "fused" is what NVIDIA's networks run in eval mode (the released scheme)
        self.modconv = "auto"
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            z = torch.randn(num_std_samples, net.z_dim, generator=g)
            dev = net.mapping.w_avg.device
            w = torch.cat([net.mapping(z[i:i + 1000].to(dev))[:, 0]
                           for i in range(0, len(z), 1000)])
        self.register_buffer("w_std", w.std(0))
        q = (w - net.mapping.w_avg) / self.w_std
        # a w+ latent repeats a prior q on every layer: its norm is sqrt(layers) times q's
        self.latent_norm = float(q.norm(dim=1).mean()) * self.layers**0.5
        # a network may know its jacobians better (StyleGAN3: memory)
        self.preferred_jacobian_mode = getattr(net, "preferred_jacobian_mode",
                                               self.preferred_jacobian_mode)
        # what a search records (StyleGAN2 w runs keep the class name)
        from .stylegan3 import StyleGAN3

        family = "StyleGAN3" if isinstance(net, StyleGAN3) else "StyleGAN2"
        if latent_space == "w+" or family == "StyleGAN3":
            self.name = f"{family}Generator{'(w+)' if latent_space == 'w+' else ''}"

    def w_from_q(self, q: torch.Tensor) -> torch.Tensor:
        """(B, num_ws, w_dim) ws of latents ``q`` (B, latent_dim)."""
        w = q.reshape(len(q), self.layers, -1) * self.w_std + self.net.mapping.w_avg
        return w.repeat(1, self.net.num_ws, 1) if self.layers == 1 else w

    def decode(self, q: torch.Tensor) -> torch.Tensor:
        return self.decode_unclamped(q).clamp(0, 1)

    def decode_unclamped(self, q: torch.Tensor) -> torch.Tensor:
        """``(x + 1) / 2`` of the synthesis output ``x``, not clamped: a little outside
        [0, 1] where the network overshoots (what the released code's CLIP saw; see
        ``PromptScorer(clamp_images=False)``)."""
        q = self.check_latents(q).to(self.w_std.device)
        ws = self.w_from_q(q)
        modes = {"auto": None, "fused": True, "split": False}
        if self.modconv not in modes:
            raise ValueError(f"modconv must be one of {sorted(modes)}, got {self.modconv!r}")
        fused = modes[self.modconv]
        img = self.net.synthesis(ws, self.noise_mode, fused)
        return (img + 1) / 2

    def sample_prior(self, n: int, seed: int | None = None,
                     truncation_psi: float = 1.0) -> torch.Tensor:
        """``n`` mapped prior latents (seed None: 0), truncated toward w_avg by
        ``truncation_psi`` (1: none; the released code drew its search's start at 0.7)."""
        g = torch.Generator().manual_seed(0 if seed is None else seed)
        z = torch.randn(n, self.net.z_dim, generator=g).to(self.w_std.device)
        with torch.no_grad():
            w = self.net.mapping(z, truncation_psi)[:, 0]
        q = (w - self.net.mapping.w_avg) / self.w_std
        return q.repeat(1, self.layers)
