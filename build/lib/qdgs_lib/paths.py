"""Where the project keeps its files. Override the data root with ``QDGS_DATA_DIR``."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("QDGS_DATA_DIR", REPO_ROOT / "data"))


def weights_dir() -> Path:
    """Small weights the project trained itself (shipped in git)."""
    return data_dir() / "weights"


def pretrained_dir() -> Path:
    """Third-party weights the user supplies (never shipped): StyleGAN2 pickles, CLIP."""
    return data_dir() / "pretrained"


def benchmarks_dir() -> Path:
    """Real face benchmarks the user supplies (LFW .bin files, RFW)."""
    return data_dir() / "benchmarks"


def figures_dir() -> Path:
    return Path(os.environ.get("QDGS_FIGURES_DIR", REPO_ROOT / "figures"))


def runs_dir() -> Path:
    return Path(os.environ.get("QDGS_RUNS_DIR", REPO_ROOT / "runs"))


def notebook_dirs(notebook: str, profile: str) -> tuple[Path, Path]:
    """(figures folder, run folder) of a notebook. Only the ``default`` and ``paper`` profiles
    write to ``figures/``; ``smoke`` (CI) writes its figures under ``runs/`` so that running
    the tests never overwrites the committed figures."""
    run = runs_dir() / notebook / profile
    fig = {"default": figures_dir(), "paper": figures_dir() / "paper"}.get(profile,
                                                                           run / "figures")
    fig.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    return fig, run


def real_dataset_path(p: dict) -> Path:
    """A recognition section's ``real_dataset``; relative paths are under the data folder."""
    root = Path(p["real_dataset"])
    return root if root.is_absolute() else data_dir() / root
