"""Check qdgs_lib's StyleGAN3 against NVIDIA's own code, which you clone yourself:

    git clone https://github.com/NVlabs/stylegan3 /tmp/stylegan3
    python scripts/check_against_stylegan3.py --nvidia /tmp/stylegan3 [--full] [--write-fixture]

NVIDIA's ``training/networks_stylegan3.py`` is imported from your clone at run time (on the
CPU its ops run their reference implementations: no CUDA plugin is built); none of it is
copied here. For each configuration, T and R (tiny; with ``--full`` also at 256 px with the
paper's widths), on NVIDIA's Generator with every parameter and buffer randomised:
1. NVIDIA's persistence pickles it (source text and all, as a training run's snapshot) and
   ``load_stylegan2`` reads it: restricted unpickler, nothing from the file runs.
2. Images from z (truncation 1 and 0.7), from random w+ (a batch of 3 and one at a time),
   and the mapped ws, ours against NVIDIA's (``force_fp32``).
3. ``synthesis_geometry`` and the filter design against NVIDIA's constructor on the same
   hyperparameters: every layer's sizes, factors, padding and filters.
Exit status 1 if anything is not bitwise equal (images, ws, geometry, filters).

``--write-fixture`` also writes the tiny networks (our safetensors format) and NVIDIA's
outputs under ``tests/data/``: ``tests/test_stylegan3.py`` compares against them in CI.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qdgs_lib.generators.stylegan2_legacy import load_stylegan2, save_stylegan2  # noqa: E402
from qdgs_lib.generators.stylegan3 import StyleGAN3  # noqa: E402

TINY = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
            mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=8, num_layers=6)
CONFIGS = {
    "t": TINY,
    "r": {**TINY, "conv_kernel": 1, "use_radial_filters": True},
    # NVIDIA's train.py: T with --cbase 32768 --cmax 512; R doubles both, 1x1 convs, radial
    "t256": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                 channel_base=32768, channel_max=512),
    "r256": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                 channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True),
}
SCHEDULE_KEYS = ("channel_base", "channel_max", "num_layers", "conv_kernel", "use_radial_filters")


def import_nvidia(clone: Path):
    try:
        import pkg_resources  # noqa: F401  (NVIDIA's conv2d_gradfix imports it)
    except ImportError:  # setuptools >= 81 dropped it: the one function used
        from packaging.version import parse

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
    sys.path.insert(0, str(clone))
    from training.networks_stylegan3 import Generator

    return Generator


def randomised(Generator, seed: int, **kw):
    torch.manual_seed(seed)
    G = Generator(**kw).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in G.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim > 1 else 0.2)
                    + (1 if name.endswith("affine.bias") else 0))
        for name, b in G.named_buffers():
            if name.endswith("magnitude_ema"):
                b.copy_(torch.rand([], generator=g) + 0.5)
            elif name.endswith("w_avg"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.3)
            elif name.endswith("input.transform"):  # a user transform: rotate and shift
                a = 0.3
                b.copy_(torch.tensor([[np.cos(a), -np.sin(a), 0.1], [np.sin(a), np.cos(a), -0.05],
                                      [0, 0, 1]], dtype=torch.float32))
    return G


def outputs(G, z, ws, nvidia: bool) -> dict[str, torch.Tensor]:
    kw = {"force_fp32": True} if nvidia else {}
    c = (None,) if nvidia else ()
    with torch.no_grad():
        return {"img": G(z, *c, truncation_psi=1, **kw),
                "img07": G(z, *c, truncation_psi=0.7, **kw),
                "img_ws": G.synthesis(ws, **kw),
                "img_ws1": torch.cat([G.synthesis(ws[i:i + 1], **kw) for i in range(len(ws))]),
                "w": G.mapping(z, *c)}


def compare_geometry(G, kw: dict) -> list[str]:
    """Our schedule + filter design vs NVIDIA's constructor on the same hyperparameters."""
    ours = StyleGAN3(z_dim=kw["z_dim"], w_dim=kw["w_dim"], img_resolution=kw["img_resolution"],
                     img_channels=kw["img_channels"],
                     **{k: kw[k] for k in SCHEDULE_KEYS if k in kw})
    bad = []
    if ours.synthesis.layer_names != G.synthesis.layer_names:
        return [f"layer names {ours.synthesis.layer_names} vs {G.synthesis.layer_names}"]
    for name in G.synthesis.layer_names:
        a, b = getattr(ours.synthesis, name), getattr(G.synthesis, name)
        for attr in ("in_size", "out_size", "up_factor", "down_factor", "padding",
                     "conv_kernel", "in_channels", "out_channels", "is_torgb"):
            if list(np.atleast_1d(getattr(a, attr))) != list(np.atleast_1d(getattr(b, attr))):
                bad.append(f"{name}.{attr}: {getattr(a, attr)} vs {getattr(b, attr)}")
        for f in ("up_filter", "down_filter"):
            fa, fb = getattr(a, f), getattr(b, f)
            if (fa is None) != (fb is None) or (fa is not None and not torch.equal(fa, fb)):
                bad.append(f"{name}.{f} differs")
    inp_a, inp_b = ours.synthesis.input, G.synthesis.input
    if (inp_a.size != list(inp_b.size) or inp_a.channels != inp_b.channels
            or inp_a.sampling_rate != inp_b.sampling_rate or inp_a.bandwidth != inp_b.bandwidth):
        bad.append("input spec differs")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nvidia", type=Path, required=True, help="a clone of NVlabs/stylegan3")
    ap.add_argument("--full", action="store_true", help="also the 256 px T and R (minutes)")
    ap.add_argument("--write-fixture", action="store_true")
    ap.add_argument("--tmp", type=Path, default=Path("/tmp/qdgs-stylegan3-check"))
    args = ap.parse_args(argv)
    need = args.nvidia / "training" / "networks_stylegan3.py"
    if not need.is_file():
        ap.error(f"{need} not found: --nvidia takes a clone of NVIDIA's StyleGAN3 code "
                 "(git clone https://github.com/NVlabs/stylegan3)")
    Generator = import_nvidia(args.nvidia.resolve())
    args.tmp.mkdir(parents=True, exist_ok=True)
    failed, fixture = False, {}
    for name in ["t", "r"] + (["t256", "r256"] if args.full else []):
        kw = CONFIGS[name]
        G = randomised(Generator, 0, **kw)
        path = args.tmp / f"stylegan3-{name}.pkl"  # holds NVIDIA's source: never commit it
        with open(path, "wb") as f:
            pickle.dump({"G": G, "D": None, "G_ema": G, "augment_pipe": None,
                         "training_set_kwargs": None}, f)
        net = load_stylegan2(path, "cpu")
        g = torch.Generator().manual_seed(5)
        z = torch.randn(3, G.z_dim, generator=g)
        ws = torch.randn(3, G.num_ws, G.w_dim, generator=g)
        ref, got = outputs(G, z, ws, nvidia=True), outputs(net, z, ws, nvidia=False)
        for key in ref:
            diff = (got[key] - ref[key]).abs().max().item()
            scale = ref[key].abs().max().item()
            ok = torch.equal(got[key], ref[key])
            failed |= not ok
            print(f"{name:5s} {key:8s} {'bitwise' if diff == 0 else f'max diff {diff:.2g}'} "
                  f"(of {scale:.3g}){'' if ok else '  FAIL'}")
        bad = compare_geometry(G, kw)
        failed |= bool(bad)
        print(f"{name:5s} geometry and filters: {'equal' if not bad else bad[:5]}")
        if args.write_fixture and name in ("t", "r"):
            save_stylegan2(net, ROOT / "tests" / "data" / f"stylegan3_{name}.safetensors")
            # two samples of each: enough to catch any error, small enough for git
            fixture.update({f"{name}_{k}": ref[k][:2].numpy() for k in ("img", "img07", "w")})
            fixture[f"{name}_img_ws1"] = ref["img_ws1"][:2].numpy()
            fixture.update({f"{name}_z": z[:2].numpy(), f"{name}_ws": ws[:2].numpy()})
    if fixture:
        np.savez_compressed(ROOT / "tests" / "data" / "stylegan3_reference.npz", **fixture)
        print("wrote tests/data/stylegan3_{t,r}.safetensors and stylegan3_reference.npz")
    print("FAILED" if failed else "all equal")
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
