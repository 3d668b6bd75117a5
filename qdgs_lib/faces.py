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
from torch.utils.data import Dataset

from .clip import create_clip
from .data.identities import TensorFaces
from .generators.base import Generator
from .sampling import assign_bins, cluster_identities, write_identity_dataset
from .scoring import PromptScorer
from .search import QDSearch, SearchConfig, measures, solutions
from .utils import resize_square, resolve_device, save_weights

MEASURE_NAMES = ("skin (dark+)", "masculine+", "long hair+", "20s+")


def build_generator(p: dict[str, Any], device: str | torch.device = "auto") -> Generator:
    device = resolve_device(device)
    if p["world"] == "toy":
        from .generators.toy_faces import ToyFaces

        return ToyFaces().to(device)
    if p["world"] == "ffhq":
        from .generators.stylegan2 import StyleGAN2Generator, load_stylegan2

        return StyleGAN2Generator(load_stylegan2(p["stylegan_weights"], device))
    raise ValueError(f"unknown world {p['world']!r}")


def build_scorer(p: dict[str, Any], device: str | torch.device = "auto") -> PromptScorer:
    device = resolve_device(device)
    gen = build_generator(p, device)
    clip = create_clip(p["clip"], weights=p["clip_weights"], device=device,
                       num_cutouts=p["cutouts"])
    return PromptScorer(gen, clip, p["objective"], p["measures"], weights=p["objective_weights"],
                        memory_size=100, seed=0)


def run_search(scorer: PromptScorer, p: dict[str, Any], algorithm: str, outdir, seed: int = 0,
               progress: bool = True) -> QDSearch:
    search = QDSearch(scorer, SearchConfig.from_profile(p, algorithm, seed), outdir)
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
    out = {}
    for name, z, m in (("qdgs", z_qd, m_qd), ("random", z_rand, m_rand)):
        bins = assign_bins(m, paper_bins(p))
        ids = cluster_identities(z, bins, p["per_identity"], seed=seed)
        extra = pd.DataFrame({"bin": bins, **{f"measure_{k}": m[:, k]
                                              for k in range(m.shape[1])},
                              **{f"latent_{k}": z[:, k] for k in range(z.shape[1])}})
        decode = gen.decode if p["world"] == "toy" else _aligned(gen, p["image_size"],
                                                                   p["align"])
        out[name] = write_identity_dataset(outdir / f"dataset_{name}", decode, z, ids, offsets,
                                           extra, size=p["image_size"], progress=progress)
    return out


def _aligned(gen: Generator, size: int, method: str = "crop"):
    from .align import aligner

    align = aligner(method, size)
    return lambda z: align(gen.decode(z))


# --- recognition (notebooks 03, 04) ------------------------------------------------------------
def train_recognizer(data: Dataset, p: dict[str, Any], outdir, epochs: int,
                     init: dict | None = None, seed: int = 0, device: str | torch.device = "auto",
                     progress: bool = True) -> torch.nn.Module:
    """Train backbone + margin head (``p["backbone"]``, ``p["head"]``) on an identity set (a
    :mod:`~qdgs_lib.data.identities` dataset), optionally starting from a pretrained backbone
    state; resumes from ``outdir``. Returns the backbone on the CPU, in eval mode."""
    from .models.heads import build_head
    from .models.iresnet import build_iresnet
    from .train import RecognitionTrainer
    from .utils import seed_everything

    seed_everything(seed)
    backbone = build_iresnet(p["backbone"])
    if init is not None:
        backbone.load_state_dict(init)
    size = backbone.input_size
    if isinstance(data, TensorFaces):
        data = TensorFaces(resize_square(data.images, size), data.labels)
        workers = 0  # already in memory
    else:
        if getattr(data, "image_size", size) != size:
            raise ValueError(f"the training set yields {data.image_size}px images, "
                             f"{p['backbone']} takes {size}px: open it with image_size={size}")
        workers = p["workers"]
    head = build_head(p["head"], backbone.embedding_dim, data.num_classes)
    trainer = RecognitionTrainer(backbone, head, data, outdir, lr=p["lr"],
                                 milestones=p["milestones"], batch_size=p["batch"], seed=seed,
                                 device=device, progress=progress, num_workers=workers)
    trainer.run(epochs)
    net = trainer.backbone.eval().cpu()
    return net.to(memory_format=torch.contiguous_format)


def load_benchmark(p: dict[str, Any], root=None, size: int = 64):
    """The toy world's balanced benchmark (written on first use, RFW layout, 4 skin x age
    groups) as a :class:`~qdgs_lib.data.benchmarks.PairSet`."""
    from .data.benchmarks import read_rfw
    from .data.toy_world import GROUPS, write_benchmark
    from .paths import data_dir

    pairs = p["benchmark_pairs"]
    root = Path(root) if root else data_dir() / "cache" / f"toy_benchmark_{pairs}"
    write_benchmark(root, pairs_per_group=pairs, size=size)
    bench = read_rfw(root, races=GROUPS, image_size=size)
    bench.name = "toy benchmark"
    return bench


def evaluate_recognizer(backbone: torch.nn.Module, bench,
                        device: str | torch.device = "auto") -> dict:
    """Per-group 10-fold verification accuracy on ``bench`` (+ mean/std/SER), and the accuracy
    over all pairs."""
    from .evaluate import embed, group_verification, verification_accuracy
    from .train import adaface_input

    images = resize_square(bench.images, getattr(backbone, "input_size", bench.images.shape[-1]))
    emb = embed(backbone, images, device=resolve_device(device), transform=adaface_input)
    out = {"all": verification_accuracy(emb, bench.issame)["accuracy"]}
    if bench.groups is not None:
        out.update(group_verification(emb, bench.issame, bench.groups, bench.group_names,
                                      folds=bench.folds))
    return out


# --- measures vs truth (toy world) -----------------------------------------------------------
def measure_truth(scorer: PromptScorer, n: int = 512, seed: int = 0) -> pd.DataFrame:
    """Toy world: CLIP measures and true attributes of ``n`` renders with balanced attributes
    (columns ``measure_k`` and ``skin``/``masc``/``hair``/``age``)."""
    from .generators.toy_faces import attributes, balanced_latents

    z = balanced_latents(n, torch.Generator().manual_seed(seed))
    m = scorer.measures_of(z.numpy(), batch_size=128)
    a = attributes(z)
    df = pd.DataFrame({f"measure_{k}": m[:, k] for k in range(m.shape[1])})
    # measure k's positive prompt: dark skin, masculine, long hair, in their 20s (= young)
    for key, sign in (("skin", 1), ("masc", 1), ("hair", 1), ("age", -1)):
        df[key] = (a[key] if sign > 0 else 1 - a[key]).numpy()
    return df


def measure_correlations(df: pd.DataFrame) -> dict[str, float]:
    """Spearman rho of each measure with its true attribute (oriented like the prompt)."""
    keys = ("skin", "masc", "hair", "age")
    return {key: float(df[f"measure_{k}"].corr(df[key], method="spearman"))
            for k, key in enumerate(keys)}


def calibrate_ranges(df: pd.DataFrame, q: float = 0.01) -> tuple[tuple[float, float], ...]:
    """Archive ranges per measure: the [q, 1 - q] quantiles of the measures of balanced
    renders, rounded outwards to 0.05 (how the default profile's ranges were set)."""
    cols = [c for c in df.columns if c.startswith("measure_")]
    return tuple((float(np.floor(df[c].quantile(q) * 20) / 20),
                  float(np.ceil(df[c].quantile(1 - q) * 20) / 20)) for c in cols)


# --- the pretraining protocol (notebook 03) ---------------------------------------------------
def real_training_data(p: dict[str, Any], seed: int = 0) -> Dataset:
    """The "real" data of the second training stage: the toy world's biased training set
    (``real_dataset`` None), or the user's set on disk: InsightFace ``train.rec`` +
    ``train.idx``, or ``<identity>/<image>`` folders (streamed, read at the backbone's input
    size). Relative paths are relative to the data folder (``data/``, or ``QDGS_DATA_DIR``)."""
    if p["real_dataset"]:
        from .data.identities import open_training_set
        from .models.iresnet import build_iresnet

        return open_training_set(real_dataset_path(p), build_iresnet(p["backbone"]).input_size)
    from .data.toy_world import real_training_set

    x, y, _ = real_training_set(p["real_identities"], p["real_views"], seed=1000 + seed)
    return TensorFaces(x, y)


def real_dataset_path(p: dict[str, Any]) -> Path:
    from .paths import data_dir

    root = Path(p["real_dataset"])
    return root if root.is_absolute() else data_dir() / root


def pretrain_protocol(p: dict[str, Any], synthetic: dict[str, Path], run_dir, seeds=(0,),
                      device: str | torch.device = "auto", progress: bool = True) -> pd.DataFrame:
    """For each seed and each pretraining set (``none`` plus every entry of ``synthetic``:
    name -> dataset folder): pretrain on the synthetic identities, then train on the real data.
    Saves each final backbone to ``run_dir/models/<name>_seed<k>.safetensors``; resumable
    (finished stages are skipped, interrupted ones resume from their checkpoint)."""
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from .sampling import read_identity_dataset

    run_dir = Path(run_dir)
    models = run_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    data = {name: TensorFaces(*read_identity_dataset(path)[:2])
            for name, path in synthetic.items()}
    rows, real = [], {}
    jobs = [(seed, name) for seed in seeds for name in ("none", *synthetic)]
    for seed, name in tqdm(jobs, desc="pretrain -> train", disable=not progress):
        out = models / f"{name}_seed{seed}.safetensors"
        pre = models / f"{name}_seed{seed}.pretrained.safetensors"
        if not out.exists():
            init = None
            if name != "none":
                if not pre.exists():
                    stage = run_dir / "train" / f"{name}_seed{seed}_pre"
                    net = train_recognizer(data[name], p, stage, p["pretrain_epochs"],
                                           seed=seed, device=device, progress=progress)
                    save_weights(net, pre)
                    _drop_checkpoint(stage)
                init = load_file(str(pre))
            if seed not in real:  # rendered (or opened) once per seed, shared by the 3 runs
                real[seed] = real_training_data(p, seed)
            stage = run_dir / "train" / f"{name}_seed{seed}_real"
            net = train_recognizer(real[seed], p, stage, p["real_epochs"], init=init,
                                   seed=seed, device=device, progress=progress)
            save_weights(net, out)
            _drop_checkpoint(stage)
        rows.append({"pretraining": name, "seed": seed, "model": str(out)})
    return pd.DataFrame(rows)


def _drop_checkpoint(stage: Path) -> None:
    """A finished stage's weights are saved: its optimizer checkpoint (2-3x the weights;
    ~0.8 GB for IR-101) is no longer needed to resume."""
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (stage / name).unlink(missing_ok=True)


def load_backbone(p: dict[str, Any], path) -> torch.nn.Module:
    """A backbone saved by :func:`pretrain_protocol` (safetensors: no code in the file)."""
    from safetensors.torch import load_file

    from .models.iresnet import build_iresnet

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebooks/03_pretraining.ipynb first")
    net = build_iresnet(p["backbone"])
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def training_logs(run_dir) -> pd.DataFrame:
    """All ``log.csv`` of a pretraining run, with columns ``pretraining``, ``seed``, ``stage``."""
    frames = []
    for log in sorted(Path(run_dir, "train").glob("*_seed*_*/log.csv")):
        name, rest = log.parent.name.rsplit("_seed", 1)
        seed, stage = rest.split("_")
        df = pd.read_csv(log)
        df["pretraining"], df["seed"], df["stage"] = name, int(seed), stage
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# --- benchmarks (notebook 04) -----------------------------------------------------------------
REAL_BINS = ("lfw", "cfp_fp", "cplfw", "calfw", "agedb_30")


def available_benchmarks(p: dict[str, Any], root=None, include_toy: bool = True) -> dict:
    """Name -> PairSet for the toy benchmark and every real set found under
    ``data/benchmarks/`` (``<name>.bin`` files, ``rfw/``); lists what is missing."""
    from .data.benchmarks import read_bin, read_rfw
    from .paths import benchmarks_dir

    root = Path(root) if root else benchmarks_dir()
    out, missing = {}, []
    if include_toy:
        out["toy"] = load_benchmark(p)
    size = p["benchmark_size"]
    for name in REAL_BINS:
        f = root / f"{name}.bin"
        if f.is_file():
            out[name] = read_bin(f, image_size=size)
        else:
            missing.append(str(f))
    if (root / "rfw" / "test" / "txts").is_dir():
        out["rfw"] = read_rfw(root / "rfw", image_size=size)
    else:
        missing.append(str(root / "rfw"))
    return {"sets": out, "missing": missing}


def paper_layout_table(results: pd.DataFrame, reference: pd.DataFrame | None = None,
                       order=("none", "random", "qdgs")) -> pd.DataFrame:
    """Mean accuracy over seeds, one row per pretraining, on the real benchmarks in the paper's
    layout: LFW, CFP-FP, CPLFW, CALFW, AgeDB-30, their average, then RFW per race.

    ``reference`` (``data.benchmarks.read_reference_numbers``) adds published rows under a
    ``source`` index level ("ours" / "reference"), on the same columns. Empty when ``results``
    has no real benchmark.
    """
    from .data.benchmarks import RFW_RACES

    mean = results.groupby(["benchmark", "pretraining"]).mean(numeric_only=True)
    cols = {b: mean.loc[b, "all"] for b in REAL_BINS if b in mean.index.levels[0]}
    if "rfw" in mean.index.levels[0]:
        cols |= {f"rfw_{r.lower()}": mean.loc["rfw", r] for r in RFW_RACES}
    table = pd.DataFrame(cols)
    if table.empty:
        return table
    table = table.loc[[k for k in order if k in table.index]]

    def with_average(t: pd.DataFrame) -> pd.DataFrame:
        standard = [b for b in REAL_BINS if b in t.columns]
        if standard:
            t.insert(len(standard), "average", t[standard].mean(axis=1, skipna=False))
        return t

    table = with_average(table)
    if reference is None:
        return table
    ref = with_average(reference.reindex(columns=list(cols)))
    return pd.concat({"ours": table, "reference": ref[table.columns]}, names=["source"])
