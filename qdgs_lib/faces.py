"""Face synthesis, pretraining and evaluation (notebooks 02-04) as library calls.

World ``toy``: the toy-face generator + the project's faces CLIP, a biased "real" training set
and a balanced benchmark rendered from the same world. World ``ffhq`` (``paper`` profile):
StyleGAN2-FFHQ-256 + CLIP ViT-B/32 from local files, real datasets supplied by the user.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .clip import create_clip
from .generators.base import Generator
from .sampling import assign_bins, cluster_identities, write_identity_dataset
from .scoring import PromptScorer
from .search import QDSearch, SearchConfig, measures, solutions

MEASURE_NAMES = ("skin (dark+)", "masculine+", "long hair+", "20s+")


def build_generator(p: dict[str, Any], device: str = "cpu") -> Generator:
    if p["world"] == "toy":
        from .generators.toy_faces import ToyFaces

        return ToyFaces().to(device)
    if p["world"] == "ffhq":
        from .generators.stylegan2 import StyleGAN2Generator, load_stylegan2

        return StyleGAN2Generator(load_stylegan2(p.get("stylegan_weights"), device))
    raise ValueError(f"unknown world {p['world']!r}")


def build_scorer(p: dict[str, Any], device: str = "cpu") -> PromptScorer:
    gen = build_generator(p, device)
    clip = create_clip(p["clip"], weights=p["clip_weights"], device=device,
                       num_cutouts=p.get("cutouts", 0))
    return PromptScorer(gen, clip, p["objective"], p["measures"], weights=p["objective_weights"],
                        memory_size=100, seed=0)


def run_search(scorer: PromptScorer, p: dict[str, Any], algorithm: str, outdir, seed: int = 0,
               progress: bool = True) -> QDSearch:
    cfg = SearchConfig(dims=p["grid"], ranges=p["ranges"], algorithm=algorithm,
                       iterations=p["iterations"], batch_size=p["batch_size"],
                       num_emitters=p["num_emitters"], sigma0=p["sigma0"], lr=p["lr"],
                       archive_learning_rate=p["archive_learning_rate"], seed=seed,
                       checkpoint_every=max(50, p["iterations"] // 10))
    search = QDSearch(scorer, cfg, outdir)
    search.run(progress=progress)
    return search


def true_attribute_shares(latents: np.ndarray) -> dict[str, float]:
    """Toy world only: the share of dark-skinned and of old faces (true attributes)."""
    from .generators.toy_faces import attributes

    a = attributes(torch.as_tensor(latents, dtype=torch.float32))
    return {"dark skin": float((a["skin"] > 0.5).float().mean()),
            "old (50s)": float((a["age"] > 0.5).float().mean()),
            "long hair": float((a["hair"] > 0.5).float().mean()),
            "masculine": float((a["masc"] > 0.5).float().mean())}


def latent_offsets(p: dict[str, Any], generator: Generator) -> np.ndarray:
    if p["world"] == "toy":
        from .generators.toy_faces import toy_latent_offsets

        return toy_latent_offsets(p["offsets"], seed=0).numpy()
    g = torch.Generator().manual_seed(0)
    off = p["offset_scale"] * torch.randn(p["offsets"], generator.latent_dim, generator=g)
    off[0] = 0
    return off.numpy()


def paper_bins(p: dict[str, Any]) -> list:
    """The paper's 3 x 3 skin x gender bins (hair and age unsplit)."""
    b = p["bin_edge"]
    three = [(-np.inf, -b), (-b, b), (b, np.inf)]
    return [three, three, [(-np.inf, np.inf)], [(-np.inf, np.inf)]]


def build_datasets(scorer: PromptScorer, qd_df: pd.DataFrame, p: dict[str, Any], outdir,
                   seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """QDGS dataset from the archive and a random-sampling dataset of equal size, written by
    the same code: bins -> K-means identities -> latent augmentations -> image folders."""
    outdir = Path(outdir)
    gen = scorer.generator
    z_qd, m_qd = solutions(qd_df), measures(qd_df)
    n = len(z_qd)
    if n == 0:
        raise ValueError("the QDGS archive is empty: run the search first")
    z_rand = gen.sample_prior(n, seed=seed + 7).cpu().numpy()
    m_rand = np.concatenate([scorer.evaluate(z_rand[i:i + 256], update_memory=False).measures
                             for i in range(0, n, 256)])
    offsets = latent_offsets(p, gen)
    out = {}
    for name, z, m in (("qdgs", z_qd, m_qd), ("random", z_rand, m_rand)):
        bins = assign_bins(m, paper_bins(p))
        ids = cluster_identities(z, bins, p["per_identity"], seed=seed)
        extra = pd.DataFrame({"bin": bins, **{f"measure_{k}": m[:, k]
                                              for k in range(m.shape[1])}})
        for k in range(z.shape[1]):
            extra[f"latent_{k}"] = z[:, k]
        decode = gen.decode if p["world"] == "toy" else _aligned(gen, p["image_size"])
        out[name] = write_identity_dataset(outdir / f"dataset_{name}", decode, z, ids, offsets,
                                           extra, size=p["image_size"], progress=progress)
    return out


def _aligned(gen: Generator, size: int):
    from .align import ffhq_crop

    return lambda z: ffhq_crop(gen.decode(z), size)
