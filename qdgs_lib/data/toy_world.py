""""Real" face data of the toy world: a biased training set and a balanced benchmark.

Real photos differ from the generator's clean renders: they carry sensor noise, so the low
contrast of features on dark skin costs a recognizer more. Identities come from seeded latents;
the benchmark's seeds are disjoint from every training seed.

The benchmark is written in the RFW on-disk layout (``test/data/<Group>/<id>/<id>_000N.jpg``,
``test/txts/<Group>/<Group>_pairs.txt``) with the four skin x age groups in place of races,
so :func:`qdgs_lib.data.benchmarks.read_rfw` and the same evaluator serve both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..generators.toy_faces import AGE, SKIN, attributes, render, same_identity
from ..utils import atomic_dir, to_uint8_hwc

GROUPS = ("dark-young", "dark-old", "light-young", "light-old")
NOISE_STD = 0.06
BENCHMARK_SEED = 90_000  # identities of the benchmark; training sets use seeds < 10_000


def photo(z: torch.Tensor, generator: torch.Generator, size: int = 64) -> torch.Tensor:
    """A "real photo" of latents: the render plus sensor noise."""
    with torch.no_grad():
        x = render(z, size)
    return (x + NOISE_STD * torch.randn(x.shape, generator=generator)).clamp(0, 1)


def group_latents(n: int, group: str, generator: torch.Generator) -> torch.Tensor:
    """Identities of one skin x age group (attributes well inside the group)."""
    skin, age = group.split("-")
    z = torch.randn(n, 16, generator=generator)
    u = torch.rand(n, 2, generator=generator)
    z[:, SKIN] = 1.75 + 1.2 * u[:, 0] if skin == "dark" else -1.8 + 2.4 * u[:, 0]
    z[:, AGE] = 1.0 + 1.2 * u[:, 1] if age == "old" else -1.8 + 1.7 * u[:, 1]
    return z


def group_of(z: torch.Tensor) -> np.ndarray:
    """The skin x age group (a name of ``GROUPS``) of each latent in ``z``, from its true
    attributes split at 0.5."""
    a = attributes(z)
    dark, old = (a["skin"] > 0.5).numpy(), (a["age"] > 0.5).numpy()
    names = np.array(GROUPS)
    return names[np.where(dark, np.where(old, 1, 0), np.where(old, 3, 2))]


def real_training_set(n_identities: int, views: int, seed: int = 0, size: int = 64):
    """Identities from the *biased* prior (7:1 skin, 2:1 age), ``views`` photos each.
    Returns images (N, 3, H, W), identity labels (N,), latents of the identities."""
    if seed >= BENCHMARK_SEED:
        raise ValueError("training seeds must stay below the benchmark's")
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n_identities, 16, generator=g)
    zv = same_identity(z, views, g)
    return photo(zv, g, size), torch.arange(n_identities).repeat_interleave(views), z


def _settings_on_disk(root: Path) -> dict:
    """``pairs_per_group`` and ``size`` of a benchmark folder without ``benchmark.json``
    (written before 2026-11-26), read from its files; its seed cannot be read back."""
    pairs = root / "test" / "txts" / GROUPS[0] / f"{GROUPS[0]}_pairs.txt"
    images = sorted((root / "test" / "data" / GROUPS[0]).glob("*/*.jpg"))[:1]
    if not pairs.is_file() or not images:
        raise ValueError(f"{root} holds an incomplete toy benchmark (no {pairs.name} or no "
                         f"images of group {GROUPS[0]}): delete {root} to write it again")
    with Image.open(images[0]) as im:
        size = im.width
    lines = [line for line in pairs.read_text().splitlines() if line.strip()]
    return {"pairs_per_group": len(lines), "size": size}


def write_benchmark(root: str | Path, pairs_per_group: int = 600, size: int = 64,
                    seed: int = BENCHMARK_SEED) -> Path:
    """Write the balanced toy benchmark (RFW layout), atomically. Each group: half positive
    pairs (two photos of one identity), half negative (two identities of the group), in blocks
    of 300 + 300 like RFW (``pairs_per_group`` must be a multiple of 20 for 10 folds)."""
    root = Path(root)
    settings = {"pairs_per_group": pairs_per_group, "size": size, "seed": seed}
    if (root / "test" / "txts").exists():
        record = root / "benchmark.json"
        # folders of earlier versions have no record: what their files show is checked
        have = json.loads(record.read_text()) if record.is_file() else _settings_on_disk(root)
        differ = {k: (have[k], v) for k, v in settings.items() if k in have and have[k] != v}
        if differ:
            raise ValueError(f"{root} holds a toy benchmark written with other settings "
                             f"(setting: (on disk, asked)) {differ}: delete {root} to "
                             "write it again, or use another folder")
        return root
    if pairs_per_group <= 0 or pairs_per_group % 20:
        raise ValueError(f"pairs_per_group must be a positive multiple of 20 (10 folds of "
                         f"positive and negative pairs), got {pairs_per_group}")
    g = torch.Generator().manual_seed(seed)
    with atomic_dir(root) as tmp:
        half = pairs_per_group // 2
        block = half // 10
        for group in GROUPS:
            n_ids = half + 2 * half  # positives use one identity each, negatives two
            z = group_latents(n_ids, group, g)
            views = same_identity(z, 2, g)
            imgs = photo(views, g, size)
            arr = to_uint8_hwc(imgs)
            for i in range(n_ids):
                d = tmp / "test" / "data" / group / f"id{i:05d}"
                d.mkdir(parents=True)
                for v in range(2):
                    Image.fromarray(arr[2 * i + v]).save(d / f"id{i:05d}_{v + 1:04d}.jpg",
                                                         quality=95)
            lines = []
            pos = [f"id{i:05d} 1 2" for i in range(half)]
            neg = [f"id{half + 2 * j:05d} 1 id{half + 2 * j + 1:05d} 2" for j in range(half)]
            for s in range(0, half, block):  # RFW order: blocks of positives then negatives
                lines += pos[s:s + block] + neg[s:s + block]
            t = tmp / "test" / "txts" / group
            t.mkdir(parents=True)
            (t / f"{group}_pairs.txt").write_text("\n".join(lines) + "\n")
        (tmp / "benchmark.json").write_text(json.dumps(settings))
    return root
