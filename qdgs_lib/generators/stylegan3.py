"""StyleGAN3 (alias-free) mapping + synthesis networks in plain torch (files:
:mod:`.stylegan2_legacy`, which reads NVIDIA's StyleGAN3 pickles too).

Written from the published architecture (Karras et al., 2021, "Alias-Free Generative
Adversarial Networks", configs T and R): Fourier-feature input transformed by w, modulated
convolutions with input magnitude normalization, and *filtered* leaky ReLUs (bias, zero-insert
up-sampling, FIR low-pass, leaky ReLU, clamp, FIR low-pass, decimation), as the reference
``filtered_lrelu`` defines them. Parameter and buffer names follow NVIDIA's, so a network
pickle maps onto this module one to one; each layer's geometry (sizes, sampling factors,
padding) is read from the file rather than re-derived, so T, R and other schedules all load.
No custom CUDA ops: every layer runs in float32 (NVIDIA's runs its high-resolution layers in
float16 on CUDA).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .stylegan2 import SQRT2, FullyConnectedLayer, MappingNetwork


# --- the reference operations -------------------------------------------------------------
def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int = 1, down: int = 1,
              padding: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0
              ) -> torch.Tensor:
    """Zero-insert up-sampling by ``up``, pad (x0, x1, y0, y1; negative crops), convolve each
    channel with FIR ``f`` (1-D: separable, width then height; 2-D: as is; None: identity)
    scaled by ``gain`` over both axes, keep every ``down``-th pixel."""
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(b, c, h * up, w * up)
    px0, px1, py0, py1 = padding
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0):x.shape[2] - max(-py1, 0), max(-px0, 0):x.shape[3] - max(-px1, 0)]
    if f is None and gain != 1:
        f = torch.ones(1, 1, device=x.device)
    if f is None:  # the identity
        return x[:, :, ::down, ::down] if down > 1 else x
    # strided convolutions compute only the pixels kept: the same numbers as NVIDIA's
    # convolve-then-decimate, bit for bit, in a fraction of the time
    f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip(list(range(f.ndim)))
    if f.ndim == 2:
        return F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c, stride=down)
    x = F.conv2d(x, f[None, None, None].repeat(c, 1, 1, 1), groups=c, stride=(1, down))
    return F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c, stride=(down, 1))


def filtered_lrelu(x: torch.Tensor, fu: torch.Tensor | None, fd: torch.Tensor | None,
                   b: torch.Tensor, up: int, down: int, padding: tuple[int, int, int, int],
                   gain: float, slope: float, clamp: float | None) -> torch.Tensor:
    """Bias, up-sample with ``fu``, leaky ReLU times ``gain``, clamp, down-sample with ``fd``."""
    x = x + b.view(1, -1, 1, 1)
    x = upfirdn2d(x, fu, up=up, padding=padding, gain=up**2)
    if slope != 1:
        x = F.leaky_relu(x, slope)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return upfirdn2d(x, fd, down=down)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     demodulate: bool, padding: int, input_gain: torch.Tensor) -> torch.Tensor:
    """Per-sample modulated conv (as one grouped convolution) with StyleGAN3's
    pre-normalization and input gain."""
    b = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if demodulate:
        weight = weight * weight.square().mean([1, 2, 3], keepdim=True).rsqrt()
        # over the whole batch, as NVIDIA's: demodulation removes the factor again, so it
        # only keeps the numbers (and their rounding) NVIDIA's
        styles = styles * styles.square().mean().rsqrt()
    w = weight.unsqueeze(0) * styles[:, None, :, None, None]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    w = w * input_gain
    x = F.conv2d(x.reshape(1, -1, *x.shape[2:]), w.reshape(-1, in_ch, kh, kw).to(x.dtype),
                 padding=padding, groups=b)
    return x.reshape(b, -1, *x.shape[2:])


# --- the schedule (for networks built here; a file's own geometry is read from it) ----------
def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> torch.Tensor | None:
    """Kaiser-windowed low-pass FIR (separable 1-D, or a 2-D jinc when ``radial``)."""
    import scipy.signal
    import scipy.special

    if numtaps == 1:
        return None
    if not radial:
        f = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        return torch.as_tensor(f, dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    win = np.kaiser(numtaps, beta)
    f *= np.outer(win, win)
    return torch.as_tensor(f / np.sum(f), dtype=torch.float32)


def synthesis_geometry(img_resolution: int, img_channels: int = 3, channel_base: int = 32768,
                       channel_max: int = 512, num_layers: int = 14, num_critical: int = 2,
                       first_cutoff: float = 2, first_stopband: float = 2**2.1,
                       last_stopband_rel: float = 2**0.3, margin_size: int = 10,
                       conv_kernel: int = 3, filter_size: int = 6, lrelu_upsampling: int = 2,
                       use_radial_filters: bool = False, conv_clamp: float | None = 256
                       ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The paper's geometric schedule of cutoffs and stopbands (NVIDIA's defaults: config T;
    R is ``conv_kernel=1, use_radial_filters=True``): the input's spec and each layer's, with
    the filter design (``design``) a network built here draws its filters from."""
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + margin_size * 2
    sizes[-2:] = img_resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels
    spec_in = {"channels": int(channels[0]), "size": [int(sizes[0])] * 2,
               "sampling_rate": float(rates[0]), "bandwidth": float(cutoffs[0])}
    layers = []
    for i in range(num_layers + 1):
        prev, torgb = max(i - 1, 0), i == num_layers
        kernel = 1 if torgb else conv_kernel
        tmp_rate = max(rates[prev], rates[i]) * (1 if torgb else lrelu_upsampling)
        up, down = int(np.rint(tmp_rate / rates[prev])), int(np.rint(tmp_rate / rates[i]))
        up_taps = filter_size * up if up > 1 and not torgb else 1
        down_taps = filter_size * down if down > 1 and not torgb else 1
        radial = use_radial_filters and i < num_layers - num_critical
        pad_total = (sizes[i] - 1) * down + 1 - (sizes[prev] + kernel - 1) * up
        pad_total += up_taps + down_taps - 2
        pad_lo = int((pad_total + up) // 2)
        pad_hi = int(pad_total - pad_lo)
        layers.append({
            "is_torgb": torgb, "in_channels": int(channels[prev]), "out_channels": int(channels[i]),
            "in_size": [int(sizes[prev])] * 2, "out_size": [int(sizes[i])] * 2,
            "conv_kernel": kernel, "up_factor": up, "down_factor": down, "up_taps": up_taps,
            "down_taps": down_taps, "down_radial": radial, "padding": [pad_lo, pad_hi] * 2,
            "conv_clamp": conv_clamp,
            "design": {"up": (float(cutoffs[prev]), float(half_widths[prev]) * 2, float(tmp_rate)),
                       "down": (float(cutoffs[i]), float(half_widths[i]) * 2, float(tmp_rate))}})
    return spec_in, layers


# --- the network ----------------------------------------------------------------------------
class SynthesisInput(nn.Module):
    """Fourier features on a ``size`` grid, rotated and translated by an affine map of w."""

    def __init__(self, w_dim: int, channels: int, size: list[int], sampling_rate: float,
                 bandwidth: float):
        super().__init__()
        self.w_dim, self.channels = w_dim, channels
        self.size = [int(s) for s in size]  # width, height
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        freqs = torch.randn(channels, 2)  # uniform on a disc of radius bandwidth
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        self.weight = nn.Parameter(torch.randn(channels, channels))
        self.affine = FullyConnectedLayer(w_dim, 4)
        with torch.no_grad():  # the identity transform until trained
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0, 0, 0]))
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(channels) - 0.5)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        """w (B, w_dim) -> Fourier features (B, channels, height, width), rotated and translated by
        the affine map of each w (composed with the stored ``transform``); frequencies a transform
        pushes past ``bandwidth`` are damped."""
        t = self.affine(w)  # (cos, sin, tx, ty) up to scale
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        one, zero = torch.ones_like(t[:, 0]), torch.zeros_like(t[:, 0])
        rot = torch.stack([torch.stack([t[:, 0], -t[:, 1], zero], 1),
                           torch.stack([t[:, 1], t[:, 0], zero], 1),
                           torch.stack([zero, zero, one], 1)], 1)
        shift = torch.stack([torch.stack([one, zero, -t[:, 2]], 1),
                             torch.stack([zero, one, -t[:, 3]], 1),
                             torch.stack([zero, zero, one], 1)], 1)
        transforms = rot @ shift @ self.transform.unsqueeze(0)
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0)
                                             @ transforms[:, :2, 2:]).squeeze(2)
        freqs = self.freqs.unsqueeze(0) @ transforms[:, :2, :2]
        # damp frequencies a transform pushed past the band
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth)
                      / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        width, height = self.size
        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = 0.5 * width / self.sampling_rate
        theta[1, 1] = 0.5 * height / self.sampling_rate
        grids = F.affine_grid(theta.unsqueeze(0), [1, 1, height, width], align_corners=False)
        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)
        x = torch.sin((x + phases[:, None, None]) * (np.pi * 2)) * amplitudes[:, None, None]
        x = x @ (self.weight / np.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)


class SynthesisLayer(nn.Module):
    """Modulated conv + filtered leaky ReLU (the last one: to-RGB, linear)."""

    def __init__(self, w_dim: int, is_torgb: bool, in_channels: int, out_channels: int,
                 in_size: list[int], out_size: list[int], conv_kernel: int, up_factor: int,
                 down_factor: int, up_taps: int, down_taps: int, down_radial: bool,
                 padding: list[int], conv_clamp: float | None, design: Any = None):
        super().__init__()
        self.is_torgb, self.in_channels, self.out_channels = is_torgb, in_channels, out_channels
        self.in_size, self.out_size = [int(s) for s in in_size], [int(s) for s in out_size]
        self.conv_kernel, self.up_factor, self.down_factor = conv_kernel, up_factor, down_factor
        self.padding = [int(p) for p in padding]
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, conv_kernel,
                                               conv_kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        self.register_buffer("up_filter", None if up_taps == 1 else torch.zeros(up_taps))
        shape = [down_taps] * (2 if down_radial else 1)
        self.register_buffer("down_filter", None if down_taps == 1 else torch.zeros(shape))
        if design is not None:  # a network built here: its filters from the schedule
            self.up_filter = design_lowpass_filter(up_taps, *design["up"])
            self.down_filter = design_lowpass_filter(down_taps, *design["down"],
                                                     radial=down_radial)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Features x (B, in_channels, H, W) of ``in_size`` and w (B, w_dim) -> features
        (B, out_channels, H', W') of ``out_size`` (sizes: width, height): modulated conv (input gain
        ``magnitude_ema ** -0.5``; demodulated unless to-RGB), then :func:`filtered_lrelu` (bias,
        up-sample, leaky ReLU with gain sqrt(2), clamp, down-sample; linear with gain 1 for
        to-RGB)."""
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / np.sqrt(self.in_channels * self.conv_kernel**2))
        x = modulated_conv2d(x, self.weight, styles, demodulate=not self.is_torgb,
                             padding=self.conv_kernel - 1,
                             input_gain=self.magnitude_ema.rsqrt())
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, self.up_factor,
                              self.down_factor, self.padding, 1 if self.is_torgb else SQRT2,
                              1 if self.is_torgb else 0.2, self.conv_clamp)


class SynthesisNetwork(nn.Module):
    """The alias-free synthesis network (NVIDIA's StyleGAN3 ``SynthesisNetwork``): ws
    (batch, ``num_ws``, ``w_dim``) -> images; ``ws[:, 0]`` transforms the Fourier-feature
    :class:`SynthesisInput`, then each of ``layer_specs`` (a :class:`SynthesisLayer`
    ``L{i}_{size}_{channels}``, the last one to-RGB) takes the next w; the output is scaled
    by ``output_scale``. ``num_ws`` is the number of layers + 1."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int,
                 input_spec: dict[str, Any], layer_specs: list[dict[str, Any]],
                 output_scale: float = 0.25):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.output_scale = output_scale
        self.input = SynthesisInput(w_dim, **input_spec)
        self.layer_names = []
        for i, spec in enumerate(layer_specs):
            name = f"L{i}_{spec['out_size'][0]}_{spec['out_channels']}"
            setattr(self, name, SynthesisLayer(w_dim, **spec))
            self.layer_names.append(name)
        self.num_ws = len(layer_specs) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "const",
                fused_modconv: bool | None = None) -> torch.Tensor:
        """``noise_mode`` and ``fused_modconv`` are StyleGAN2's (this network has no noise
        inputs and one modulated-conv form); taken so that both networks share a caller."""
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be (batch, {self.num_ws}, {self.w_dim}), got "
                             f"{tuple(ws.shape)}")
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:], strict=True):
            x = getattr(self, name)(x, w)
        return x * self.output_scale if self.output_scale != 1 else x


class StyleGAN3(nn.Module):
    """Mapping + alias-free synthesis (unconditional). ``forward(z)`` -> images in about
    [-1, 1]. Built from the schedule's hyperparameters (``synthesis_geometry``), or from a
    file's own ``geometry`` (input spec and layer specs) when one is loaded."""

    # for StyleGAN2Generator: the reference ops' graph is large (11 GB at 256 px, batch 1),
    # so on a CPU one backward pass at a time, as the 5 vmapped ones ran 24 GB out of memory
    preferred_jacobian_mode = {"cpu": "loop", "cuda": "func"}

    def __init__(self, z_dim: int = 512, w_dim: int = 512, img_resolution: int = 256,
                 img_channels: int = 3, mapping_layers: int = 2,
                 mapping_lr_multiplier: float = 0.01, output_scale: float = 0.25,
                 geometry: dict[str, Any] | None = None, **schedule: Any):
        super().__init__()
        if geometry is None:
            spec_in, specs = synthesis_geometry(img_resolution, img_channels, **schedule)
        else:
            if schedule:
                raise ValueError(f"give geometry or schedule settings, not both: {schedule}")
            spec_in, specs = geometry["input"], geometry["layers"]
        self.config = {"z_dim": z_dim, "w_dim": w_dim, "img_resolution": img_resolution,
                       "img_channels": img_channels, "mapping_layers": mapping_layers,
                       "mapping_lr_multiplier": mapping_lr_multiplier,
                       "output_scale": output_scale,
                       "geometry": {"input": spec_in, "layers": [
                           {k: v for k, v in s.items() if k != "design"} for s in specs]}}
        self.z_dim, self.w_dim, self.img_resolution = z_dim, w_dim, img_resolution
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, spec_in, specs,
                                          output_scale)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers,
                                      mapping_lr_multiplier)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "const",
                fused_modconv: bool | None = None) -> torch.Tensor:
        """z (B, z_dim) -> images (B, img_channels, img_resolution, img_resolution) in about
        [-1, 1]. ``noise_mode`` and ``fused_modconv`` are unused (no noise inputs, one conv form):
        taken so that StyleGAN2's callers work unchanged."""
        return self.synthesis(self.mapping(z, truncation_psi))
