"""Reading StyleGAN2 and StyleGAN3 files: NVIDIA's network pickles (safely) and the project's
safetensors.

Kept apart from the network (as NVIDIA keeps ``legacy.py`` beside ``networks.py``). A network
pickle is read by a restricted unpickler that maps NVIDIA's persistence records onto plain data
(:class:`PersistentRecord`): no class or source from the file is ever imported or run.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..paths import STYLEGAN2_FFHQ_URL, pretrained_dir
from ..unpickling import RestrictedUnpickler
from ..utils import BadFileError, atomic_path, check_tensor_shapes, reading, resolve_device
from .stylegan2 import StyleGAN2
from .stylegan3 import StyleGAN3

# --- our own format ---------------------------------------------------------------------------
CONFIG_KEYS = {StyleGAN2: "qdgs_stylegan2_config", StyleGAN3: "qdgs_stylegan3_config"}


def save_stylegan2(net: StyleGAN2 | StyleGAN3, path: str | Path) -> None:
    """Safetensors with the architecture config in the metadata, written atomically (a
    StyleGAN3 too, under its own metadata key)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={CONFIG_KEYS[type(net)]: json.dumps(net.config)})


def _stylegan3_config_problem(config: dict) -> str | None:
    """What makes a StyleGAN3 config from a file's metadata unbuildable, before any module is
    built from it (the counts bound the modules' memory; see check_tensor_shapes)."""
    geometry = config.get("geometry")
    layers = geometry.get("layers") if isinstance(geometry, dict) else None
    if not (isinstance(layers, list) and 2 <= len(layers) <= 64
            and isinstance(geometry.get("input"), dict)):
        return "a geometry with an input and 2..64 layers"
    for spec in [geometry["input"], *layers]:
        numbers = [v for k, v in spec.items() if k not in ("conv_clamp", "is_torgb",
                                                           "down_radial")]
        flat = [x for v in numbers for x in (v if isinstance(v, list) else [v])]
        if not all(isinstance(x, (int, float)) and -4096 <= x <= 4096 for x in flat):
            return "layers whose sizes, channels and factors are numbers within +-4096"
    return None


def load_stylegan2_safetensors(path: str | Path) -> StyleGAN2 | StyleGAN3:
    """Read a file :func:`save_stylegan2` wrote: a :class:`StyleGAN2` or :class:`StyleGAN3`
    built from the config in its metadata (checked, with the tensor shapes, before the
    network is built), its weights loaded, on the CPU in eval mode."""
    from safetensors import safe_open

    fix = "Write it again with save_stylegan2 from NVIDIA's network pickle."
    with reading(path, "a qdgs StyleGAN2 or StyleGAN3 safetensors file", fix):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        kinds = [cls for cls, key in CONFIG_KEYS.items() if key in meta]
        if not kinds:
            raise BadFileError(f"{path} is not a qdgs StyleGAN2 or StyleGAN3 safetensors file "
                               f"(no config metadata). {fix}")
        cls = kinds[0]
        config = json.loads(meta[CONFIG_KEYS[cls]])
        if not isinstance(config, dict):
            raise BadFileError(f"{path}: its config is {type(config).__name__}, not a "
                               f"mapping. {fix}")
        res = config.get("img_resolution", 256)
        layers = config.get("mapping_layers", 8 if cls is StyleGAN2 else 2)
        problem = _stylegan3_config_problem(config) if cls is StyleGAN3 else None
        if not (isinstance(res, int) and 4 <= res <= 4096 and res & (res - 1) == 0
                and isinstance(layers, int) and 1 <= layers <= 64) or problem:
            raise BadFileError(f"{path}: config {str(config)[:300]} is no {cls.__name__} "
                               f"(img_resolution a power of 2 in 4..4096, 1..64 mapping layers"
                               f"{', ' + problem if problem else ''}). {fix}")
        check_tensor_shapes(path, lambda: cls(**config))
        net = cls(**config)
        net.load_state_dict(load_file(str(path)))
    return net.eval()


# --- NVIDIA network pickles -----------------------------------------------------------------
class PersistentRecord:
    """What a ``torch_utils.persistence`` record holds, as data: no class, no source."""

    def __init__(self, meta: dict):
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise ValueError("unsupported persistent record in network pickle")
        self.class_name = meta.get("class_name")
        self.version = meta.get("version")
        self.state = meta.get("state") or {}
        # module_src is NVIDIA's source text: never executed and not kept.

    def __repr__(self):
        return f"PersistentRecord({self.class_name})"


class _EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def _load_storage(b: bytes):
    # a pickle saved from a GPU tags its storages "cuda": read them to the CPU (the caller
    # moves the network to its device), so such files load on machines without one
    return torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")


_NV_ALLOWED = {
    "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state", "_codecs.encode", "numpy.dtype", "numpy.ndarray",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "builtins.set", "torch.FloatStorage", "torch.float32",
}
_NV_OVERRIDES = {
    "torch_utils.persistence._reconstruct_persistent_obj": PersistentRecord,
    "dnnlib.util.EasyDict": _EasyDict,
    "torch.storage._load_from_bytes": _load_storage,
}

MISSING_FFHQ = (
    "StyleGAN2-FFHQ-256 weights not found at {path}. Download NVIDIA's "
    "'stylegan2-ffhq-256x256.pkl' (NGC model nvidia/research/stylegan2, version 1: "
    f"{STYLEGAN2_FFHQ_URL}, the released code's network) and put it there; another network "
    "pickle goes in the profile override stylegan_weights (then the released latent "
    "augmentations, made for this network, do not fit it). It is licensed by NVIDIA "
    "(non-commercial): never commit it."
)
NETWORK_PICKLE = ("an NVIDIA StyleGAN2 network pickle (or StyleGAN3's: a dict with G_ema, e.g. "
                  "stylegan2-ffhq-256x256.pkl)")
REFETCH = (f"Download it again ({STYLEGAN2_FFHQ_URL}), or "
           "pass our .safetensors written by save_stylegan2.")


def read_network_pickle(path: str | Path) -> dict[str, Any]:
    """Read an NVIDIA network pickle into plain records, running no code from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(MISSING_FFHQ.format(path=path))
    with open(path, "rb") as f:
        head = f.read(4)
        if head.startswith(b"PK"):
            raise BadFileError(
                f"{path} is a zip archive (torch.save's format, e.g. a state dict), not "
                f"{NETWORK_PICKLE}. {REFETCH}")
        f.seek(0)
        with reading(path, NETWORK_PICKLE, REFETCH):
            data = RestrictedUnpickler(f, allowed=_NV_ALLOWED, overrides=_NV_OVERRIDES).load()
    if not isinstance(data, dict) or not isinstance(data.get("G_ema"), PersistentRecord):
        raise BadFileError(f"{path} is not {NETWORK_PICKLE}: no G_ema network record. "
                           f"{REFETCH}")
    return data


def _flatten(rec: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (rec.state.get(group) or {}).items():
            if t is not None:
                out[prefix + name] = t.detach() if isinstance(t, torch.Tensor) else t
    for name, child in (rec.state.get("_modules") or {}).items():
        if isinstance(child, PersistentRecord):
            out.update(_flatten(child, f"{prefix}{name}."))
        elif child is not None:
            raise ValueError(f"unexpected module {name!r} of type {type(child).__name__}")
    return out


def _find(rec: PersistentRecord, key: str):
    """First value of attribute ``key`` in the record tree (depth-first)."""
    if key in rec.state:
        return rec.state[key]
    for child in (rec.state.get("_modules") or {}).values():
        if isinstance(child, PersistentRecord):
            v = _find(child, key)
            if v is not None:
                return v
    return None


def _ints(value, n: int) -> list[int]:
    """An attribute NVIDIA stores as an int, a list or a numpy array, as ``n`` ints."""
    return [int(v) for v in np.broadcast_to(np.asarray(value), [n])]


def stylegan3_from_records(g: PersistentRecord) -> StyleGAN3:
    """Build :class:`StyleGAN3` from a ``G_ema`` record of NVIDIA's StyleGAN3 code: each
    layer's geometry as the file states it, then its tensors (strictly)."""
    st = g.state
    synth, mapping = st["_modules"]["synthesis"], st["_modules"]["mapping"]
    inp = synth.state["_modules"]["input"].state
    spec_in = {"channels": int(inp["channels"]), "size": _ints(inp["size"], 2),
               "sampling_rate": float(inp["sampling_rate"]), "bandwidth": float(inp["bandwidth"])}
    specs = []
    for name in synth.state["layer_names"]:
        layer = synth.state["_modules"][name].state
        buffers = layer["_buffers"]
        up, down = buffers.get("up_filter"), buffers.get("down_filter")
        clamp = layer.get("conv_clamp")
        specs.append({
            "is_torgb": bool(layer["is_torgb"]), "in_channels": int(layer["in_channels"]),
            "out_channels": int(layer["out_channels"]), "in_size": _ints(layer["in_size"], 2),
            "out_size": _ints(layer["out_size"], 2), "conv_kernel": int(layer["conv_kernel"]),
            "up_factor": int(layer["up_factor"]), "down_factor": int(layer["down_factor"]),
            "up_taps": 1 if up is None else int(up.shape[0]),
            "down_taps": 1 if down is None else int(down.shape[0]),
            "down_radial": down is not None and down.ndim == 2,
            "padding": _ints(layer["padding"], 4),
            "conv_clamp": None if clamp is None else float(clamp)})
    fc0 = mapping.state["_modules"]["fc0"].state
    net = StyleGAN3(
        z_dim=int(st["z_dim"]), w_dim=int(st["w_dim"]), img_resolution=int(st["img_resolution"]),
        img_channels=int(st.get("img_channels", 3)),
        mapping_layers=int(mapping.state.get("num_layers", 2)),
        mapping_lr_multiplier=float(fc0.get("bias_gain", 0.01)),
        output_scale=float(synth.state.get("output_scale", 1)),
        geometry={"input": spec_in, "layers": specs})
    missing, unexpected = net.load_state_dict(_flatten(g), strict=False)
    if missing or unexpected:
        raise ValueError(f"network pickle does not match StyleGAN3: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return net.eval()


def is_stylegan3_record(g: PersistentRecord) -> bool:
    """Whether a ``G_ema`` record is NVIDIA's StyleGAN3 generator (Fourier-feature input and
    named layers) rather than StyleGAN2's (resolution blocks)."""
    synth = (g.state.get("_modules") or {}).get("synthesis")
    return isinstance(synth, PersistentRecord) and "input" in (synth.state.get("_modules") or {})


def stylegan2_from_records(g: PersistentRecord) -> StyleGAN2 | StyleGAN3:
    """Build :class:`StyleGAN2` (or :class:`StyleGAN3`, for a StyleGAN3 record) from a
    ``G_ema`` record and load its tensors (strictly)."""
    if not isinstance(g, PersistentRecord) or g.class_name != "Generator":
        raise ValueError(f"expected a Generator record, got {g!r}")
    st = g.state
    if st.get("c_dim", 0):
        raise ValueError("conditional StyleGAN (c_dim > 0) is not supported")
    if is_stylegan3_record(g):
        return stylegan3_from_records(g)
    synth = st["_modules"]["synthesis"]
    arch = _find(synth, "architecture")
    if arch not in (None, "skip"):
        raise ValueError(f"only the 'skip' synthesis architecture is supported, got {arch!r}")
    tensors = _flatten(g)
    res = int(st["img_resolution"])
    ch = {int(k.split(".")[1][1:]): v.shape[0] for k, v in tensors.items()
          if k.startswith("synthesis.b") and k.endswith("conv1.weight")}
    if not ch:
        raise ValueError("its synthesis network has neither StyleGAN2's resolution blocks "
                         "(synthesis.b4, b8, ...) nor StyleGAN3's input and layers: another "
                         "architecture, which WrappedGenerator can take with its own code")
    mapping = st["_modules"]["mapping"]
    fc0 = mapping.state["_modules"]["fc0"].state
    net = StyleGAN2(
        z_dim=int(st["z_dim"]), w_dim=int(st["w_dim"]), img_resolution=res,
        img_channels=int(st.get("img_channels", 3)),
        mapping_layers=int(mapping.state.get("num_layers", 8)),
        channel_base=max(r * c for r, c in ch.items()), channel_max=max(ch.values()),
        conv_clamp=_find(synth, "conv_clamp"),
        mapping_lr_multiplier=float(fc0.get("bias_gain", 0.01)))
    expected = {r: c for r, c in ch.items()}
    got = {r: getattr(net.synthesis, f"b{r}").conv1.weight.shape[0] for r in expected}
    if got != expected:
        raise ValueError(f"unsupported channel layout {expected}")
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"network pickle does not match StyleGAN2: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return net.eval()


def load_stylegan2(path: str | Path | None = None, device: str | torch.device = "auto"
                   ) -> StyleGAN2 | StyleGAN3:
    """Load StyleGAN2 from an NVIDIA ``.pkl`` (safely) or our ``.safetensors``; a StyleGAN3
    file (NVIDIA's config T or R) gives a :class:`StyleGAN3`, which the same generator
    (:class:`StyleGAN2Generator`) searches.

    Default: ``data/pretrained/stylegan2-ffhq-256x256.pkl``.
    """
    path = Path(path) if path else pretrained_dir() / "stylegan2-ffhq-256x256.pkl"
    if not path.is_file() and path.suffix == ".safetensors":
        raise FileNotFoundError(f"{path} not found: a StyleGAN2 .safetensors is what "
                                "save_stylegan2 writes from NVIDIA's network pickle; load the "
                                ".pkl itself (" + MISSING_FFHQ.format(path="<your path>")
                                + ") or save it to this path first")
    if not path.is_file():
        raise FileNotFoundError(MISSING_FFHQ.format(path=path))
    if path.suffix == ".safetensors":
        net = load_stylegan2_safetensors(path)
    else:
        records = read_network_pickle(path)["G_ema"]
        with reading(path, NETWORK_PICKLE + " of a supported architecture (StyleGAN2 "
                     "'skip', StyleGAN3 T or R, unconditional)", REFETCH):
            net = stylegan2_from_records(records)
    return net.to(resolve_device(device))
