"""The reference shape labels of the shapes world: three small CNNs trained on renders.

CLIP labels of shapes-VAE decodes are checked against this oracle (notebook 01's label audit,
``tests/test_shapes_clip.py``) and it captions the decodes that ``scripts/train_clip.py`` mixes
into the shapes CLIP's training batches. The VAE's prior also decodes to shapes between a
triangle and a square; a single classifier labels those arbitrarily (two seeds of the first
single-render oracle disagreed on 8-21% of prior decodes), so the oracle has three members
trained with different seeds and calls a decode *ambiguous* where they are not unanimous.

Members see what the audit sees: balanced renders drawn at 128 px and resized like the VAE's
decodes (antialiased), with the classifier's rotation/crop augmentation plus a random blur
(decodes are softer than renders). ``scripts/train_shapes_oracle.py`` trains and ships them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import TensorDataset

from .data.shapes import ShapesDataset, augment_shapes
from .models.shape_classifier import ShapeClassifier
from .paths import shipped_weights_fix, weights_dir
from .train import train_classifier
from .utils import resize_square, resolve_device, seed_everything

WEIGHTS_FILE = "shapes_oracle.safetensors"
SEEDS = (0, 1, 2)
SIZE = 32  # the default profile's classifier resolution: the audit sets are stored at it


def blur_augment(x: torch.Tensor) -> torch.Tensor:
    """The classifier's augmentation, then a Gaussian blur of sigma 0.4, 0.8 or 1.2 px (a third
    each; torch's global RNG): VAE decodes are softer than renders. Members trained with a
    quarter of the images left sharp agreed less on prior decodes (unanimous 0.84 vs 0.91)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    x = augment_shapes(x)
    level = torch.randint(0, 3, (len(x),), device=x.device)
    out = torch.empty_like(x)
    for k, sigma in enumerate((0.4, 0.8, 1.2)):
        m = level == k
        if m.any():
            out[m] = gaussian_blur(x[m], kernel_size=5, sigma=sigma)
    return out


def train_member(seed: int, n: int = 8000, epochs: int = 10, size: int = SIZE,
                 progress: bool = False, device: str | torch.device = "cpu",
                 augment=blur_augment) -> ShapeClassifier:
    """One oracle member: ``n`` balanced renders (seed ``20_000 + seed``, disjoint from every
    evaluation set) at 128 px resized to ``size``, ``epochs`` of Adam with ``augment``
    (:func:`blur_augment`; ``bench/shapes_oracle_variants.py`` also tries it without blur)."""
    seed_everything(seed)
    renders = ShapesDataset(n, None, 128, seed=20_000 + seed)
    member = ShapeClassifier()
    train_classifier(member, TensorDataset(resize_square(renders.images, size), renders.labels),
                     epochs, batch_size=64, seed=seed, augment=augment,
                     progress=progress, desc=f"oracle member {seed}",
                     device=resolve_device(device))
    return member.eval()


class ShapeOracle(nn.Module):
    """Members' mean probability gives the label (0 triangle, 1 square); a decode is
    *unanimous* where every member's own label is the same."""

    def __init__(self, members: list[ShapeClassifier], size: int = SIZE):
        super().__init__()
        if not members:
            raise ValueError("a ShapeOracle needs at least one member")
        self.members = nn.ModuleList(members)
        self.size = size

    @torch.no_grad()
    def member_probs(self, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """(members, B) probability of "square" for images (B, 3, H, W) in [0, 1], any size."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or inf: check the generator's output")
        device = next(self.parameters()).device
        self.eval()
        out = [torch.stack([m(resize_square(x.to(device).float(), self.size)).softmax(1)[:, 1]
                            for m in self.members]).cpu()
               for x in images.split(batch)]
        return torch.cat(out, 1) if out else torch.zeros(len(self.members), 0)

    def labels(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label, unanimous, confidence) per image: the label from the mean probability,
        whether all members agree on it, and the mean probability of that label."""
        return vote(self.member_probs(images))


def vote(probs: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, unanimous, confidence) from members' (members, B) probabilities of "square"."""
    mean = probs.mean(0)
    label = (mean > 0.5).long()
    votes = probs > 0.5
    unanimous = (votes == votes[:1]).all(0)
    confidence = torch.where(label == 1, mean, 1 - mean)
    return label.numpy(), unanimous.numpy(), confidence.numpy()


def train_shapes_oracle(seeds=SEEDS, n: int = 8000, epochs: int = 10, size: int = SIZE,
                        progress: bool = True, device: str | torch.device = "cpu") -> ShapeOracle:
    """An oracle of one :func:`train_member` per seed of ``seeds``, each at ``size`` px."""
    return ShapeOracle([train_member(s, n, epochs, size, progress, device) for s in seeds], size)


def save_shapes_oracle(oracle: ShapeOracle, path: str | Path) -> None:
    """Write ``oracle``'s members to ``path`` as safetensors, with its ``size`` and member
    count in the metadata (what :func:`load_shapes_oracle` reads)."""
    save_file({k: v.contiguous() for k, v in oracle.state_dict().items()}, str(path),
              metadata={"size": str(oracle.size), "members": str(len(oracle.members))})


def load_shapes_oracle(path: str | Path | None = None,
                       device: str | torch.device = "cpu") -> ShapeOracle:
    """The shipped oracle (``data/weights/shapes_oracle.safetensors``), in eval mode."""
    from safetensors import safe_open

    from .utils import BadFileError, check_recorded_sha256, check_tensor_shapes, reading

    path = Path(path) if path else weights_dir() / WEIGHTS_FILE
    fix = shipped_weights_fix(WEIGHTS_FILE, "train_shapes_oracle.py")
    if not path.is_file():
        raise FileNotFoundError(f"shapes oracle weights not found at {path}. {fix}")
    check_recorded_sha256(path, fix)
    with reading(path, "shapes oracle weights (safetensors)", fix):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            # the metadata's claim against the file's own tensors
            prefixes = {k.split(".")[1] for k in f.keys() if k.startswith("members.")}
        members, size = int(meta["members"]), int(meta["size"])
        if members != len(prefixes) or not 16 <= size <= 1024:
            raise BadFileError(f"{path}: its metadata says {members} members at {size} px, "
                               f"its tensors hold {len(prefixes)} members. {fix}")

        def build() -> ShapeOracle:
            return ShapeOracle([ShapeClassifier() for _ in range(members)], size)

        check_tensor_shapes(path, build)
        oracle = build()
        oracle.load_state_dict(load_file(str(path)))
    return oracle.eval().requires_grad_(False).to(resolve_device(device))
