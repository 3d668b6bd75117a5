"""Face recognition (notebooks 03-04) as library calls: the real training data, the pretraining
protocol (synthetic -> real), benchmarks, evaluation and the paper-layout table.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .adaface_format import load_adaface_backbone
from .data.benchmarks import RFW_RACES, read_bin, read_rfw
from .data.identities import TensorFaces, open_training_set
from .data.toy_world import GROUPS, real_training_set, write_benchmark
from .evaluate import embed, group_verification, verification_accuracy
from .models.heads import build_head
from .models.iresnet import build_iresnet
from .paths import benchmarks_dir, data_dir, in_data_dir, real_dataset_path
from .profiles import with_earlier
from .sampling import read_identity_dataset
from .train import RecognitionTrainer, adaface_input
from .utils import (
    BadFileError,
    atomic_write_csv,
    previous_path,
    reading,
    resize_square,
    resolve_device,
    save_weights,
    seed_everything,
    tensor_digest,
    unit_range,
)


def train_recognizer(data: Dataset, p: dict[str, Any], outdir, epochs: int,
                     init: dict | None = None, seed: int = 0, device: str | torch.device = "auto",
                     progress: bool = True, data_id: str | None = None) -> torch.nn.Module:
    """Train backbone + margin head (``p["backbone"]``, ``p["head"]``) on an identity set (a
    :mod:`~qdgs_lib.data.identities` dataset), optionally starting from a pretrained backbone
    state; resumes from ``outdir``. Returns the backbone on the CPU, in eval mode."""
    seed_everything(seed)
    p = with_earlier(p)
    backbone = build_iresnet(p["backbone"])
    if init is not None:
        backbone.load_state_dict(init)
    size = backbone.input_size
    if isinstance(data, TensorFaces):
        if data.images.shape[-2:] != (size, size):  # (uint8 sets stay uint8 where they fit)
            data = TensorFaces(resize_square(unit_range(data.images), size), data.labels)
        workers = 0  # already in memory
    else:
        if getattr(data, "image_size", size) != size:
            raise ValueError(f"the training set yields {data.image_size}px images, "
                             f"{p['backbone']} takes {size}px: open it with image_size={size}")
        workers = p["workers"]
    head = build_head(p["head"], backbone.embedding_dim, data.num_classes)
    trainer = RecognitionTrainer(backbone, head, data, outdir, lr=p["lr"],
                                 milestones=p["milestones"], batch_size=p["batch"], seed=seed,
                                 device=device, progress=progress, num_workers=workers,
                                 compile=p["compile"], augment_style=p["augment_style"],
                                 data_id=data_id)
    trainer.run(epochs)
    net = trainer.backbone.eval().cpu()
    return net.to(memory_format=torch.contiguous_format)


def load_benchmark(p: dict[str, Any], root=None, size: int = 64):
    """The toy world's balanced benchmark (written on first use, RFW layout, 4 skin x age
    groups) as a :class:`~qdgs_lib.data.benchmarks.PairSet`."""
    pairs = p["benchmark_pairs"]
    root = Path(root) if root else data_dir() / "cache" / f"toy_benchmark_{pairs}"
    write_benchmark(root, pairs_per_group=pairs, size=size)
    bench = read_rfw(root, races=GROUPS, image_size=size)
    bench.name = "toy benchmark"
    return bench


def evaluate_recognizer(backbone: torch.nn.Module, bench,
                        device: str | torch.device = "auto",
                        thresholds: np.ndarray | None = None) -> dict:
    """Per-group 10-fold verification accuracy on ``bench`` (+ mean/std/SER), the accuracy over
    all pairs with one threshold (``all``), and the distance threshold chosen for all pairs and
    for each group (``threshold <group>``); ``thresholds``: the candidate distances
    (InsightFace's ``arange(0, 4, 0.01)`` by default).

    ``all`` uses the benchmark's own folds when it has them: its pairs are stored group after
    group, so contiguous folds would each hold one group and fit its threshold on the others."""
    images, size = bench.images, getattr(backbone, "input_size", bench.images.shape[-1])
    if images.shape[-2:] != (size, size):
        images = resize_square(unit_range(images), size)
    emb = embed(backbone, images, device=resolve_device(device), transform=adaface_input)
    pooled = verification_accuracy(emb, bench.issame, folds=bench.folds, thresholds=thresholds)
    out = {"all": pooled["accuracy"]}
    if bench.groups is not None:
        per_group = group_verification(emb, bench.issame, bench.groups, bench.group_names,
                                       folds=bench.folds, thresholds=thresholds)
        thresholds = {k: v for k, v in per_group.items() if k.startswith("threshold ")}
        out |= {k: v for k, v in per_group.items() if k not in thresholds}
        out |= {"threshold all": pooled["threshold"], **thresholds}
    return out


def evaluate_models(p: dict[str, Any], models: pd.DataFrame, benchmarks: dict,
                    device: str | torch.device = "auto", progress: bool = True) -> pd.DataFrame:
    """Every model of ``models`` (notebook 03's ``models.csv``: pretraining, seed, model) on
    every benchmark (name -> PairSet): one row per (model, benchmark) with the columns of
    :func:`evaluate_recognizer`."""
    missing = {"pretraining", "seed", "model"} - set(models.columns)
    if missing:
        raise ValueError(f"models.csv lacks the columns {sorted(missing)}: write it with "
                         "notebooks/03_pretraining.ipynb")
    rows = []
    for _, m in tqdm(list(models.iterrows()), desc="evaluate", disable=not progress):
        net = load_backbone(p, m["model"])
        for name, bench in benchmarks.items():
            res = evaluate_recognizer(net, bench, device=device)
            rows.append({"pretraining": m["pretraining"], "seed": m["seed"], "benchmark": name,
                         **res})
    return pd.DataFrame(rows)


def checkpoint_paths(checkpoints: dict[str, str | Path]) -> dict[str, Path]:
    """Notebook 04's ``checkpoints`` parameter (label -> path; relative paths are under the
    data folder), checked: every file exists."""
    if not isinstance(checkpoints, dict):
        raise TypeError("checkpoints must be a dict of label -> checkpoint path, got "
                        f"{type(checkpoints).__name__}")
    out = {str(label): in_data_dir(path) for label, path in checkpoints.items()}
    missing = {k: str(v) for k, v in out.items() if not v.is_file()}
    if missing:
        raise FileNotFoundError(f"checkpoints not found: {missing}. Relative paths are read "
                                f"under {data_dir()}; give AdaFace checkpoints (.ckpt) there "
                                "or as absolute paths")
    return out


def evaluate_checkpoints(checkpoints: dict[str, str | Path], benchmarks: dict,
                         device: str | torch.device = "auto",
                         progress: bool = True) -> pd.DataFrame:
    """Recognizers trained with AdaFace's code (``checkpoints``: label -> AdaFace checkpoint,
    e.g. AdaFace's published IR-101 or the released code's
    ``experiments/real_pretrain_<set>_0/last.ckpt``; read as data by
    :func:`~qdgs_lib.adaface_format.load_adaface_backbone`) on every benchmark, under the
    protocol of :func:`evaluate_models`: one row per (checkpoint, benchmark), with the
    columns of :func:`evaluate_recognizer` and the checkpoint's ``architecture``."""
    rows = []
    for label, path in tqdm(list(checkpoint_paths(checkpoints).items()), desc="checkpoints",
                            disable=not progress):
        net = load_adaface_backbone(path)
        for name, bench in benchmarks.items():
            res = evaluate_recognizer(net, bench, device=device)
            rows.append({"checkpoint": label, "architecture": f"ir{net.depth}",
                         "benchmark": name, **res})
    return pd.DataFrame(rows)


# --- the pretraining protocol (notebook 03) ---------------------------------------------------
def real_training_data(p: dict[str, Any], seed: int = 0) -> Dataset:
    """The "real" data of the second training stage: the toy world's biased training set
    (``real_dataset`` None), or the user's set on disk: InsightFace ``train.rec`` +
    ``train.idx``, or ``<identity>/<image>`` folders (streamed, read at the backbone's input
    size). Relative paths are relative to the data folder (``data/``, or ``QDGS_DATA_DIR``)."""
    if p["real_dataset"]:
        return open_training_set(real_dataset_path(p), build_iresnet(p["backbone"]).input_size)
    x, y, _ = real_training_set(p["real_identities"], p["real_views"], seed=1000 + seed)
    return TensorFaces(x, y)


def pretrain_protocol(p: dict[str, Any], synthetic: dict[str, Path], run_dir, seeds=(0,),
                      device: str | torch.device = "auto", progress: bool = True) -> pd.DataFrame:
    """For each seed and each pretraining set (``none`` plus every entry of ``synthetic``:
    name -> dataset folder): pretrain on the synthetic identities, then train on the real data.
    Saves each final backbone to ``run_dir/models/<name>_seed<k>.safetensors``; resumable
    (finished stages are skipped, interrupted ones resume from their checkpoint). Each saved
    backbone records what it was trained with (settings, epochs, seed, a digest of its data,
    its pretrained start); a finished stage made with anything else is refused, not reused."""
    run_dir = Path(run_dir)
    models = run_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    # uint8 in memory (a quarter of float32's); the trainer scales each batch to [0, 1]
    data = {name: TensorFaces(*read_identity_dataset(path, torch.uint8)[:2])
            for name, path in synthetic.items()}
    # each set's sha256 as loaded: a rewritten set gives its models another record
    digests = {name: tensor_digest(d.images, d.labels) for name, d in data.items()}
    legacy = _LegacyDigests(data, digests)
    rows, real = [], {}
    jobs = [(int(seed), name) for seed in seeds for name in ("none", *synthetic)]
    for seed, name in tqdm(jobs, desc="pretrain -> train", disable=not progress):
        out = models / f"{name}_seed{seed}.safetensors"
        pre = models / f"{name}_seed{seed}.pretrained.safetensors"
        pre_record = None if name == "none" else _stage_record(
            p, "pretrain", seed, {"synthetic": name, "sha256": digests[name]})
        record = _stage_record(p, "real", seed, _real_data_record(p, seed), init=pre_record)
        if _finished(out, record, legacy):
            rows.append({"pretraining": name, "seed": seed, "model": str(out)})
            continue
        init = None
        if pre_record is not None:
            if not _finished(pre, pre_record, legacy):
                stage = run_dir / "train" / f"{name}_seed{seed}_pre"
                net = train_recognizer(data[name], p, stage, p["pretrain_epochs"],
                                       seed=seed, device=device, progress=progress,
                                       data_id=legacy.ids(digests[name], stage))
                save_weights(net, pre, metadata={_RECORD_KEY: json.dumps(pre_record)})
                _drop_checkpoint(stage)
                # a real stage interrupted before started from the previous pretraining
                _drop_checkpoint(run_dir / "train" / f"{name}_seed{seed}_real")
            init = load_file(str(pre))
        if seed not in real:  # rendered (or opened) once per seed, shared by the 3 runs
            real[seed] = real_training_data(p, seed)
        stage = run_dir / "train" / f"{name}_seed{seed}_real"
        # (an interrupted stage resumes only on the same data and pretrained start)
        start = json.dumps({"data": record["data"], "init": pre_record}, sort_keys=True)
        net = train_recognizer(real[seed], p, stage, p["real_epochs"], init=init,
                               seed=seed, device=device, progress=progress,
                               data_id=[_sha256(s) for s in legacy.ids(start, stage)])
        save_weights(net, out, metadata={_RECORD_KEY: json.dumps(record)})
        _drop_checkpoint(stage)
        rows.append({"pretraining": name, "seed": seed, "model": str(out)})
    return pd.DataFrame(rows)


def save_models_table(models: pd.DataFrame, path: str | Path) -> Path:
    """Write :func:`pretrain_protocol`'s table as ``models.csv``, atomically, with the model
    files relative to the CSV's folder: the file (and the sha256 notebook 04 records of it)
    is the same wherever the repository is checked out."""
    path = Path(path)
    table = models.copy()
    table["model"] = [os.path.relpath(Path(m).resolve(), path.parent.resolve())
                      for m in table["model"]]
    return atomic_write_csv(table, path, index=False)


def read_models_table(path: str | Path) -> pd.DataFrame:
    """``models.csv`` (:func:`save_models_table`) with the model files as absolute paths."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run notebooks/03_pretraining.ipynb first")
    models = pd.read_csv(path)
    if "model" in models:
        models["model"] = [str((path.parent / m).resolve()) for m in models["model"]]
    return models


_RECORD_KEY = "qdgs_training"  # the safetensors header entry of a saved stage's record
_TRAINING_KEYS = ("backbone", "head", "lr", "milestones", "batch")


def _stage_record(p: dict[str, Any], stage: str, seed: int, data: dict,
                  init: dict | None = None) -> dict:
    """What a stage's result depends on (up to float rounding: not the device or workers)."""
    epochs = p["pretrain_epochs"] if stage == "pretrain" else p["real_epochs"]
    record = {"stage": stage, "epochs": epochs, "seed": seed, "data": data,
              **{k: p[k] for k in _TRAINING_KEYS}}
    if stage == "real":
        record["init"] = init
    return json.loads(json.dumps(record))  # as it reads back (tuples -> lists)


def _real_data_record(p: dict[str, Any], seed: int) -> dict:
    if p["real_dataset"]:
        return {"real_dataset": str(p["real_dataset"])}
    return {"real_identities": p["real_identities"], "real_views": p["real_views"],
            "seed": 1000 + seed}  # the toy world renders it from these alone


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _LegacyDigests:
    """The synthetic sets' digests as qdgs wrote them before tensor_digest (2026-11-27: the
    labels, then the images as float32 in [0, 1]; no dtype or shape), computed only when a
    file from then is met, so that its models and checkpoints still count as the same data."""

    def __init__(self, data: dict[str, TensorFaces], digests: dict[str, str]):
        self.data, self.digests, self._old = data, digests, None

    def renames(self) -> dict[str, str]:
        """old digest -> current digest, for every set."""
        if self._old is None:
            self._old = {}
            for name, d in self.data.items():
                h = hashlib.sha256(d.labels.numpy().tobytes())
                for chunk in d.images.split(1024):
                    h.update(unit_range(chunk).contiguous().numpy().tobytes())
                self._old[h.hexdigest()] = self.digests[name]
        return self._old

    def ids(self, text: str, stage: Path) -> list[str]:
        """``text`` (a digest, or JSON holding digests), then its old spelling where ``stage``
        holds a checkpoint to resume (computing the old digests costs a pass over the sets)."""
        if not any(f.exists() for f in _checkpoint_files(stage)):
            return [text]
        old = text
        for was, now in self.renames().items():
            old = old.replace(now, was)
        return [text] if old == text else [text, old]


def _finished(path: Path, record: dict, legacy: _LegacyDigests | None = None) -> bool:
    """Whether ``path`` holds this stage's result; refuse one trained with something else."""
    if not path.exists():
        return False
    with safe_open(str(path), "pt") as f:
        stored = (f.metadata() or {}).get(_RECORD_KEY)
    if stored is None:
        warnings.warn(f"{path} has no training record (saved by an older qdgs): reused "
                      "unchecked; delete it to train it again with the current settings",
                      stacklevel=3)
        return True
    stored = json.loads(stored)
    if stored != record and legacy is not None:  # the same data, digested the old way?
        text = json.dumps(stored)
        for was, now in legacy.renames().items():
            text = text.replace(was, now)
        stored = json.loads(text)
    if stored != record:
        differ = {k: (stored.get(k), v) for k, v in record.items() if stored.get(k) != v}
        raise ValueError(f"{path} was trained with other settings or data (file vs now: "
                         f"{differ}). Delete it (and its .pretrained file where the "
                         "pretraining differs) to train it again, or give this run a new "
                         "run folder")
    return True


def _drop_checkpoint(stage: Path) -> None:
    """A finished stage's weights are saved: its optimizer checkpoint (2-3x the weights;
    ~0.8 GB for IR-101) is no longer needed to resume."""
    for f in _checkpoint_files(stage):
        f.unlink(missing_ok=True)


def _checkpoint_files(stage: Path) -> tuple[Path, Path]:
    """The checkpoints RecognitionTrainer keeps in a stage folder: the latest, the one before."""
    path = stage / "checkpoint.pt"
    return path, previous_path(path)


def load_backbone(p: dict[str, Any], path) -> torch.nn.Module:
    """A backbone saved by :func:`pretrain_protocol` (safetensors: no code in the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebooks/03_pretraining.ipynb first")
    net = build_iresnet(p["backbone"])
    with reading(path, f"a {p['backbone']} backbone (safetensors)",
                 "Delete it and re-run notebooks/03_pretraining.ipynb (finished stages are "
                 "kept; this one trains again)."):
        state = load_file(str(path))
        net.load_state_dict(state)
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise BadFileError(f"{path}: non-finite weights in {bad[:3]} (diverged training?). "
                           "Delete it and re-run notebooks/03_pretraining.ipynb.")
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


def group_table(results: pd.DataFrame, benchmark: str, groups: list[str],
                order=("none", "random", "qdgs")) -> pd.DataFrame:
    """Mean over seeds per pretraining of one benchmark's per-group accuracies, fairness
    summary and pooled accuracy; the std over seeds in ``attrs["err"]`` (for error bars: 0
    for a single seed; none where the mean is infinite, e.g. an SER of inf from a seed in
    which some group made no error)."""
    cols = [*groups, "fair_mean", "fair_std", "fair_ser", "all"]
    r = results[results.benchmark == benchmark].groupby("pretraining")[cols]
    rows = [k for k in order if k in r.groups]
    table = r.mean().loc[rows]
    err = r.std().loc[rows].fillna(0)
    table.attrs["err"] = err.where(np.isfinite(table))
    return table
