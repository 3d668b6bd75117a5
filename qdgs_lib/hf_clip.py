"""CLIP checkpoints in Hugging Face ``transformers`` format, read as open_clip weights.

The most common local copy of OpenAI's CLIP is the ``transformers`` one (hub repo
``openai/clip-vit-base-patch32``: ``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``). Its tensors are open_clip's under other names, with each attention's
q, k and v projections stored apart and the two output projections as linear layers (their
weights transposed). :func:`open_clip_state` renames them; :func:`create_clip` loads the
result into the open_clip architecture named, so every scorer path (packed attention,
float16, cutouts) is the same as for open_clip's own files. Nothing of ``transformers`` is
imported; ``scripts/check_against_transformers.py`` compares the embeddings with its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

# a checkpoint folder's weights: one file, or an index of shards (large models)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
_LAYER = re.compile(r"(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)")
_IN_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1",
             "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_TOP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
        "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # (transformers' spelling)
        "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
        "vision_model.post_layernorm.weight": "visual.ln_post.weight",
        "vision_model.post_layernorm.bias": "visual.ln_post.bias",
        "logit_scale": "logit_scale"}
_TRANSPOSED = {"text_projection.weight": "text_projection",
               "visual_projection.weight": "visual.proj"}
_IGNORED = re.compile(r"(text|vision)_model\.embeddings\.position_ids")  # (old files' buffers)


def is_hf_clip_state(keys) -> bool:
    """Whether a state dict's keys are a ``transformers`` ``CLIPModel``'s."""
    keys = set(keys)
    return "text_model.embeddings.token_embedding.weight" in keys and \
        "vision_model.embeddings.patch_embedding.weight" in keys


def weights_in(folder: str | Path) -> Path | None:
    """The weights file of a ``transformers`` checkpoint folder (None if it has none)."""
    for name in WEIGHT_FILES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def shard_files(index: str | Path) -> list[Path]:
    """The shard files a ``*.index.json`` names (its ``weight_map``), beside it; a shard
    named with a folder, or missing, is refused."""
    index = Path(index)
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index} is not a transformers shard index (a JSON object with a "
                         f"weight_map): {type(e).__name__}: {e}") from e
    bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
    if bad:
        raise ValueError(f"{index} names shards outside its folder ({bad[:3]}): refused")
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{index} names shards that are not beside it: {missing[:3]} "
                                "(download every file of the checkpoint)")
    return [index.parent / n for n in names]


def read_config(weights: str | Path) -> dict | None:
    """The ``config.json`` beside a ``transformers`` weights file, if there is one."""
    path = Path(weights).parent / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable transformers config ({e}): download it "
                         "again, or delete it (the weights load without it)") from e
    return config if isinstance(config, dict) else None


def uses_quick_gelu(config: dict) -> bool | None:
    """What the config's towers activate with: True for QuickGELU (OpenAI's CLIPs), False
    for another, None if it does not say."""
    acts = {c.get("hidden_act") for c in (config.get("text_config") or {},
                                          config.get("vision_config") or {})} - {None}
    return None if not acts else acts == {"quick_gelu"}


def open_clip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``transformers`` ``CLIPModel`` state dict under open_clip's ``CLIP`` names. Raises
    a ValueError naming any tensor it cannot place (another model family)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (layer, param) -> q, k, v
    unknown = []
    for key, t in state.items():
        if key in _TOP:
            out[_TOP[key]] = t
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = t.t().contiguous()
        elif m := _LAYER.fullmatch(key):
            tower, i, rest = m.group(1), int(m.group(2)), m.group(3)
            prefix = f"{'visual.' if tower == 'vision' else ''}transformer.resblocks.{i}."
            module, _, param = rest.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((prefix, param), {})[module[-6]] = t
            elif module in _IN_LAYER:
                out[f"{prefix}{_IN_LAYER[module]}.{param}"] = t
            else:
                unknown.append(key)
        elif not _IGNORED.fullmatch(key):
            unknown.append(key)
    for (prefix, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{prefix}: the attention's {param} lacks "
                             f"{sorted({'q', 'k', 'v'} - set(parts))} projections")
        out[f"{prefix}attn.in_proj_{param}"] = torch.cat([parts[c] for c in "qkv"])
    if unknown:
        raise ValueError(f"{len(unknown)} tensors of this checkpoint are not a CLIPModel's "
                         f"(e.g. {unknown[:3]}): only transformers' CLIPModel is read")
    return out
