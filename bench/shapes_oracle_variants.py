"""Which shape oracle is a stable reference for shapes-VAE decodes? (issue 15)

Variants, three seeds each, read 1000 decodes of the VAE's prior (sample seed 11): how often
members of different seeds agree pairwise and all three (the *unanimous* share), their mean
confidence, and how often the shipped shapes CLIP agrees with the members' mean label on the
unanimous decodes and on all of them.

    A  the first reference: 2000 renders drawn at 32 px, 8 epochs (shapes_poc.train_oracle)
    B  8000 renders drawn at 128 px and resized like decodes, 10 epochs
    C  B + random blur (shipped: qdgs_lib/shapes_oracle.py)
    E  C with 16,000 renders and a classifier twice as wide

    python bench/shapes_oracle_variants.py [A B C E]   # A-C ~4 min, E ~10 min on 2 cores
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qdgs_lib import shapes_poc  # noqa: E402
from qdgs_lib.data.shapes import ShapesDataset, augment_shapes  # noqa: E402
from qdgs_lib.models.shape_classifier import ShapeClassifier  # noqa: E402
from qdgs_lib.profiles import get_profile  # noqa: E402
from qdgs_lib.sampling import decode_batched, resize_square  # noqa: E402
from qdgs_lib.shapes_oracle import ShapeOracle, blur_augment, train_member, vote  # noqa: E402
from qdgs_lib.train import train_classifier  # noqa: E402
from qdgs_lib.utils import atomic_path, seed_everything  # noqa: E402

OUT = ROOT / "bench" / "results" / "shapes_oracle_variants.csv"


def member(variant: str, seed: int) -> ShapeClassifier:
    p = get_profile("default", "shapes")
    if variant == "A":
        return shapes_poc.train_oracle(p, seed=seed, device="cpu").eval()
    if variant == "B":
        return train_member(seed, augment=augment_shapes)
    if variant == "C":
        return train_member(seed)
    if variant == "E":
        seed_everything(seed)
        renders = ShapesDataset(16_000, None, 128, seed=20_000 + seed)
        m = ShapeClassifier(width=32)
        train_classifier(m, TensorDataset(resize_square(renders.images, 32), renders.labels), 10,
                         batch_size=64, seed=seed, augment=blur_augment, progress=False,
                         device="cpu")
        return m.eval()
    raise SystemExit(f"unknown variant {variant}: choose from A B C E")


def main() -> None:
    variants = sys.argv[1:] or ["A", "B", "C"]
    p = get_profile("default", "shapes")
    scorer = shapes_poc.build_scorer(p, "cpu")
    vae = scorer.generator
    z = vae.sample_prior(1000, seed=11).numpy()
    x = decode_batched(vae.decode, z, size=32)
    clip = shapes_poc.label_by_shape_measure(scorer.measures_of(z), p)
    rows = []
    for v in variants:
        t = time.time()
        members = [member(v, s) for s in (0, 1, 2)]  # trained outside no_grad
        probs = ShapeOracle(members).member_probs(x)
        label, unanimous, _ = vote(probs)
        votes, probs = (probs > 0.5).numpy(), probs.numpy()
        row = {"variant": v, "train seconds (3 members)": round(time.time() - t),
               **{f"member {i} = member {j}": float((votes[i] == votes[j]).mean())
                  for i, j in itertools.combinations(range(3), 2)},
               "unanimous": float(unanimous.mean()),
               "mean confidence": float(np.maximum(probs, 1 - probs).mean()),
               "CLIP shape = oracle, unanimous decodes": float((clip == label)[unanimous].mean()),
               "CLIP shape = oracle, all decodes": float((clip == label).mean())}
        print(row, flush=True)
        rows.append(row)
    with atomic_path(OUT) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
