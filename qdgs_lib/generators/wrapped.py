"""Your own generator: any network or function from latents to images, for QDGS.

QDGS needs four things of a generator (:class:`~qdgs_lib.generators.base.Generator`): the
latent size, a differentiable ``decode`` to images in [0, 1], a seeded prior (the random
baseline and the search's start), and the prior's typical latent norm (the objective's
latent-norm penalty). :class:`WrappedGenerator` builds them around a network::

    gen = WrappedGenerator(my_gan, latent_dim=128, output_range=(-1, 1))

A generator without gradients (a renderer, a sampler too long to backpropagate through,
numpy or 8-bit output) is wrapped with ``differentiable=False``: the gradient-free searches
(CMA-MAE, CMA-ME, MAP-Elites, random sampling) take it; CMA-MAEGA, which follows the
gradients, refuses it.
"""

from __future__ import annotations

import dis
import functools
import inspect
import math
import numbers
import types
import warnings
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..utils import resolve_device
from .base import Generator

Prior = Callable[[int, torch.Generator], torch.Tensor]  # (n, seeded generator) -> (n, d) latents
_PROBES = 8  # prior latents every check at construction decodes
_BLOCKS = 7  # latent blocks swapped to find ignored dims without gradients (+ base: 8)


def _depends_on_mode(layer: nn.Module) -> bool:
    """A layer in training mode whose output (and, for running statistics, state) differs
    from eval mode: dropout, batch norm, instance norm that tracks running statistics."""
    return layer.training and (
        (isinstance(layer, nn.modules.dropout._DropoutNd) and layer.p > 0)
        or isinstance(layer, nn.modules.batchnorm._BatchNorm)
        or (isinstance(layer, nn.modules.instancenorm._InstanceNorm)
            and layer.track_running_stats))


class _LayerInTraining(Exception):
    """Raised by a forward pre-hook when a layer in training mode is about to run."""


def _stop_training_layer(name: str, module: nn.Module, args) -> None:
    raise _LayerInTraining(name)


def reachable_modules(fn: Callable, depth: int = 4,
                      defaults: bool = True) -> dict[str, nn.Module]:
    """The ``nn.Module``s a function reaches, by a stable name: its closure's cells, the
    globals its code loads, its default arguments, a bound method's object and function, a
    ``functools.partial``'s function and arguments, any object's attributes, the items of
    lists, tuples and dicts (the first 64); followed up to ``depth`` steps. What a search
    records of a function's weights (a module found is not searched further: its own weights
    cover what it holds). ``defaults=False``: not default arguments (what searches recorded
    before they were followed; their runs still resume)."""
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()

    def global_names(code: types.CodeType) -> set[str]:
        names = {i.argval for i in dis.get_instructions(code)
                 if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}  # not attribute names
        for const in code.co_consts:  # nested functions, comprehensions
            if isinstance(const, types.CodeType):
                names |= global_names(const)
        return names

    def visit(obj, label: str, left: int) -> None:
        if id(obj) in seen or left < 0 or isinstance(obj, type | types.ModuleType):
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.setdefault(label, obj)
        elif isinstance(obj, functools.partial):
            visit(obj.func, f"{label}.func", left - 1)
            for i, a in enumerate(obj.args):
                visit(a, f"{label}.args[{i}]", left - 1)
            for k in sorted(obj.keywords):
                visit(obj.keywords[k], f"{label}.{k}", left - 1)
        elif inspect.ismethod(obj):
            visit(obj.__self__, f"{label}.__self__", left - 1)
            visit(obj.__func__, f"{label}.__func__", left - 1)
        elif inspect.isfunction(obj):
            cells = zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=True)
            for name, cell in sorted(cells, key=lambda nc: nc[0]):
                try:
                    visit(cell.cell_contents, f"{label}.{name}", left - 1)
                except ValueError:  # an empty cell
                    pass
            for name in sorted(global_names(obj.__code__)):
                if name in obj.__globals__:
                    visit(obj.__globals__[name], f"{label}.{name}", left - 1)
            # default arguments: lambda z, G=G: G(z) (the loop-safe idiom)
            for i, value in enumerate((obj.__defaults__ or ()) if defaults else ()):
                visit(value, f"{label}.__defaults__[{i}]", left - 1)
            for name in sorted((obj.__kwdefaults__ or {}) if defaults else {}):
                visit(obj.__kwdefaults__[name], f"{label}.{name}", left - 1)
        elif isinstance(obj, list | tuple):
            for i, item in enumerate(obj[:64]):
                visit(item, f"{label}[{i}]", left - 1)
        elif isinstance(obj, dict):
            for key in sorted(obj, key=repr)[:64]:
                visit(obj[key], f"{label}[{key!r}]", left - 1)
        elif not isinstance(obj, torch.Tensor) and isinstance(getattr(obj, "__dict__", None),
                                                               dict):
            if callable(obj):
                visit(type(obj).__call__, f"{label}.__call__", left - 1)
            attrs = vars(obj)
            for name in sorted(attrs)[:64]:
                visit(attrs[name], f"{label}.{name}", left - 1)

    visit(fn, "net", depth)
    return found


class WrappedGenerator(Generator):
    """``net`` (latents (B, ``latent_dim``) -> images (B, 3, H, H)) as a QDGS generator.

    Checked once at construction, on prior latents: image shape and batch size, finite pixels
    inside ``output_range``, gradients reaching the latents (unless ``differentiable`` is
    False), and the same images for the same latents (alone or in a batch: no dropout or
    batch statistics).

    Args:
        net: an ``nn.Module`` (frozen here: eval mode, no parameter gradients; gradients
            still flow to the latents) or any differentiable function of the latents. A
            function over a network leaves the network as it is: put it in eval mode
            yourself (``G.eval()``). A search records the weights of a module, or of the
            modules a function reaches (:func:`reachable_modules`).
        latent_dim: the size of the space the search moves through (``net``'s input).
        output_range: the range of ``net``'s pixels, mapped linearly onto [0, 1]: ``(-1, 1)``
            for most GANs, ``(0, 255)`` for 8-bit output. Pixels outside it are clamped (as
            StyleGAN2's are). Only prior latents are checked (at construction: images far
            outside the range are refused); far from the prior a network may overshoot more,
            and is clamped without a word (the latent-norm penalty keeps a search near it).
        prior: the latents ``net`` was trained on, as ``prior(n, generator)`` drawing ``n``
            latents with the seeded CPU ``torch.Generator`` (they are moved to the device
            afterwards); default N(0, I).
        device: where a plain function's tensors live (a module's parameters tell it);
            ``"auto"``: CUDA when available.
        prior_samples: prior draws that estimate the typical latent norm (seed 0, on the CPU).
        differentiable: False for a generator that gives no gradients to the latents: it may
            return integer pixels (e.g. uint8, with ``output_range=(0, 255)``) or a numpy
            array, and runs under ``torch.no_grad``; searches take it with the gradient-free
            algorithms (``cma_mae``, ``cma_me``, ``map_elites``, ``random``), not
            ``cma_maega``.
    """

    def __init__(self, net: nn.Module | Callable[[torch.Tensor], torch.Tensor],
                 latent_dim: int, output_range: tuple[float, float] = (0.0, 1.0),
                 prior: Prior | None = None, device: str | torch.device | None = None,
                 prior_samples: int = 1000, differentiable: bool = True):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be an nn.Module or a function of the latents, got "
                            f"{type(net).__name__}")
        if not isinstance(latent_dim, numbers.Integral) or isinstance(latent_dim, bool) \
                or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        if isinstance(output_range, numbers.Number | str):
            raise ValueError(f"output_range must be the pair (low, high) of net's pixel range, "
                             f"e.g. (0, 255), got {output_range!r}")
        if len(output_range) != 2 or not float(output_range[1]) > float(output_range[0]) \
                or not all(math.isfinite(float(v)) for v in output_range):
            raise ValueError(f"output_range must be (low, high) with finite high > low, got "
                             f"{output_range!r}")
        if int(prior_samples) != prior_samples or prior_samples < 2:
            raise ValueError(f"prior_samples must be an int >= 2, got {prior_samples!r}")
        if not isinstance(differentiable, bool):
            raise ValueError(f"differentiable must be True or False, got {differentiable!r}")
        self.differentiable = differentiable
        if isinstance(net, nn.Module):
            net.eval().requires_grad_(False)
        self.net = net  # a module registers as a submodule: .to() moves it
        self.latent_dim = int(latent_dim)
        self.output_range = (float(output_range[0]), float(output_range[1]))
        self.prior = prior
        if device is not None:  # a plain function has no parameters to tell the device by
            self.register_buffer("_device_anchor", torch.empty(0, device=resolve_device(device)),
                                 persistent=False)
        if self.device.type == "meta":
            raise ValueError("net is on the meta device (no weights): load its weights first")
        z = self._draw(prior_samples, seed=0)
        if not torch.equal(self._draw(_PROBES, seed=1), self._draw(_PROBES, seed=1)):
            raise ValueError("prior(n, generator) must draw with the generator it is given "
                             "(the same seed gave other latents): seeded runs must reproduce")
        if torch.equal(self._draw(_PROBES, seed=1), self._draw(_PROBES, seed=2)):
            raise ValueError("prior(n, generator) gave the same latents for two seeds: it must "
                             "draw with the torch.Generator it is given (not one of its own), "
                             "or every seed gives the same samples")
        self.latent_norm = float(z.cpu().double().norm(dim=1).mean())
        # what a search's config records next to the weights' sha256 (which a function lacks)
        lo, hi = self.output_range
        self.name = (f"WrappedGenerator({getattr(net, '__qualname__', type(net).__name__)}, "
                     f"output_range=({lo:g}, {hi:g}), latent_norm={self.latent_norm:.6g}"
                     f"{'' if differentiable else ', differentiable=False'})")
        self.image_size = self._check_net(z[:_PROBES].to(self.device))

    # --- construction checks ----------------------------------------------------------------
    def _first_call(self, z: torch.Tensor) -> torch.Tensor:
        try:
            out = self._call(self.check_latents(z))
        except (torch.cuda.OutOfMemoryError, _LayerInTraining):
            raise  # not a mismatch between net and latents
        except Exception as e:  # noqa: BLE001 - a user's network fails in any way (TypeError:
            msg = str(e)  # a second argument; IndexError: a latent_dim too small, ...)
            hint = ""
            if "device" in msg or "cuda" in msg.lower():
                hint = (" A function over a network on another device needs device=, e.g. "
                        "WrappedGenerator(fn, latent_dim, device='cuda').")
            elif "dtype" in msg or "Half" in msg or "BFloat16" in msg:
                hint = (" Latents come as float32: a function over a half-precision network "
                        "casts them, e.g. lambda z: G(z.half()).")
            hint += (" A network that wants latents of another shape takes flat ones through "
                     "a view, e.g. latent_dim=256 and lambda z: G(z.view(-1, 4, 8, 8)).")
            raise ValueError(f"net failed on {len(z)} prior latents of shape "
                             f"{tuple(z.shape)}, {z.dtype}, on {z.device}: "
                             f"{type(e).__name__}: {msg}.{hint} "
                             "Check latent_dim and that net takes the latents alone (e.g. "
                             "lambda z: G(z, None) for a network that also wants a label)"
                             ) from e
        return self._images(out)

    def _check_net(self, z: torch.Tensor) -> int:
        """The checks on ``z``; returns the image size."""
        # layers in training mode that a function's network runs stop the first call before
        # they run (a call would change their running statistics); unused ones do not matter
        reached = {} if isinstance(self.net, nn.Module) else reachable_modules(self.net)
        hooks = [layer.register_forward_pre_hook(functools.partial(
                     _stop_training_layer, f"{name}.{sub}" if sub else name))
                 for name, m in reached.items() for sub, layer in m.named_modules()
                 if _depends_on_mode(layer)]
        try:
            with torch.no_grad():
                raw = self._first_call(z)
        except _LayerInTraining as e:
            raise ValueError(f"net runs a layer in training mode ({e}): dropout and batch "
                             "statistics would give other images for the same latents, and "
                             "each call would change the running statistics. Call .eval() on "
                             "the network first (nothing ran: its statistics are unchanged)"
                             ) from None
        finally:
            for hook in hooks:
                hook.remove()
        self._check_output(raw, len(z))
        with torch.no_grad():  # deterministic, and each image independent of its batch
            again, alone = self._raw(self.check_latents(z)), self._raw(self.check_latents(z[:1]))
            flipped = self._raw(self.check_latents(z.flip(0))).flip(0)  # other positions
        # rounding (other kernels for another batch size, TF32) moves pixels by far less than
        # dropout or batch statistics do
        tol = 1e-2 * (self.output_range[1] - self.output_range[0])
        if not (torch.allclose(again, raw, atol=tol, rtol=0)
                and torch.allclose(alone[0], raw[0], atol=tol, rtol=0)
                and torch.allclose(flipped, raw, atol=tol, rtol=0)):
            raise ValueError("net gives other images for the same latents (called again, "
                             "alone instead of in a batch, or at another place in the batch): "
                             "a network in training mode (dropout, batch statistics)? Call "
                             ".eval() on it. Noise it draws must be fixed per latent, not per "
                             "call or batch: make the noise part of the latents (a larger "
                             "latent_dim), or derive it from each latent")
        if self.differentiable:
            self._check_gradients(z)
        else:
            self._check_dead_blocks(z)
        return raw.shape[-1]

    def _check_dead_blocks(self, z: torch.Tensor) -> None:
        """Without gradients, a coarser check of dims the network ignores: :data:`_BLOCKS`
        contiguous blocks of dims; each base latent (the first two probes) with one block at
        a time taken from the probe that differs most from it there (one call of 8 per base,
        as the other checks). A block that changes neither base's image warns; a block on
        which the probes hardly differ (a prior that holds it fixed) is not judged."""
        d, n = self.latent_dim, min(_BLOCKS, self.latent_dim)
        edges = np.linspace(0, d, n + 1).round().astype(int)
        blocks = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        scale = float(z.std())  # the probes' spread: what a swap should move a block by
        tol = 1e-6 * (self.output_range[1] - self.output_range[0])
        unchanged = np.ones(n, bool)
        for base in (0, 1):
            batch = z[base:base + 1].repeat(n + 1, 1)
            for i, (a, b) in enumerate(blocks):
                gap = (z[:, a:b] - z[base, a:b]).norm(dim=1)
                donor = int(gap.argmax())
                if float(gap[donor]) < 0.1 * scale * (b - a) ** 0.5:
                    unchanged[i] = False  # not judged: the prior barely varies it
                batch[i + 1, a:b] = z[donor, a:b]
            with torch.no_grad():  # one call: no other kernels for another batch size, so
                out = self._raw(self.check_latents(batch)).double()  # last bits only
            unchanged &= np.array([float((out[i + 1] - out[0]).abs().max()) <= tol
                                   for i in range(n)])
        if not unchanged.any():
            return
        runs: list[list[int]] = []  # adjacent dead blocks as one run of dims
        for (a, b), dead in zip(blocks, unchanged, strict=True):
            if dead:
                if runs and runs[-1][1] == a:
                    runs[-1][1] = b
                else:
                    runs.append([a, b])
        count = sum(b - a for a, b in runs)
        where = ", ".join(f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in runs[:3])
        hint = ("is latent_dim larger than the network's input" if runs[-1][1] == d else
                "does the network leave part of the latent unused") + \
            " (or does it gate these dims off for such latents)? "
        where += ", ..." if len(runs) > 3 else ""
        dims, verb = ("dims", "change") if count > 1 else ("dim", "changes")
        warnings.warn(
            f"{'at least ' if n < d else ''}{count} of the {d} latent dims ({dims} {where}) "
            f"{verb} neither of two prior latents' images: {hint}The search would move "
            f"through them for nothing (blocks of {d // n}{'+' if d % n else ''} dims "
            "swapped for other prior latents' values; a block the network partly uses counts "
            "as used)", stacklevel=4)

    def _check_gradients(self, z: torch.Tensor) -> None:
        """Gradients reach the latents, through every latent dim (else a warning)."""
        zz = self.check_latents(z[:4]).detach().requires_grad_(True)
        with torch.enable_grad():
            try:
                out = self._raw(zz)
            except RuntimeError as e:  # e.g. numpy() of latents that require gradients
                if "grad" not in str(e):
                    raise
                raise ValueError(f"net failed on latents that require gradients ({e}): a "
                                 "numpy step inside it? QDGS's CMA-MAEGA follows gradients "
                                 "through the generator; for a generator without them pass "
                                 "differentiable=False and search with a gradient-free "
                                 "algorithm (e.g. cma_mae)") from e
            # a random cotangent: a sum's gradient vanishes where pixels' effects cancel
            # (a per-image normalisation), a random weighting's does not
            cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
            grad = torch.autograd.grad(out.float(), zz, cot.to(out.device), allow_unused=True
                                       )[0] if out.requires_grad else None
        if grad is None or not bool(grad.abs().sum() > 0):
            raise ValueError("no gradient reaches the latents through net (a torch.no_grad, "
                             ".detach() or numpy step inside it?): QDGS's CMA-MAEGA follows "
                             "the gradients of the CLIP scores through the generator. For a "
                             "generator without gradients pass differentiable=False and search "
                             "with a gradient-free algorithm (e.g. cma_mae)")
        dead = (grad.abs().sum(0) == 0).nonzero().flatten().tolist()
        if dead:
            warnings.warn(f"{len(dead)} of the {self.latent_dim} latent dims (e.g. "
                          f"{dead[:5]}) do not change net's images: is latent_dim larger than "
                          "the network's input? The search would move through them for "
                          "nothing", stacklevel=4)

    def _check_output(self, raw: torch.Tensor, n: int) -> None:
        """Shape (n, 3, H, H), finite, inside ``output_range`` up to a 5% overshoot."""
        if raw.ndim != 4 or raw.shape[1] != 3 or raw.shape[2] != raw.shape[3]:
            raise ValueError(f"net must map latents (B, {self.latent_dim}) to square RGB images "
                             f"(B, 3, H, H), got {tuple(raw.shape)} (grayscale: repeat the "
                             "channel; channels last: permute(0, 3, 1, 2), in numpy "
                             "transpose(0, 3, 1, 2); crop to a square)")
        if raw.shape[0] != n:
            raise ValueError(f"net returned {raw.shape[0]} images for {n} latents: it must "
                             "return one image per latent")
        if not raw.is_floating_point() and self.differentiable:
            raise ValueError(f"net returns {raw.dtype} images: integer pixels carry no "
                             "gradient to the latents; return the float pixels from before "
                             "the rounding (e.g. drop a final .round().to(torch.uint8)) "
                             "and declare their range, e.g. output_range=(0, 255); or, for a "
                             "generator without gradients, pass differentiable=False")
        if raw.is_floating_point() and not torch.isfinite(raw).all():
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
        if got_hi - got_lo < 0.01 * (hi - lo):  # e.g. [0, 1] declared as (0, 255): 0.4%
            raise ValueError(f"net's images of {n} prior latents use only [{got_lo:.3g}, "
                             f"{got_hi:.3g}], under 1% of output_range=({lo:g}, {hi:g}): the "
                             "images would be flat (black or grey). Pass the range net really "
                             "produces, e.g. output_range=(0, 1)")
        # a narrow range, or no pixel of n images in the lower half: [0, 1] declared as
        # (0, 255) makes them dark, as (-1, 1) washed out (every pixel >= 0.5)
        if got_hi - got_lo < 0.25 * (hi - lo) or got_lo >= lo + 0.45 * (hi - lo):
            warnings.warn(f"net's images of {n} prior latents use only [{got_lo:.3g}, "
                          f"{got_hi:.3g}] of output_range=({lo:g}, {hi:g}): if net's pixels "
                          "lie in a smaller range (e.g. [0, 1] declared as (-1, 1) or (0, "
                          "255)), the images will be washed out or dark", stacklevel=4)

    # --- the Generator protocol -------------------------------------------------------------
    def _raw(self, z: torch.Tensor) -> torch.Tensor:
        return self._images(self._call(z))

    def _call(self, z: torch.Tensor):
        if self.differentiable:
            return self.net(z)
        with torch.no_grad():  # (detached: a numpy step may take the latents as they are)
            return self.net(z.detach())

    def _images(self, x) -> torch.Tensor:
        """``net``'s output as a tensor (a numpy array's too, without gradients)."""
        if isinstance(x, np.ndarray) and not self.differentiable:  # a numpy renderer's
            x = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        if not isinstance(x, torch.Tensor):
            if isinstance(x, np.ndarray):
                hint = "(a generator without gradients, e.g. in numpy: pass differentiable=False)"
            elif isinstance(x, list | tuple) and x and isinstance(x[0], Image.Image):
                hint = ("(PIL images, e.g. a diffusers pipeline's: return a tensor, e.g. "
                        "torch.stack([torchvision.transforms.functional.pil_to_tensor(im) for "
                        "im in images]) with output_range=(0, 255) and differentiable=False; "
                        "pipelines also take output_type='pt')")
            else:
                hint = ("(wrap a network that returns a tuple, list or dict in a function that "
                        "picks the images, e.g. lambda z: G(z)[0])")
            raise TypeError(f"net must return a tensor of images, got {type(x).__name__} "
                            + hint)
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = self.check_latents(z).to(self.device)  # latents may come from the host
        lo, hi = self.output_range
        # float32 images whatever net's dtype: what CLIP and the dataset writers expect
        return ((self._raw(z).float() - lo) / (hi - lo)).clamp(0, 1)

    def _draw(self, n: int, seed: int) -> torch.Tensor:
        """``n`` prior latents on the CPU, float32."""
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        g = torch.Generator().manual_seed(int(seed))
        if self.prior is None:
            return torch.randn(n, self.latent_dim, generator=g)
        try:
            z = torch.as_tensor(self.prior(n, g))
        except TypeError as e:
            raise TypeError(f"prior must be a function prior(n, generator) -> (n, "
                            f"{self.latent_dim}) latents that draws with the torch.Generator "
                            f"it is given (e.g. torch.randn(n, {self.latent_dim}, "
                            f"generator=generator)); calling it failed: {e}") from e
        if z.shape != (n, self.latent_dim) or not z.is_floating_point():
            raise ValueError(f"prior(n={n}, generator) must return float latents of shape "
                             f"({n}, {self.latent_dim}), got {z.dtype} {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise ValueError(f"prior(n={n}, generator) returned NaN or inf latents")
        return z.detach().cpu().float()

    def sample_prior(self, n: int, seed: int | None = None) -> torch.Tensor:
        """``n`` prior latents drawn with ``seed``; no seed means seed 0, so two calls
        without one return the same latents: pass distinct seeds for distinct draws."""
        return self._draw(n, 0 if seed is None else seed).to(self.device)

    def fingerprint_state_dict(self, defaults: bool = True) -> dict[str, torch.Tensor]:
        """The tensors a search records (:meth:`PromptScorer.weights_sha256`): a module's own,
        and for a function those of the modules it reaches (:func:`reachable_modules`, with
        ``defaults``), so a run does not resume under other weights behind the same function."""
        state = dict(self.state_dict())
        if not isinstance(self.net, nn.Module):
            for label, module in reachable_modules(self.net, defaults=defaults).items():
                state.update({f"{label}:{k}": v for k, v in module.state_dict().items()})
        return state
