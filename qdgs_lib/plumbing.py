"""Random-weight assets in the paper's real file formats, for the ``paper-mini`` profile: a
plumbing check of the paper path (architectures, loaders, file layouts, devices) that runs
anywhere, CI included. Nothing here is a result: the networks are untrained.

Writes, under a data folder laid out like ``data/`` (default ``runs/paper-mini/data``):

* ``pretrained/stylegan2-ffhq-256x256.pkl``: StyleGAN2 paper256 in NVIDIA's pickle format;
* ``pretrained/open_clip_model.safetensors``: open_clip ViT-B-32-quickgelu (float16);
* ``pretrained/vae-shapes.pt``, ``pretrained/augmentations.pt``: the released code's shapes VAE
  (a torch state dict) and latent augmentations (a (9, 7168) float64 tensor);
* ``pretrained/mtcnn/{pnet,rnet,onet}.npy``: the released face alignment's MTCNN weights (the
  ``np.save`` of a dict of arrays);
* ``benchmarks/{lfw,cfp_fp,cplfw,calfw,agedb_30}.bin``: InsightFace validation pickles;
* ``benchmarks/rfw/``: the RFW layout (4 races, pair lists, 112x112 JPEGs);
* ``benchmarks/train/``: an InsightFace RecordIO training set (train.rec, train.idx, property);
* ``weights``: a link to the project's own shipped weights (the shapes oracle).

``python -m qdgs_lib.plumbing`` writes them; ``make paper-mini`` also runs the four notebooks.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .paths import REPO_ROOT, runs_dir

PNET_SCORE_GAIN = 50.0
VERSION = 3  # bump when the assets change, so old folders are rewritten
BIN_PAIRS = 10  # the 10-fold protocol needs at least 10 pairs
RFW_PAIRS = 10
TRAIN_IDENTITIES, TRAIN_VIEWS = 4, 2


def default_root() -> Path:
    """Where the assets go by default: ``runs/paper-mini/data`` under :func:`runs_dir`."""
    return runs_dir() / "paper-mini" / "data"


def _images(n: int, rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """Smooth random colour fields (small as JPEG), (n, size, size, 3) uint8."""
    low = rng.random((n, 3, 7, 7)).astype(np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(low), size=(size, size),
                                        mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_stylegan2_pickle(path: Path, seed: int = 0) -> None:
    """A random-weight StyleGAN2 paper256 (noise strengths 0.05, ``w_avg`` the mean of 1000
    mapped z's) as NVIDIA's network pickle at ``path``."""
    from .generators.stylegan2 import StyleGAN2
    from .nvidia_format import write_network_pickle

    torch.manual_seed(seed)
    net = StyleGAN2()  # paper256: z = w = 512, 14 ws, channels 512 ... 64
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.05)
        net.mapping.w_avg.copy_(net.mapping(torch.randn(1000, net.z_dim))[:, 0].mean(0))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_network_pickle(net.eval(), path)


def write_released_shapes_vae(path: Path, seed: int = 0) -> None:
    """The released code's ``vae-shapes.pt`` format: ``torch.save`` of the state dict."""
    from .generators.shapes_vae import ReleasedShapesVAE

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ReleasedShapesVAE().state_dict(), path)


def write_latent_augmentations(path: Path, seed: int = 0, latent_dim: int = 14 * 512) -> None:
    """The released ``augmentations.pt`` format: a float64 (9, latent_dim) tensor, the 3 x 3
    grid a * d1 + b * d2 (a, b in -1, 0, 1) of two directions (here random, norm ~13)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(2, latent_dim, generator=g, dtype=torch.float64) * 0.15
    grid = torch.stack([a * d[0] + b * d[1] for a in (-1, 0, 1) for b in (-1, 0, 1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(grid, path)


def write_clip_weights(path: Path, seed: int = 0) -> None:
    """Random-weight open_clip ViT-B-32-quickgelu as a float16 safetensors state dict at
    ``path`` (the layout of ``open_clip_model.safetensors``)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def write_mtcnn_weights(folder: Path, seed: int = 0) -> None:
    """The released MTCNN's three weight files (``np.save`` of a dict of float32 arrays):
    torch's random initialization, except that the score layers are pushed towards "face"
    and O-Net's landmarks towards the template's place in the box, so that the cascade passes
    faces on and every step of the alignment runs (untrained, like every plumbing asset)."""
    from .mtcnn import NET_CLASSES, REFERENCE_112, save_weights_npy

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    nets = {name: cls() for name, cls in NET_CLASSES.items()}
    with torch.no_grad():
        nets["pnet"].conv4_1.weight.mul_(PNET_SCORE_GAIN)  # (its softmax runs over the width)
        nets["rnet"].conv5_1.bias.copy_(torch.tensor([-10.0, 10.0]))
        onet = nets["onet"]
        onet.conv6_1.bias.copy_(torch.tensor([-10.0, 10.0]))
        onet.conv6_3.weight.mul_(0.01)
        onet.conv6_3.bias.copy_(torch.from_numpy(REFERENCE_112.T.ravel() / 112).float())
    for name, net in nets.items():
        save_weights_npy(net, folder / f"{name}.npy")


def write_benchmarks(root: Path, seed: int = 0) -> None:
    """Under ``root``: the five InsightFace ``.bin`` files (``BIN_PAIRS`` pairs each,
    alternately same and different) and the RFW layout (``RFW_PAIRS`` pairs per race, with
    ``_lmk.txt`` landmarks at the ArcFace template), of random 112x112 colour fields."""
    from .data.benchmarks import RFW_RACES, write_bin

    rng = np.random.default_rng(seed)
    for name in ("lfw", "cfp_fp", "cplfw", "calfw", "agedb_30"):
        x = torch.from_numpy(_images(2 * BIN_PAIRS, rng)).permute(0, 3, 1, 2).float() / 255
        write_bin(root / f"{name}.bin", x, [i % 2 == 0 for i in range(BIN_PAIRS)])
    from .align import ARCFACE_TEMPLATE

    # the release's landmark lines, at the template itself (the images are 112 px crops), so
    # that the reader's alignment path runs
    points = " ".join(f"{v:.4f}" for v in ARCFACE_TEMPLATE.ravel())
    for race in RFW_RACES:
        lines, marks, ids = [], [], [f"m.{race[:2].lower()}{k:03d}" for k in range(RFW_PAIRS)]
        for k, ident in enumerate(ids):
            folder = root / "rfw" / "test" / "data" / race / ident
            folder.mkdir(parents=True, exist_ok=True)
            for n, img in enumerate(_images(2, rng), 1):
                Image.fromarray(img).save(folder / f"{ident}_{n:04d}.jpg", quality=90)
                marks.append(f"/test/data/{race}/{ident}/{ident}_{n:04d}.jpg 5 {points}")
            other = ids[(k + 1) % len(ids)]
            lines.append(f"{ident}\t1\t2" if k % 2 == 0 else f"{ident}\t1\t{other}\t2")
        txt = root / "rfw" / "test" / "txts" / race / f"{race}_pairs.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("\n".join(lines) + "\n")
        txt.with_name(f"{race}_lmk.txt").write_text("\n".join(marks) + "\n")


def write_training_set(folder: Path, seed: int = 0) -> None:
    """An InsightFace RecordIO training set (``train.rec``, ``train.idx``, ``property``) in
    ``folder``: ``TRAIN_IDENTITIES`` identities x ``TRAIN_VIEWS`` random JPEGs."""
    from .data.recordio import write_insightface_set

    rng = np.random.default_rng(seed + 1)
    labels = np.repeat(np.arange(TRAIN_IDENTITIES), TRAIN_VIEWS)
    write_insightface_set(folder, [_jpeg(img) for img in _images(len(labels), rng)], labels)


def write_paper_mini_assets(root: str | Path | None = None, seed: int = 0,
                            progress: bool = True) -> Path:
    """Write every asset of the ``paper-mini`` profile under ``root`` (skipped when a
    complete set of this version is there). Returns ``root``; point ``QDGS_DATA_DIR`` at it."""
    root = Path(root) if root else default_root()
    stamp = root / "PLUMBING.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("version") == VERSION:
        return root
    steps = [("StyleGAN2-256 network pickle", lambda: write_stylegan2_pickle(
                 root / "pretrained" / "stylegan2-ffhq-256x256.pkl", seed)),
             ("released shapes VAE (vae-shapes.pt)", lambda: write_released_shapes_vae(
                 root / "pretrained" / "vae-shapes.pt", seed)),
             ("released latent augmentations (augmentations.pt)",
              lambda: write_latent_augmentations(root / "pretrained" / "augmentations.pt", seed)),
             ("released MTCNN weights (pnet.npy, rnet.npy, onet.npy)",
              lambda: write_mtcnn_weights(root / "pretrained" / "mtcnn", seed)),
             ("ViT-B/32 weights", lambda: write_clip_weights(
                 root / "pretrained" / "open_clip_model.safetensors", seed)),
             ("benchmarks (.bin, RFW)", lambda: write_benchmarks(root / "benchmarks", seed)),
             ("RecordIO training set", lambda: write_training_set(
                 root / "benchmarks" / "train", seed))]
    for what, write in steps:
        if progress:
            print(f"paper-mini: writing {what} (random weights / images)", flush=True)
        write()
    weights = root / "weights"
    if not weights.exists():
        weights.symlink_to(REPO_ROOT / "data" / "weights", target_is_directory=True)
    stamp.write_text(json.dumps({
        "version": VERSION, "seed": seed,
        "note": "RANDOM WEIGHTS AND IMAGES: a plumbing check of the paper path, not a result"},
        indent=2))
    return root


def main(argv: list[str] | None = None) -> None:
    """``python -m qdgs_lib.plumbing [--root DIR] [--seed N]``: write the ``paper-mini``
    assets (:func:`write_paper_mini_assets`) and say how to point the notebooks at them."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=None, help=f"default: {default_root()}")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    root = write_paper_mini_assets(args.root, args.seed)
    print(f"done. Run the notebooks with QDGS_DATA_DIR={root} and profile paper-mini")


if __name__ == "__main__":
    main()
