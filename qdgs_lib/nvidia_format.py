"""Write a network pickle in the record format of NVIDIA's StyleGAN2-ADA-PyTorch / StyleGAN3,
from one of our own networks: test fixtures and the paper-mini plumbing assets (no NVIDIA code
is written or needed; ``module_src`` holds a placeholder)."""

from __future__ import annotations

import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
from torch import nn

CLASS_NAMES = {"StyleGAN2": "Generator", "StyleGAN3": "Generator"}  # others keep their names
SIZES = ("size", "in_size", "out_size")  # StyleGAN3 stores these as numpy arrays


def _fake_modules():
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called: the loader substitutes its own
        raise RuntimeError("fixture only")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    return {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}


class _Record:
    def __init__(self, fn, meta):
        self.fn, self.meta = fn, meta

    def __reduce__(self):
        return (self.fn, (self.meta,))


def _record(module: nn.Module, fn, easydict):
    attrs = {k: v for k, v in vars(module).items()
             if not k.startswith("_") and isinstance(v, (int, float, str, list, type(None)))
             and k != "config"}
    attrs.update({k: np.asarray(attrs[k]) for k in SIZES if k in attrs})
    attrs.pop("training", None)
    if type(module).__name__ == "StyleGAN3":
        attrs.update(c_dim=0, img_channels=module.config["img_channels"])
        attrs["_init_kwargs"] = easydict(z_dim=module.z_dim, c_dim=0, w_dim=module.w_dim,
                                         img_resolution=module.img_resolution,
                                         img_channels=module.config["img_channels"])
    if type(module).__name__ == "StyleGAN2":
        attrs.update(c_dim=0, img_channels=3)
        attrs["_init_kwargs"] = easydict(z_dim=module.z_dim, c_dim=0, w_dim=module.w_dim,
                                         img_resolution=module.img_resolution, img_channels=3,
                                         mapping_kwargs=easydict(num_layers=8),
                                         synthesis_kwargs=easydict(conv_clamp=256))
    if type(module).__name__ == "SynthesisNetwork" and hasattr(module, "block_resolutions"):
        attrs["architecture"] = "skip"
    state = {"training": False,
             "_parameters": OrderedDict(module._parameters),
             "_buffers": OrderedDict(module._buffers),
             "_modules": OrderedDict((n, _record(c, fn, easydict))
                                     for n, c in module._modules.items()),
             "_init_args": (), **attrs}
    name = CLASS_NAMES.get(type(module).__name__, type(module).__name__)
    return _Record(fn, {"type": "class", "version": 6, "module_src": "# not NVIDIA's source",
                        "class_name": name, "state": state})


def write_network_pickle(net: nn.Module, path) -> None:
    """Pickle ``net`` (a :class:`StyleGAN2` or :class:`StyleGAN3` of ours) to ``path`` as
    NVIDIA's network pickle dict: ``G`` and ``G_ema`` the same persistence records, ``D``
    and ``augment_pipe`` None; the stand-in ``torch_utils`` / ``dnnlib`` modules it pickles
    against are removed from ``sys.modules`` again afterwards."""
    fakes = _fake_modules()
    saved = {k: sys.modules.get(k) for k in fakes}
    sys.modules.update(fakes)
    try:
        fn = fakes["torch_utils.persistence"]._reconstruct_persistent_obj
        easydict = fakes["dnnlib.util"].EasyDict
        rec = _record(net, fn, easydict)
        data = {"G": rec, "D": None, "G_ema": rec, "augment_pipe": None,
                "training_set_kwargs": easydict(resolution=net.img_resolution)}
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=4)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
