"""AdaFace's checkpoint format (github.com/mk-minchul/AdaFace), read and written.

The paper's released code pretrains and trains its recognizers with AdaFace's code, and AdaFace
publishes IR-ResNets trained on MS1MV2 / WebFace. AdaFace's ``net.Backbone`` (mode ``"ir"``,
112 px) is this project's :class:`~qdgs_lib.models.iresnet.IResNet` under other names:

    input_layer.*                 stem.*
    body.<i>.res_layer.*          body.<i>.residual.*
    body.<i>.shortcut_layer.*     body.<i>.shortcut.*
    output_layer.*                output.*

(checked bitwise on AdaFace's own ``net.py`` and ``head.py``: README, "Checked against the
reference code"; ``scripts/check_against_released.py``).

A checkpoint is a PyTorch Lightning file, ``{"state_dict": {"model.<name>": tensor,
"head.kernel": tensor}, "hyper_parameters": ..., optimizer and loop states}``, or a bare state
dict. It is read as data, never with pickle's own loader: tensors are rebuilt from the
archive's bytes; any other class it names (Lightning's ``AttributeDict``, ``argparse.Namespace``,
paths) becomes an inert record, neither imported nor constructed. A file that names ``os``,
``subprocess``, ``eval`` and the like is refused as malicious.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import torch

from .models.iresnet import LAYOUTS, IResNet, build_iresnet
from .unpickling import TorchArchiveUnpickler, is_torchscript_archive, load_torch_archive
from .utils import BadFileError, UnsafePickleError, atomic_path, cpu_state_dict, reading

# AdaFace's names -> ours (the rest of each key is the same)
RENAMES = (("input_layer.", "stem."), ("output_layer.", "output."),
           (".res_layer.", ".residual."), (".shortcut_layer.", ".shortcut."))
# blocks in ``body`` -> depth (AdaFace's get_blocks; 100 is its IR-101)
_DEPTHS = {sum(layout): depth for depth, layout in LAYOUTS.items() if depth != 100}

_FIX = ("Give an AdaFace checkpoint (a PyTorch Lightning .ckpt whose state_dict holds "
        "'model.input_layer...' keys, as AdaFace's main.py and the paper's released code "
        "write them), or a state dict of AdaFace's net.Backbone")


class _Inert(dict):
    """Stands in for any other class a checkpoint names: its arguments, state and items are
    kept as data; nothing of the class is imported or run."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs, self.items_ = args, kwargs, []

    def __setstate__(self, state):
        self.state = state

    def append(self, item):  # (NEWOBJ skips __init__: the list may not exist yet)
        self.__dict__.setdefault("items_", []).append(item)

    def extend(self, items):
        self.__dict__.setdefault("items_", []).extend(items)


# a checkpoint has no business naming these: a file that does is refused, not read
_REFUSED_MODULES = {"os", "posix", "nt", "subprocess", "sys", "importlib", "shutil", "socket",
                    "runpy", "ctypes", "code", "pty", "pickle", "marshal", "webbrowser",
                    "multiprocessing", "signal", "tempfile", "urllib", "http", "ftplib"}
_REFUSED_BUILTINS = {"eval", "exec", "compile", "open", "getattr", "setattr", "delattr",
                     "__import__", "globals", "locals", "vars", "breakpoint", "input", "exit",
                     "quit", "help", "memoryview"}


class _CheckpointUnpickler(TorchArchiveUnpickler):
    def __init__(self, file, archive, prefix: str):
        super().__init__(file, archive, prefix, allowed={
            "collections.Counter", "torch._utils._rebuild_parameter"})
        self.inert: dict[str, type] = {}  # one stand-in per name (not a new type per opcode)

    def find_class(self, module: str, name: str):
        root = module.split(".")[0]
        if root in _REFUSED_MODULES or (
                root in ("builtins", "__builtin__") and name.split(".")[0] in _REFUSED_BUILTINS):
            raise UnsafePickleError(f"it calls {module}.{name} when unpickled: a checkpoint "
                                    "holds tensors and plain data, never that. Not loaded (it "
                                    "may be malicious)")
        key = f"{module}.{name}"
        if "." not in name and (key in self.allowed or key in self.overrides):
            return super().find_class(module, name)
        if key not in self.inert:
            if len(self.inert) >= 10_000:
                raise UnsafePickleError("it names over 10,000 classes: not a checkpoint")
            self.inert[key] = type(name.replace(".", "_")[:100], (_Inert,),
                                   {"__module__": f"inert.{module[:100]}"})
        return self.inert[key]


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A torch checkpoint's contents (``torch.save``'s zip format), read as data (see the
    module docstring)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the checkpoint file in it. {_FIX}.")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. {_FIX}.")
    if not zipfile.is_zipfile(path):
        raise BadFileError(f"{path} is not a zip archive, torch.save's format: a file cut "
                           "short (download it again), a checkpoint from torch < 1.6 (re-save "
                           "it with a recent torch, where you trust the file: torch.save("
                           "torch.load(path, weights_only=False), new_path)), or not a "
                           "checkpoint")
    if is_torchscript_archive(path):
        raise BadFileError(f"{path} is a TorchScript archive, not a checkpoint: save the "
                           "network's state_dict() with torch.save instead")
    with reading(path, "a torch checkpoint (torch.save's zip format, torch >= 1.6)",
                 _FIX + "."):
        ckpt = load_torch_archive(path, _CheckpointUnpickler)
    if not isinstance(ckpt, dict):
        raise BadFileError(f"{path} holds a {type(ckpt).__name__}, not a dict. {_FIX}.")
    return ckpt


def backbone_state(ckpt: dict, path: str | os.PathLike = "checkpoint") -> tuple[str, dict]:
    """(architecture name, our state dict) from an AdaFace checkpoint's contents: the
    backbone's tensors renamed; the margin head and training state are left out."""
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not state:
        raise BadFileError(f"{path}: no state dict in it. {_FIX}.")
    keys = [k for k in state if not isinstance(k, str)]
    if keys:
        raise BadFileError(f"{path}: state dict keys that are not strings (e.g. a "
                           f"{type(keys[0]).__name__}). {_FIX}.")
    if any(k.startswith("model.") for k in state):  # Lightning: the backbone is `model`
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    bad = [_short(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise BadFileError(f"{path}: {bad[:3]} are not tensors. {_FIX}.")
    if any(".se_block." in k for k in state):
        raise BadFileError(f"{path} is an IR-SE network (squeeze-excitation blocks), which "
                           "this project does not build; use an IR network (ir_18 ... ir_101)")
    if "input_layer.0.weight" not in state:
        raise BadFileError(f"{path}: no 'input_layer.0.weight' among its "
                           f"{len(state)} tensors (e.g. {[_short(k) for k in list(state)[:3]]})"
                           f". {_FIX}.")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"body\.(\d{1,6})\.", k))}
    depth = _DEPTHS.get(len(blocks))
    if depth is None:
        raise BadFileError(f"{path}: {len(blocks)} residual blocks; AdaFace's IR networks "
                           f"have {sorted(_DEPTHS)} (ir_18, ir_34, ir_50, ir_101). IR-152/200 "
                           "(bottleneck blocks) are not built here")
    ours = {to_ours(k): v for k, v in state.items()}
    if len(ours) != len(state):  # e.g. both "input_layer.0.weight" and "stem.0.weight"
        raise BadFileError(f"{path}: tensors under both AdaFace's and this project's names; "
                           f"one would silently replace the other. {_FIX}.")
    return f"ir{depth}", ours


def _short(key: str) -> str:
    return key if len(key) <= 80 else key[:77] + "..."


def load_adaface_backbone(path: str | os.PathLike) -> IResNet:
    """The backbone of an AdaFace checkpoint (AdaFace's published models, or the released
    code's ``experiments/<prefix>_0/last.ckpt``) as an :class:`IResNet` in eval mode. Its
    input is what AdaFace trains on: BGR, (x - 0.5) / 0.5 (:func:`~qdgs_lib.train.
    adaface_input`, which :func:`~qdgs_lib.recognition.evaluate_recognizer` applies)."""
    arch, state = backbone_state(read_checkpoint(path), path)
    net = build_iresnet(arch)
    want = net.state_dict()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        raise BadFileError(f"{path}: as an {arch}, {len(missing)} tensors missing "
                           f"(e.g. {missing[:3]}) and {len(extra)} unexpected (e.g. "
                           f"{[_short(k) for k in extra[:3]]}). {_FIX}.")
    shapes = [k for k in want if want[k].shape != state[k].shape]
    if shapes:
        k = shapes[0]
        raise BadFileError(f"{path}: {len(shapes)} tensors of another shape than an {arch}'s, "
                           f"e.g. {k}: {tuple(state[k].shape)}, expected {tuple(want[k].shape)} "
                           "(only 112x112 input, 512-d embeddings are built here)")
    kinds = [k for k in want if want[k].is_floating_point() != state[k].is_floating_point()]
    if kinds:
        k = kinds[0]
        raise BadFileError(f"{path}: {k} holds {state[k].dtype} values where an {arch} has "
                           f"{want[k].dtype}. {_FIX}.")
    state = {k: v.to(want[k].dtype) for k, v in state.items()}  # (fp16 / bf16 files too)
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and
                 not torch.isfinite(v).all()]  # checked after the cast: 1e40 is inf in fp32
    if nonfinite:
        raise BadFileError(f"{path}: non-finite values in {nonfinite[:3]} (a diverged run?)")
    net.load_state_dict(state)
    return net.eval()


def save_adaface_checkpoint(backbone: IResNet, path: str | os.PathLike) -> Path:
    """Write ``backbone`` as AdaFace's code reads it (``torch.load(path)["state_dict"]``,
    ``model.``-prefixed: its ``inference.load_pretrained_model`` and ``main.py
    --start_from_model_statedict``), atomically. Only AdaFace's shapes: full width, 112 px,
    512-d embeddings (not ``ir_small``)."""
    state = cpu_state_dict(backbone)
    adaface = {f"model.{to_adaface(k)}": v for k, v in state.items()}
    try:
        same = build_iresnet(backbone_state(adaface)[0]).state_dict()
        fits = set(same) == set(state) and all(same[k].shape == v.shape
                                               for k, v in state.items())
    except BadFileError:
        fits = False
    if not fits:
        raise ValueError("AdaFace's networks are IR-18/34/50/101 at full width for 112x112 "
                         "input with 512-d embeddings; this backbone is not one of them")
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": adaface}, tmp)
    return path


def to_ours(key: str) -> str:
    """An AdaFace state-dict name as this project's (``input_layer.0.weight`` ->
    ``stem.0.weight``)."""
    for old, new in RENAMES:
        key = key.replace(old, new)
    return key


def to_adaface(key: str) -> str:
    """This project's state-dict name as AdaFace's (the reverse of :func:`to_ours`)."""
    for old, new in RENAMES:
        key = key.replace(new, old)
    return key
