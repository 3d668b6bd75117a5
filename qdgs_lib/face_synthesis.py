"""Face synthesis (notebook 02) as library calls: generator + scorer, search, datasets.

World ``toy``: the toy-face generator + the project's faces CLIP (ground truth known). World
``ffhq`` (``paper`` profile): StyleGAN2-FFHQ-256 + CLIP ViT-B/32 from local files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .align import aligner
from .generators import toy_faces
from .generators.base import Generator
from .generators.stylegan2 import StyleGAN2Generator
from .generators.stylegan2_legacy import load_stylegan2
from .measures import dataset_bins, index, ranges_from_samples
from .paths import RELEASED_OFFSETS_WHERE, in_data_dir
from .profiles import with_earlier
from .sampling import assign_bins, cluster_identities, solution_columns, write_identity_dataset
from .scoring import PromptScorer, scorer_for_profile, set_cublas_workspace
from .search import measures, solutions
from .utils import resolve_device


def build_generator(p: dict[str, Any], device: str | torch.device = "auto") -> Generator:
    """The faces profile ``p``'s generator on ``device``: ``toy_faces.ToyFaces`` for world "toy",
    else StyleGAN2 (or 3) from ``stylegan_weights`` (default: the FFHQ-256 pickle), searched
    in its ``latent_space``."""
    device, p = resolve_device(device), with_earlier(p)
    if p["world"] == "toy":
        if p["latent_space"] != "w":
            raise ValueError(f"latent_space={p['latent_space']!r} is a StyleGAN2 setting "
                             "(world 'ffhq'); the toy world has one latent space: use 'w'")
        return toy_faces.ToyFaces().to(device)
    if p["world"] == "ffhq":
        return StyleGAN2Generator(load_stylegan2(in_data_dir(p["stylegan_weights"]), device),
                                  latent_space=p["latent_space"])
    raise ValueError(f"unknown world {p['world']!r}: 'toy' or 'ffhq'")


def build_scorer(p: dict[str, Any], device: str | torch.device = "auto") -> PromptScorer:
    """The generator and its CLIP scorer; also reads the files the datasets need after the
    search (latent offsets, MTCNN weights), so that a wrong one fails now, not an hour in."""
    device = resolve_device(device)
    set_cublas_workspace(p, device)  # before the generator's first CUDA matmul
    scorer = scorer_for_profile(build_generator(p, device), p, device)
    check_dataset_inputs(p, scorer.generator)
    return scorer


def check_dataset_inputs(p: dict[str, Any], generator: Generator) -> None:
    """Load what :func:`build_datasets` reads from disk besides the archive (the latent
    offsets file for ``generator``'s latents, the MTCNN weights) and raise its error if any
    is missing, damaged or of the wrong shape."""
    p = with_earlier(p)
    latent_offsets(p, generator)
    if p["world"] != "toy":
        aligner(p["align"], p["image_size"], in_data_dir(p["mtcnn_weights"]))


def true_attribute_shares(latents: np.ndarray) -> dict[str, float]:
    """Toy world only: the share of dark-skinned, old, long-haired and masculine faces (true
    attributes above 0.5)."""
    a = toy_faces.attributes(torch.as_tensor(latents, dtype=torch.float32))
    return {"dark skin": float((a["skin"] > 0.5).float().mean()),
            "old (50s)": float((a["age"] > 0.5).float().mean()),
            "long hair": float((a["hair"] > 0.5).float().mean()),
            "masculine": float((a["masc"] > 0.5).float().mean())}


def measure_shares(m: np.ndarray, p: dict[str, Any]) -> dict[str, float]:
    """Shares the paper reports, by the CLIP measures: dark skin (skin measure above the bin
    edge) and faces in their 50s (age measure below 0)."""
    return {"dark (CLIP skin > bin edge)": float((m[:, index(p, "skin")] > p["bin_edge"]).mean()),
            "50s (CLIP age < 0)": float((m[:, index(p, "age")] < 0).mean())}


def shares(p: dict[str, Any], latents: np.ndarray, m: np.ndarray) -> dict[str, float]:
    """Notebook 02's share table row for a set of solutions: :func:`measure_shares` of their
    measures ``m`` and, in the toy world, :func:`true_attribute_shares` of their ``latents``
    (as ``true <attribute>``)."""
    out = measure_shares(m, p)
    if p["world"] == "toy":
        out.update({f"true {k}": v for k, v in true_attribute_shares(latents).items()})
    return out


def load_latent_offsets(path: str | Path, latent_dim: int, count: int) -> np.ndarray:
    """Latent augmentations from a file: a (count, latent_dim) tensor saved by torch (like the
    released ``augmentations.pt``; read with ``weights_only=True``) or a ``.npy`` array. One
    row must be all zeros (the solution itself); it comes first, the others keep their order."""
    from .utils import reading

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latent offsets file not found at {path}: get "
                                f"{RELEASED_OFFSETS_WHERE}, or set offsets_file to None for "
                                "random offsets")
    with reading(path, "latent offsets (a torch tensor or .npy array)", f"Expected "
                 f"{RELEASED_OFFSETS_WHERE}."):
        if path.suffix == ".npy":
            off = np.load(path, allow_pickle=False)
        else:
            off = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(off, torch.Tensor):
                raise ValueError(f"holds a {type(off).__name__}, not a tensor")
            off = off.numpy()
    if off.dtype.kind not in "fiu":
        raise ValueError(f"{path} holds {off.dtype} offsets, not numbers: a latent offset is a "
                         "row of floats")
    if off.ndim != 2 or off.shape[1] != latent_dim:
        hint = (" (the released file is for StyleGAN2-FFHQ-256 in w+: with that network set "
                "latent_space='w+')" if off.ndim == 2 and off.shape[1] % latent_dim == 0 else "")
        raise ValueError(f"{path} holds offsets of shape {off.shape}; the generator's latents "
                         f"have {latent_dim} numbers, so (k, {latent_dim}) is needed{hint}; "
                         "or set offsets_file to None for seeded offsets of scale offset_scale "
                         "in any generator's space")
    if not np.isfinite(off).all():
        raise ValueError(f"{path} holds NaN or inf offsets: a damaged copy")
    zero = np.flatnonzero(~off.any(axis=1))
    if len(zero) == 0:
        raise ValueError(f"{path} has no all-zero row: a dataset keeps each solution's own "
                         "image, so add a row of zeros")
    if len(off) != count:
        raise ValueError(f"{path} holds {len(off)} offsets but the profile's offsets is "
                         f"{count}: set offsets={len(off)}")
    order = [int(zero[0]), *(i for i in range(len(off)) if i != zero[0])]
    return off[order].astype(np.float32)


def latent_offsets(p: dict[str, Any], generator: Generator) -> np.ndarray:
    """The latent augmentations added to every solution (offset 0 is the solution itself):
    ``offsets_file``'s where set, else ``offsets`` - 1 seeded normal draws of scale
    ``offset_scale`` (the toy world: its own pose/lighting offsets)."""
    if with_earlier(p)["offsets_file"]:
        return load_latent_offsets(in_data_dir(p["offsets_file"]), generator.latent_dim,
                                   p["offsets"])
    if p["world"] == "toy":
        return toy_faces.toy_latent_offsets(p["offsets"], seed=0).numpy()
    g = torch.Generator().manual_seed(0)
    off = p["offset_scale"] * torch.randn(p["offsets"], generator.latent_dim, generator=g)
    off[0] = 0
    return off.numpy()


def build_datasets(scorer: PromptScorer, qd_df: pd.DataFrame, p: dict[str, Any], outdir,
                   seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """QDGS dataset from the archive and a random-sampling dataset of equal size, written by
    the same code: bins -> K-means identities -> latent augmentations -> image folders."""
    outdir, p = Path(outdir), with_earlier(p)
    gen = scorer.generator
    z_qd, m_qd = solutions(qd_df), measures(qd_df)
    if len(z_qd) == 0:
        raise ValueError("the QDGS archive is empty: run the search first")
    cap = p["dataset_solutions"]
    if cap and len(z_qd) > cap:  # a uniform subsample of the archive keeps its balance
        keep = np.sort(np.random.default_rng(seed).choice(len(z_qd), cap, replace=False))
        z_qd, m_qd = z_qd[keep], m_qd[keep]
    n = len(z_qd)
    z_rand = gen.sample_prior(n, seed=seed + 7).cpu().numpy()
    m_rand = scorer.measures_of(z_rand)
    offsets = latent_offsets(p, gen)
    align = None
    if p["world"] == "toy":
        decode = gen.decode
    else:
        align = aligner(p["align"], p["image_size"], in_data_dir(p["mtcnn_weights"]))
        decode = lambda z: align(gen.decode(z))  # noqa: E731
    # what the images depend on beyond the latents: recorded, so that a folder written under
    # another generator, alignment or image size is refused rather than reused
    settings = {"world": p["world"], "align": None if p["world"] == "toy" else p["align"],
                "generator": getattr(gen, "name", type(gen).__name__),
                "weights_sha256": scorer.weights_sha256()}
    if settings["align"] == "mtcnn":
        from .mtcnn import ALIGNMENT_VERSION, weights_sha256

        settings["mtcnn_sha256"] = weights_sha256(in_data_dir(p["mtcnn_weights"]))
        settings["mtcnn_version"] = ALIGNMENT_VERSION
    out = {}
    for name, z, m in (("qdgs", z_qd, m_qd), ("random", z_rand, m_rand)):
        bins = assign_bins(m, dataset_bins(p), warn_empty=False)  # (bins hold what it holds)
        ids = cluster_identities(z, bins, p["per_identity"], seed=seed,
                                 n_init=p["kmeans_n_init"], max_iter=p["kmeans_max_iter"])
        out[name] = write_identity_dataset(outdir / f"dataset_{name}", decode, z, ids, offsets,
                                           solution_columns(m, z, bin=bins),
                                           size=p["image_size"], progress=progress,
                                           settings=settings,
                                           image_format=p["image_format"])
    if hasattr(align, "summary"):  # MTCNN's fallbacks, counted over both datasets
        print(f"{align.summary()} written in this session (in the others: the whole image "
              "resized, as the released code does)")
    return out


def dataset_summary(datasets: dict[str, Path], p: dict[str, Any]) -> pd.DataFrame:
    """Per dataset (the index): images, identities, solutions, images per solution (the
    augmentations), solutions per bin, and (toy world) the true attribute shares of its
    solutions."""
    rows = {}
    for name, path in datasets.items():
        man = pd.read_csv(Path(path) / "manifest.csv")
        per_solution = man.drop_duplicates("solution")
        row = {"images": len(man), "identities": man["identity"].nunique(),
               "solutions": len(per_solution)}
        counts = man.groupby("solution").size()  # one number when every solution has as many
        row["images per solution"] = (int(counts.iloc[0]) if counts.nunique() == 1 else
                                      f"{counts.min()}-{counts.max()}")
        row |= {f"bin {b}": int(n) for b, n in per_solution["bin"].value_counts().sort_index()
                .items()}
        if p["world"] == "toy":
            row |= {f"true {k}": round(v, 3)
                    for k, v in true_attribute_shares(solutions(per_solution)).items()}
        rows[name] = row
    # a bin one dataset lacks counts 0 there: filled here, so each column keeps its own type
    # (a filled object frame is downcast by pandas 2 and not by pandas 3)
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    return pd.DataFrame.from_dict({name: {k: row.get(k, 0) for k in columns}
                                   for name, row in rows.items()}, orient="index")


# --- measures vs truth (toy world) -----------------------------------------------------------
def measure_truth(scorer: PromptScorer, p: dict[str, Any], n: int = 512,
                  seed: int = 0) -> pd.DataFrame:
    """Toy world: CLIP measures (``measures_k``) and, per measure with a true attribute, that
    attribute oriented like the prompt (column: the measure's key), of ``n`` renders with
    balanced attributes."""
    z = toy_faces.balanced_latents(n, torch.Generator().manual_seed(seed))
    m = scorer.measures_of(z.numpy(), batch_size=128)
    a = toy_faces.attributes(z)
    df = pd.DataFrame({f"measures_{k}": m[:, k] for k in range(m.shape[1])})
    for meas in p["measures"]:
        if meas.attribute is not None:
            df[meas.key] = meas.oriented(a[meas.attribute]).numpy()
    return df


def measure_correlations(df: pd.DataFrame, p: dict[str, Any]) -> dict[str, float]:
    """Spearman rho of each measure with its true attribute (oriented like the prompt)."""
    return {m.key: float(df[f"measures_{k}"].corr(df[m.key], method="spearman"))
            for k, m in enumerate(p["measures"]) if m.key in df}


def calibrate_ranges(df: pd.DataFrame, q: float = 0.01) -> tuple[tuple[float, float], ...]:
    """Archive ranges per measure: the [q, 1 - q] quantiles of the measures of balanced
    renders, rounded outwards to 0.05 (how the default profile's ranges were set)."""
    cols = [c for c in df.columns if c.startswith("measures_")]
    return ranges_from_samples(df[cols].to_numpy(), q, step=0.05)
