"""CLIP models for scoring: open_clip by name with local weights, or the project's own small CLIPs.

Images enter as float tensors in [0, 1], shape (B, 3, H, W); preprocessing (resize, normalize,
optional random cutouts) is differentiable so that gradients reach the generator's latent.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from . import hf_clip
from .paths import pretrained_dir, shipped_weights_fix, weights_dir
from .profiles import CHOICES
from .unpickling import TorchArchiveUnpickler, is_torchscript_archive, load_torch_archive
from .utils import (
    BadFileError,
    adaptive_avg_pool_matmul,
    at_least_fp32,
    check_recorded_sha256,
    check_unit_images,
    read_weights_record,
    reading,
    resize_square_matmul,
    resolve_device,
)

CONFIG_DIR = Path(__file__).parent / "model_configs"
CUTOUT_STYLES = CHOICES["cutout_style"]
# the image and text towers' weights: float32; float16 as OpenAI's clip.load converts them
# (convolutions, linear layers, attention and projections; layer norms compute in float32);
# "released": float16 on CUDA, float32 elsewhere, as clip.load chose by device
CLIP_PRECISIONS = CHOICES["clip_precision"]
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# The project's own CLIPs: open_clip architectures from JSON configs in model_configs/,
# trained by scripts/train_clip.py; weights shipped under data/weights/.
OWN_MODELS = {
    "qdgs-shapes-clip": "qdgs-shapes-clip.safetensors",
    "qdgs-faces-clip": "qdgs-faces-clip.safetensors",
}
# the commands that trained the shipped files (their .json records hold the same settings)
OWN_MODELS_REBUILD = {
    "qdgs-shapes-clip": "train_clip.py --model qdgs-shapes-clip --steps 2500 --batch 64 "
                        "--vae-frac 0.6 --flips",
    "qdgs-faces-clip": "train_clip.py --model qdgs-faces-clip --steps 2000 --batch 64",
}

# Third-party weights the user supplies, and where to find them.
KNOWN_PRETRAINED = {
    "ViT-B-32-quickgelu": (
        "open_clip_model.safetensors",
        "the OpenAI ViT-B/32 weights: Hugging Face repo timm/vit_base_patch32_clip_224.openai, "
        "file open_clip_model.safetensors (or OpenAI's original ViT-B-32.pt, or the "
        "transformers copy: repo openai/clip-vit-base-patch32, its config.json and "
        "model.safetensors in a folder data/pretrained/clip-vit-base-patch32/)",
    ),
}
# where a transformers checkpoint folder of a KNOWN_PRETRAINED model is looked for
HF_FOLDERS = {"ViT-B-32-quickgelu": "clip-vit-base-patch32"}

_registered = False


class PackedSelfAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` for self-attention on contiguous (B, L, E) tokens, computed as
    one in-projection matmul + ``scaled_dot_product_attention``: the same math, parameters and
    state_dict keys.

    Why: with ``batch_first=True`` the stock module transposes its input to (L, B, E) before the
    in-projection, and a linear layer on that strided view runs as a batched matmul over L with
    the weight broadcast L times. Its backward, vmapped over the scorer's 1 + m cotangents, was
    the largest kernel of a ViT-B/32 jacobian on an H200 (cuBLAS picked a slow batched kernel).
    One (B*L, E) matmul does the same work. On a CPU a ViT-B/32 jacobian at batch 4 is ~15-20%
    faster and bitwise equal, but large batches differ in the last bits (another matmul
    blocking), so ``cuda_only`` (create_clip's ``"auto"``) keeps the stock code off CUDA and
    the offline default's results unchanged. Anything else (masks, cross-attention, attention
    weights) runs the stock code.
    """

    cuda_only = False

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        """``nn.MultiheadAttention.forward``'s signature and results. Called with
        ``need_weights=False``, no masks, and query, key and value the same (B, L, E) tensor, it
        takes the packed path and returns ``(out, None)``; anything else (and, with ``cuda_only``, a
        CPU input) runs the stock code."""
        stock = (need_weights or attn_mask is not None or key_padding_mask is not None
                 or is_causal or not self.batch_first or not self._qkv_same_embed_dim
                 or not (query is key is value) or query.is_nested or query.ndim != 3
                 or (self.cuda_only and not query.is_cuda))
        if stock:
            return super().forward(query, key, value, key_padding_mask, need_weights,
                                   attn_mask, average_attn_weights, is_causal)
        return self._packed(query), None

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        h = self.num_heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, h, e // h).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, E/H)
        out = F.scaled_dot_product_attention(q, k, v,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(b, n, e)
        return F.linear(out, self.out_proj.weight, self.out_proj.bias)


def pack_self_attention(tower: nn.Module, cuda_only: bool = False) -> int:
    """Swap each stock ``nn.MultiheadAttention`` in ``tower`` (an open_clip image tower) for a
    :class:`PackedSelfAttention` holding the same parameters; returns how many were swapped."""
    swapped = 0
    for module in tower.modules():
        for name, child in list(module.named_children()):
            hooks = (child._forward_hooks, child._forward_pre_hooks, child._backward_hooks)
            if type(child) is nn.MultiheadAttention and child.batch_first \
                    and child._qkv_same_embed_dim and child.bias_k is None \
                    and not child.add_zero_attn and not any(hooks):  # (hooks would be lost)
                packed = PackedSelfAttention(child.embed_dim, child.num_heads, child.dropout,
                                             bias=child.in_proj_bias is not None,
                                             batch_first=True, device="meta")
                # the same parameter tensors, not copies (assign takes the meta module's
                # requires_grad: put each tensor's own back)
                params = child.state_dict(keep_vars=True)
                grads = {k: t.requires_grad for k, t in params.items()}
                packed.load_state_dict(params, assign=True)
                for k, t in packed.state_dict(keep_vars=True).items():
                    t.requires_grad_(grads[k])
                packed.train(child.training)
                packed.cuda_only = cuda_only
                setattr(module, name, packed)
                swapped += 1
    return swapped


def register_configs() -> None:
    """Make the JSON configs in ``model_configs/`` known to open_clip's factory."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def resolve_weights(name: str, weights: str | Path | None) -> Path | None:
    """Find the weights file for ``name``; raise a FileNotFoundError that says what to do."""
    if weights is not None:
        path = Path(weights)
        if path.is_dir():  # a transformers checkpoint folder
            found = hf_clip.weights_in(path)
            if found is None:
                raise FileNotFoundError(
                    f"{path} is a folder without {' or '.join(hf_clip.WEIGHT_FILES)}: pass a "
                    "weights file, or a transformers CLIP checkpoint folder (config.json + "
                    "model.safetensors, e.g. the hub repo openai/clip-vit-base-patch32)")
            return found
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weights file not found: {path} (a profile's "
                                    "clip_weights is a path under data/ or an absolute one)")
        return path
    if name in OWN_MODELS:
        path = weights_dir() / OWN_MODELS[name]
        if not path.is_file():
            raise FileNotFoundError(f"The project's CLIP weights {path} are missing. " +
                                    shipped_weights_fix(path.name,
                                                        OWN_MODELS_REBUILD[name]))
        return path
    if name in KNOWN_PRETRAINED:
        filename, where = KNOWN_PRETRAINED[name]
        folders = [pretrained_dir() / HF_FOLDERS[name]] if name in HF_FOLDERS else []
        candidates = [pretrained_dir() / filename, pretrained_dir() / f"{name}.safetensors",
                      pretrained_dir() / "ViT-B-32.pt",
                      *(folder / f for folder in folders for f in hf_clip.WEIGHT_FILES)]
        for path in candidates:
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"No local weights for CLIP '{name}'. Download {where} and put it at "
            f"{pretrained_dir() / filename} (OpenAI's file at {pretrained_dir() / 'ViT-B-32.pt'}"
            "; or pass weights=<path>, in a profile clip_weights). "
            "Nothing is downloaded at run time."
        )
    raise FileNotFoundError(
        f"No weights given for CLIP '{name}'. Pass weights=<local .safetensors/.bin/.pt file> "
        f"(names with a default file under data/pretrained/: {sorted(KNOWN_PRETRAINED)}; the "
        "paper's CLIP is 'ViT-B-32-quickgelu')."
    )


class Clip(nn.Module):
    """A CLIP model with differentiable image preprocessing and a prompt cache.

    Args:
        model: an open_clip ``CLIP`` module.
        tokenizer: its tokenizer.
        image_size: the model's input resolution.
        mean, std: normalization of the model's image tower.
        num_cutouts: if > 0, images are encoded as the mean embedding over this many random
            square crops (the CLIP-guidance trick the paper's code used); 0 encodes the whole image.
        cutout_style: ``"project"``: squares of 60-100% of the side, resized like whole images;
            ``"released"``: the released code's (``MakeCutouts(224, n, cut_pow=0.5)``): sides
            from the model's input size (or the image's, if smaller) to the image's, drawn as
            ``u ** 0.5``, average-pooled to the input size. With ``num_cutouts`` 0 the style
            says how the whole image is resized: ``"project"`` antialiased bilinear,
            ``"released"`` average-pooled as the released crops are. For images no larger
            than the input (the released code's 128 px shapes) its one crop is always the
            whole image, so this is the released input exactly, with no random draw.
    """

    def __init__(self, model: nn.Module, tokenizer, image_size: int,
                 mean=OPENAI_MEAN, std=OPENAI_STD, num_cutouts: int = 0, name: str = "",
                 cutout_style: str = "project"):
        super().__init__()
        if cutout_style not in CUTOUT_STYLES:
            raise ValueError(f"unknown cutout_style {cutout_style!r}; choose from "
                             f"{CUTOUT_STYLES}")
        self.cutout_style = cutout_style
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.num_cutouts = num_cutouts
        self.name = name
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        """The device the model is on (that of its normalization buffer ``mean``)."""
        return self.mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> model input, differentiably."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        # float32 in (autocast may hand over half-precision images: the normalisation is
        # cheap at full precision). The resize as matmuls: jacobians flow back through it,
        # and the interpolation's backward is not deterministic on CUDA
        if self.cutout_style == "released":
            images = self._pool(at_least_fp32(images))
        else:
            images = resize_square_matmul(at_least_fp32(images), self.image_size)
        return (images - self.mean) / self.std

    def _pool(self, images: torch.Tensor) -> torch.Tensor:
        """Average-pooled to the input size, as the released ``MakeCutouts``: by matmuls under
        torch's deterministic algorithms on CUDA (adaptive pooling's backward has no
        deterministic CUDA kernel there), equal up to rounding."""
        if images.is_cuda and torch.are_deterministic_algorithms_enabled():
            return adaptive_avg_pool_matmul(images, self.image_size)
        return F.adaptive_avg_pool2d(images, self.image_size)

    def _cutouts(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.cutout_style == "released":
            return self._released_cutouts(images, generator)
        b, _, h, w = images.shape
        side = min(h, w)
        crops = []
        for _ in range(self.num_cutouts):
            size = int(side * (0.6 + 0.4 * torch.rand((), generator=generator).item()))
            y = int(torch.randint(0, h - size + 1, (), generator=generator))
            x = int(torch.randint(0, w - size + 1, (), generator=generator))
            crops.append(self.preprocess(images[:, :, y:y + size, x:x + size]))
        return torch.cat(crops)  # (num_cutouts * B, 3, S, S)

    def _released_cutouts(self, images: torch.Tensor,
                          generator: torch.Generator | None) -> torch.Tensor:
        """The released ``MakeCutouts``, draw for draw (the side in float32 as it computes it,
        then x before y): with torch's global generator seeded alike, the same crops. Under
        torch's deterministic algorithms on CUDA the pooling runs as matmuls (adaptive
        pooling's backward has no deterministic CUDA kernel): equal up to rounding."""
        _, _, h, w = images.shape
        side = min(h, w)
        low = min(side, self.image_size)
        crops = []
        for _ in range(self.num_cutouts):
            size = int(torch.rand((), generator=generator) ** 0.5 * (side - low) + low)
            x = int(torch.randint(0, w - size + 1, (), generator=generator))
            y = int(torch.randint(0, h - size + 1, (), generator=generator))
            crops.append(self.preprocess(images[:, :, y:y + size, x:x + size]))
        return torch.cat(crops)

    def encode_image(self, images: torch.Tensor, generator: torch.Generator | None = None,
                     normalize: bool = True, check: bool = True) -> torch.Tensor:
        """Unit (or raw) image embeddings. ``check=False`` skips the NaN check, which costs a
        device->host sync; callers that check their outputs later (PromptScorer) skip it."""
        if check:
            check_unit_images(images)  # (a float tensor; its finite values in [0, 1])
            if not torch.isfinite(images).all():
                raise ValueError("images contain NaN or inf: check the generator's "
                                 "output/latents")
        dtype = self.weights_dtype  # the input in the towers' precision, as OpenAI's CLIP
        if self.num_cutouts > 0:
            emb = self.model.encode_image(self._cutouts(images, generator).to(dtype))
            emb = emb.view(self.num_cutouts, images.shape[0], -1).mean(0)
        else:
            emb = self.model.encode_image(self.preprocess(images).to(dtype))
        return F.normalize(emb, dim=-1) if normalize else emb

    @property
    def weights_dtype(self) -> torch.dtype:
        """The image tower's precision: that of its first convolution or linear layer
        (float16 after :func:`create_clip`'s ``precision="float16"``); float32 without one."""
        tower = getattr(self.model, "visual", None)
        layers = tower.modules() if isinstance(tower, nn.Module) else ()
        return next((m.weight.dtype for m in layers if isinstance(m, nn.Conv2d | nn.Linear)),
                    torch.float32)

    @torch.no_grad()
    def encode_text(self, prompts: list[str], normalize: bool = True) -> torch.Tensor:
        """Embeddings of ``prompts`` (cached: the same prompt is tokenized and encoded once)."""
        if isinstance(prompts, str) or len(prompts) == 0:
            raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r} "
                             "(a single prompt: [prompt])")
        missing = [p for p in prompts if p not in self._text_cache]
        if missing:
            tokens = self.tokenizer(missing).to(self.device)
            emb = self.model.encode_text(tokens).float()
            for p, e in zip(missing, emb, strict=True):
                self._text_cache[p] = e
        emb = torch.stack([self._text_cache[p] for p in prompts])
        return F.normalize(emb, dim=-1) if normalize else emb

    def _apply(self, fn, recurse=True):
        self._text_cache = {}  # cached embeddings live on the old device/dtype
        return super()._apply(fn, recurse)


def create_clip(name: str, weights: str | Path | None = None,
                device: str | torch.device = "auto",
                num_cutouts: int = 0, pretrained: bool = True,
                packed_attention: bool | str = "auto", cutout_style: str = "project",
                precision: str = "float32") -> Clip:
    """Build a :class:`Clip` by open_clip model name.

    Args:
        name: an open_clip model name (``"ViT-B-32-quickgelu"`` for the paper) or one of the
            project's own (``"qdgs-shapes-clip"``, ``"qdgs-faces-clip"``).
        weights: a local weights file; if None, the default location for ``name`` is used.
        pretrained: False builds the architecture with random weights (benchmarks only).
        num_cutouts, cutout_style: random crops per call (:class:`Clip`).
        packed_attention: run the image tower's self-attention as
            :class:`PackedSelfAttention` (same math, faster jacobians): ``"auto"`` on CUDA
            only, True everywhere, False never (benchmarks compare the two).
        precision: ``"float32"``; ``"float16"``, the weights converted as OpenAI's
            ``clip.load`` converts them on a GPU (``convert_weights``: convolutions, linear
            layers, attention and projections in half precision; layer norms compute in
            float32; images enter in half precision, embeddings are normalized in it); or
            ``"released"``: float16 on CUDA and float32 elsewhere, which is what the released
            code's ``clip.load(..., device=device)`` gave.
    """
    if precision not in CLIP_PRECISIONS:
        raise ValueError(f"precision must be one of {CLIP_PRECISIONS}, got {precision!r}")
    device = resolve_device(device)
    if precision == "released":
        precision = "float16" if device.type == "cuda" else "float32"
    register_configs()
    if name not in open_clip.list_models():
        import difflib

        known = [*OWN_MODELS, *open_clip.list_models()]
        close = difflib.get_close_matches(name.replace("/", "-"), known, n=4, cutoff=0.5)
        raise ValueError(f"unknown CLIP model '{name}'"
                         + (f"; did you mean {close}?" if close else "")
                         + f" The paper's: 'ViT-B-32-quickgelu'; with local weights: "
                         f"{sorted(KNOWN_PRETRAINED)}; the project's own: {sorted(OWN_MODELS)}. "
                         "All: open_clip.list_models().")
    path = resolve_weights(name, weights) if pretrained else None
    if path is not None and name in OWN_MODELS and weights is None:
        check_recorded_sha256(path, shipped_weights_fix(path.name,
                                                        OWN_MODELS_REBUILD[name]))
    where = KNOWN_PRETRAINED.get(name, ("", "the file it was trained with"))[1]
    fix = (f"Pass the weights of '{name}' ({where}), or the model name these weights "
           "belong to.")
    if path is not None:
        _check_weights_belong_to(name, path, fix)
    with reading(path, f"open_clip weights for '{name}'", fix):
        if path is not None and path.suffix == ".pt" and is_torchscript_archive(path):
            # OpenAI's original release: a TorchScript archive. torch.jit.load would run the
            # archive's TorchScript code (its __setstate__ can write files), so its tensors
            # are read as data and the plain model is built around them, in float32
            state = read_torchscript_tensors(path)
            _check_architecture(name, state, path)
            # OpenAI's weights were trained with QuickGELU (open_clip's loader forced it too)
            model = _architecture(name, force_quick_gelu=True)
            want = model.state_dict()
            missing = [k for k in want if k not in state]
            if missing:
                raise BadFileError(f"{path} lacks {len(missing)} of the model's tensors "
                                   f"(e.g. {missing[:3]}). {fix}")
            model.load_state_dict({k: state[k] for k in want})
        elif path is not None and (state := _hf_state(path)) is not None:
            # a transformers CLIPModel: its tensors renamed into the open_clip architecture
            model = _architecture(name)
            try:
                renamed = hf_clip.open_clip_state(state)
            except ValueError as e:
                raise BadFileError(f"{path}: {e}. {fix}") from e
            _load_exactly(model, renamed, path, fix)
            _check_activation(name, path)
        else:
            model = open_clip.create_model(name, pretrained=str(path) if path else None,
                                           weights_only=True)
    _layer_norms_take_fp32(model)
    if precision == "float16":
        open_clip.model.convert_weights_to_lp(model, torch.float16)
    if packed_attention not in ("auto", True, False):
        raise ValueError("packed_attention must be 'auto', True or False, "
                         f"got {packed_attention!r}")
    if packed_attention:
        pack_self_attention(model.visual, cuda_only=packed_attention == "auto")
    cfg = open_clip.get_model_config(name) or {}
    image_size = cfg.get("vision_cfg", {}).get("image_size", 224)
    mean = cfg.get("preprocess_cfg", {}).get("mean", OPENAI_MEAN)
    std = cfg.get("preprocess_cfg", {}).get("std", OPENAI_STD)
    clip = Clip(model, open_clip.get_tokenizer(name), image_size, mean, std, num_cutouts, name,
                cutout_style)
    return clip.to(device)


class PromotingLayerNorm(nn.LayerNorm):
    """A layer norm that casts a half-precision input to float32 itself (float32 and float64
    inputs as they are) and returns the input's dtype: the same parameters and numbers as
    ``nn.LayerNorm`` at full precision. See :func:`_layer_norms_take_fp32`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Layer norm of ``x`` computed in at least float32, returned in ``x``'s dtype."""
        out = F.layer_norm(at_least_fp32(x), self.normalized_shape, self.weight, self.bias,
                           self.eps)
        return out.to(x.dtype)


def _layer_norms_take_fp32(model: nn.Module) -> None:
    """Make open_clip's layer norms (and plain ``nn.LayerNorm``) :class:`PromotingLayerNorm`.

    Under autocast (``PromptScorer.autocast``) torch casts a half-precision input inside
    ``layer_norm``, and then ``torch.func``'s vmapped backward (the ``func`` jacobian mode)
    fails on the mixed dtypes (torch 2.14, on CPU); an input cast outside it does not.
    Subclasses with their own forward (e.g. timm's) are left alone."""
    for m in model.modules():
        if type(m) in (open_clip.transformer.LayerNorm, nn.LayerNorm):
            m.__class__ = PromotingLayerNorm


def _check_weights_belong_to(name: str, path: Path, fix: str) -> None:
    """Refuse weights whose record names another model; warn when OpenAI's QuickGELU weights
    are loaded into a GELU architecture (the shapes fit, the embeddings are degraded)."""
    config = (read_weights_record(path, fix) or {}).get("config")
    trained_as = config.get("model") if isinstance(config, dict) else None
    if trained_as and trained_as != name:
        raise ValueError(f"{path} was trained as '{trained_as}' (its record {path.name}.json "
                         f"says so), not '{name}': pass model name '{trained_as}'")
    openai_files = {f for f, _ in KNOWN_PRETRAINED.values()} | {"ViT-B-32.pt"}
    if path.name in openai_files and name not in KNOWN_PRETRAINED:
        warnings.warn(f"{path.name} holds OpenAI's weights, trained with QuickGELU; '{name}' "
                      f"builds another activation around them. Use one of "
                      f"{sorted(KNOWN_PRETRAINED)}.", stacklevel=3)


def _architecture(name: str, **kwargs) -> nn.Module:
    """open_clip's model ``name`` to load weights into, without its warning that no weights
    were loaded (they are, next)."""
    class Quiet(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    root, quiet = logging.getLogger(), Quiet()
    root.addFilter(quiet)
    try:
        return open_clip.create_model(name, **kwargs)
    finally:
        root.removeFilter(quiet)


def _hf_state(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of a transformers CLIP checkpoint file, or of the shards its index names
    (None for other files)."""
    if path.name.endswith(".index.json"):
        state = {}
        for shard in hf_clip.shard_files(path):
            state.update(_tensors(shard))
    elif path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:  # the header alone tells (open_clip's own
            if not hf_clip.is_hf_clip_state(f.keys()):  # files are read once, by open_clip)
                return None
        state = load_file(str(path))
    elif path.suffix == ".bin":
        state = _tensors(path)
    else:
        return None
    return state if hf_clip.is_hf_clip_state(state) else None


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a torch zip of tensors read as data (``weights_only``)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise BadFileError(f"{path} holds a {type(state).__name__}, not a dict of tensors")
    return state


def _check_activation(name: str, path: Path) -> None:
    """Warn when the config beside a transformers checkpoint names another activation than
    the open_clip architecture ``name`` builds (the shapes fit, the embeddings degrade)."""
    config = hf_clip.read_config(path)
    quick = None if config is None else hf_clip.uses_quick_gelu(config)
    builds = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))
    if quick is not None and quick != builds:
        other = name.removesuffix("-quickgelu") if builds else f"{name}-quickgelu"
        use = (f"use '{other}'" if other in open_clip.list_models() else
               f"use an architecture with{'out' if builds else ''} QuickGELU (an open_clip "
               f"config's quick_gelu: {str(not builds).lower()})")
        warnings.warn(f"{path.parent / 'config.json'} says these weights were trained with "
                      f"{'QuickGELU' if quick else 'another activation than QuickGELU'}, but "
                      f"'{name}' builds {'QuickGELU' if builds else 'GELU'}: {use}",
                      stacklevel=4)


def _load_exactly(model: nn.Module, state: dict[str, torch.Tensor], path: Path,
                  fix: str) -> None:
    """Load every tensor of ``model`` from ``state``, refusing missing, extra or misshapen
    ones with a message that names them."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(want[k].shape)}" for k in want
              if k in state and state[k].shape != want[k].shape]
    if missing or extra or shapes:
        what = "; ".join(part for part in (
            f"lacks {missing[:3]}" if missing else "",
            f"has more tensors ({extra[:3]})" if extra else "",
            f"other shapes ({shapes[:2]})" if shapes else "") if part)
        raise BadFileError(f"{path} does not fit this model name's architecture: {what}. "
                           f"{fix}")
    model.load_state_dict(state)


def _check_architecture(name: str, state: dict[str, torch.Tensor], path: Path) -> None:
    """A TorchScript file brings its own architecture: it must be ``name``'s."""
    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    want = (vision.get("width"), vision.get("layers"), vision.get("patch_size"))
    if want[2] is None:  # not a ViT (OpenAI's ResNets): nothing to compare here
        return
    got = (None, None, None)
    conv = state.get("visual.conv1.weight")
    if conv is not None and conv.ndim == 4:
        blocks = {k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")}
        got = (conv.shape[0], len(blocks), conv.shape[2])
    if got != want:
        raise ValueError(f"{path} holds a ViT of width {got[0]}, {got[1]} layers and patch "
                         f"{got[2]}, but '{name}' has {want[0]}, {want[1]} and {want[2]}: pass "
                         "the model name these weights belong to")


class _ScriptObject:
    """A TorchScript object of the archive as data: its attributes, no class, no code."""

    def __setstate__(self, state):
        self.state = state


class _TorchScriptUnpickler(TorchArchiveUnpickler):
    def find_class(self, module: str, name: str):
        if (module == "__torch__" or module.startswith("__torch__.")) and "." not in name:
            return _ScriptObject
        return super().find_class(module, name)


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive (e.g. OpenAI's ``ViT-B-32.pt``), by attribute
    path (``visual.conv1.weight``), read as data: its code is never compiled or run."""
    with reading(path, "a TorchScript archive", "Use the .safetensors weights instead."):
        root = load_torch_archive(path, _TorchScriptUnpickler)
    out: dict[str, torch.Tensor] = {}

    def walk(obj, at: str, depth: int = 0) -> None:
        if depth > 64:
            raise BadFileError(f"{path}: modules nested more than 64 deep")
        for key, value in (obj.state.items() if isinstance(getattr(obj, "state", None), dict)
                           else ()):
            if isinstance(value, torch.Tensor):
                out[at + str(key)] = value
            elif isinstance(value, _ScriptObject):
                walk(value, f"{at}{key}.", depth + 1)

    walk(root, "")
    return out
