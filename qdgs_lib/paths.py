"""Where the project keeps its files: ``data/``, ``runs/`` and ``figures/`` under
:func:`project_root`; ``QDGS_DATA_DIR``, ``QDGS_RUNS_DIR`` and ``QDGS_FIGURES_DIR`` move one."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # the clone, when the package runs from one


def in_source_tree() -> bool:
    """Whether the package runs from a clone of the repository (editable install, PYTHONPATH)
    rather than from a pip-installed copy in site-packages."""
    return all((REPO_ROOT / name).exists() for name in ("pyproject.toml", "notebooks", "data"))


def project_root() -> Path:
    """The folder holding ``data/``, ``runs/`` and ``figures/``: ``QDGS_ROOT`` if set, else
    the clone the package runs from, else the working directory (a pip-installed package
    never writes into site-packages)."""
    if os.environ.get("QDGS_ROOT"):
        return Path(os.environ["QDGS_ROOT"])
    return REPO_ROOT if in_source_tree() else Path.cwd()


def data_dir() -> Path:
    return Path(os.environ.get("QDGS_DATA_DIR", project_root() / "data"))


def weights_dir() -> Path:
    """Small weights the project trained itself (shipped in git)."""
    return data_dir() / "weights"


def shipped_weights_fix(filename: str, rebuild: str) -> str:
    """What to do when the project's own weights file ``filename`` is missing or altered;
    ``rebuild`` is the script (with arguments) that trains it."""
    if in_source_tree():
        return (f"Restore the shipped file (`git checkout data/weights/{filename}`) or rebuild "
                f"it with `python scripts/{rebuild}`.")
    return (f"The project's trained weights ship with the qdgs repository "
            f"(data/weights/{filename}), not with the pip package: clone the repository and "
            f"set QDGS_DATA_DIR=<clone>/data, or copy the file to {weights_dir() / filename}.")


def pretrained_dir() -> Path:
    """Third-party weights the user supplies (never shipped): StyleGAN2 pickles, CLIP."""
    return data_dir() / "pretrained"


def benchmarks_dir() -> Path:
    """Real face benchmarks the user supplies (LFW .bin files, RFW)."""
    return data_dir() / "benchmarks"


def figures_dir() -> Path:
    return Path(os.environ.get("QDGS_FIGURES_DIR", project_root() / "figures"))


def runs_dir() -> Path:
    return Path(os.environ.get("QDGS_RUNS_DIR", project_root() / "runs"))


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
