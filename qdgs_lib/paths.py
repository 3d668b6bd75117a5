"""Where the project keeps its files: ``data/``, ``runs/`` and ``figures/`` under
:func:`project_root`; ``QDGS_DATA_DIR``, ``QDGS_RUNS_DIR`` and ``QDGS_FIGURES_DIR`` move one."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # the clone, when the package runs from one
# NVIDIA's StyleGAN2-FFHQ-256 network pickle (NGC model nvidia/research/stylegan2, version 1)
# The paper's released code, and where its two data files lie in it (read as data only)
RELEASED_CODE = "github.com/Cylumn/qd-generative-sampling"
RELEASED_SHAPES_VAE_WHERE = (
    f"the shapes VAE of the paper's released code: shapes/pretrained/vae-shapes.pt in "
    f"{RELEASED_CODE} (a torch state dict, 787 KB); put it at data/pretrained/vae-shapes.pt")
RELEASED_OFFSETS_WHERE = (
    f"the released code's latent augmentations: facial_recognition/pretrained/augmentations.pt "
    f"in {RELEASED_CODE} (9 x 7168: a 3 x 3 grid of two StyleGAN2-256 w+ directions, the "
    f"centre 0); put it at data/pretrained/augmentations.pt")
MTCNN_NETS = ("pnet", "rnet", "onet")  # the released MTCNN's weight files: <net>.npy
RELEASED_MTCNN_WHERE = (
    f"the released code's face alignment weights: pnet.npy, rnet.npy and onet.npy in "
    f"facial_recognition/AdaFace/face_alignment/mtcnn_pytorch/src/weights/ of {RELEASED_CODE} "
    f"(AdaFace's copy of mtcnn-pytorch, MIT licence); put them in data/pretrained/mtcnn/")
# sha256 of the released code's data files (its repository at commit 5d18c0b, read here):
# `python -m qdgs_lib.assets paper --load` says whether a file is that one
RELEASED_SHA256 = {
    "vae-shapes.pt": "acc1d1526827cba22a8c389103f56a54a5dab552223b0100c468a4aa52837bbf",
    "augmentations.pt": "90a350fc2cec9c7f8ec754201a96e9941e2d116ebec3058b8559fb567cdc3055",
    "pnet.npy": "03e19e5c473932ab38f5a6308fe6210624006994a687e858d1dcda53c66f18cb",
    "rnet.npy": "5660aad67688edc9e8a3dd4e47ed120932835e06a8a711a423252a6f2c747083",
    "onet.npy": "313141c3646bebb73cb8350a2d5fee4c7f044fb96304b46ccc21aeea8b818f83",
}


def is_released_file(path: str | os.PathLike) -> bool | None:
    """Whether ``path`` is the released code's file of its name (sha256); None when the name
    is none of :data:`RELEASED_SHA256`'s or there is no such file."""
    from .utils import sha256_file

    path = Path(path)
    if path.name not in RELEASED_SHA256 or not path.is_file():
        return None
    return sha256_file(path) == RELEASED_SHA256[path.name]


STYLEGAN2_FFHQ_URL = ("https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/"
                      "versions/1/files/stylegan2-ffhq-256x256.pkl")


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
    """The data folder (weights, pretrained files, benchmarks, datasets): ``QDGS_DATA_DIR``
    if set, else ``data/`` under :func:`project_root`."""
    return Path(os.environ.get("QDGS_DATA_DIR", project_root() / "data"))


def weights_dir() -> Path:
    """Small weights the project trained itself (shipped in git)."""
    return data_dir() / "weights"


def shipped_weights_fix(filename: str, rebuild: str) -> str:
    """What to do when the project's own weights file ``filename`` is missing or altered;
    ``rebuild`` is the script (with arguments) that trains it."""
    clone_weights = REPO_ROOT / "data" / "weights"
    if in_source_tree() and weights_dir().resolve() != clone_weights.resolve():
        return (f"The data folder is {data_dir()} (QDGS_DATA_DIR or QDGS_ROOT), not the clone's, "
                f"and the project's own weights move with it: link the clone's there (`ln -s "
                f"{clone_weights} {weights_dir()}`, where it has no weights/ folder yet) or "
                f"copy data/weights/{filename} into {weights_dir()}; or rebuild it there with "
                f"`python scripts/{rebuild}`.")
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
    """Where the ``default`` and ``paper`` profiles' figures go: ``QDGS_FIGURES_DIR`` if set,
    else ``figures/`` under :func:`project_root`."""
    return Path(os.environ.get("QDGS_FIGURES_DIR", project_root() / "figures"))


def runs_dir() -> Path:
    """Where runs write their outputs and records: ``QDGS_RUNS_DIR`` if set, else ``runs/``
    under :func:`project_root`."""
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


def in_data_dir(path: str | os.PathLike | None) -> Path | None:
    """A path a profile names (``real_dataset``, ``stylegan_weights``, ``clip_weights``):
    relative ones are under the data folder, whatever the working directory (papermill and
    JupyterLab run the notebooks in ``notebooks/``)."""
    if path is None:
        return None
    path = Path(path).expanduser()
    return path if path.is_absolute() else data_dir() / path


def real_dataset_path(p: dict) -> Path:
    """A recognition section's ``real_dataset``; relative paths are under the data folder."""
    return in_data_dir(p["real_dataset"])


def nested_recordio(path: Path) -> Path | None:
    """A subfolder of ``path`` holding ``train.rec`` (an InsightFace zip unpacked into
    ``path`` keeps its top folder, e.g. ``faces_webface_112x112/``), if ``path`` has none."""
    if not path.is_dir() or (path / "train.rec").is_file():
        return None
    return next((d for d in sorted(path.iterdir()) if (d / "train.rec").is_file()), None)


def misplaced_recordio(path: Path, nested: Path) -> str:
    """The message for a training set whose RecordIO files lie one folder too deep, in
    ``nested`` (as :func:`nested_recordio` finds it): how to move them up or point
    ``real_dataset`` there."""
    return (f"{path} holds no train.rec, but {nested} does (the zip's top folder): move "
            f"train.rec, train.idx and property up into {path} (the zip's .bin benchmarks go "
            f"to {path.parent}), or set real_dataset to {nested}")
