"""How well can anything label a shapes-VAE decode? (issue 15)

Oracle shape classifiers trained (a) on renders, as the notebook's audit does, and (b) on the
VAE's reconstructions of renders with the renders' labels, three seeds each; on prior samples:
how often oracles of different seeds agree, how often all three do, and how often the shipped
shapes CLIP agrees with oracle 0 and, on the images where the three agree, with their consensus.
Also: the render oracle read on reconstructions against the renders' true shapes (how often the
VAE keeps a shape).

    python bench/shapes_oracles.py      # ~5 minutes on 2 cores -> results/shapes_oracles.csv
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qdgs_lib import shapes_poc  # noqa: E402
from qdgs_lib.data.shapes import ShapesDataset, augment_shapes, group_names  # noqa: E402
from qdgs_lib.models.shape_classifier import ShapeClassifier  # noqa: E402
from qdgs_lib.profiles import get_profile  # noqa: E402
from qdgs_lib.sampling import decode_batched, resize_square  # noqa: E402
from qdgs_lib.train import train_classifier  # noqa: E402
from qdgs_lib.utils import atomic_path, seed_everything  # noqa: E402

OUT = ROOT / "bench" / "results" / "shapes_oracles.csv"


def reconstruction_oracle(vae, p: dict, seed: int, n: int = 4000, epochs: int = 8):
    """An oracle trained on VAE reconstructions of balanced renders, with the renders' labels;
    also returns the reconstructions, labels and color x shape groups."""
    seed_everything(seed)
    renders = ShapesDataset(n, None, 128, seed=20_000 + seed)
    with torch.no_grad():
        x = torch.cat([vae.decode(vae.encode(b)[0]) for b in renders.images.split(256)])
    x = resize_square(x, p["image_size"])
    oracle = ShapeClassifier()
    train_classifier(oracle, TensorDataset(x, renders.labels), epochs, batch_size=p["batch"],
                     seed=seed, augment=augment_shapes, progress=False, device="cpu")
    return oracle.eval(), x, renders.labels, renders.groups


def main() -> None:
    p = get_profile("default", "shapes")
    scorer = shapes_poc.build_scorer(p, "cpu")
    vae = scorer.generator
    oracles = {"renders": {s: shapes_poc.train_oracle(p, seed=s, device="cpu").eval()
                           for s in (0, 1, 2)}, "reconstructions": {}}
    for s in (0, 1, 2):
        oracles["reconstructions"][s], x_rec, y_rec, g_rec = reconstruction_oracle(vae, p, s)
    with torch.no_grad():
        hit = (oracles["renders"][0](x_rec).argmax(1) == y_rec).numpy()
    kept = float(hit.mean())
    by_group = {f"render oracle keeps the shape: {name}": float(hit[g_rec.numpy() == k].mean())
                for k, name in enumerate(group_names())}
    print(f"render oracle on VAE reconstructions = the render's shape: {kept:.3f}", by_group)
    rows = []
    for sample_seed in (0, 11):
        z = vae.sample_prior(1000, seed=sample_seed).numpy()
        x = decode_batched(vae.decode, z, size=p["image_size"])
        clip = shapes_poc.label_by_shape_measure(scorer.measures_of(z), p)
        for kind, group in oracles.items():
            with torch.no_grad():
                pred = {s: o(x).argmax(1).numpy() for s, o in group.items()}
            pairs = {f"oracle {i} = oracle {j}": float((pred[i] == pred[j]).mean())
                     for i, j in itertools.combinations(pred, 2)}
            consensus = (pred[0] == pred[1]) & (pred[1] == pred[2])
            rows.append({"oracles trained on": kind, "prior sample seed": sample_seed, **pairs,
                         "all three agree": float(consensus.mean()),
                         "CLIP shape = oracle 0": float((clip == pred[0]).mean()),
                         "CLIP shape = consensus, where the three agree":
                             float((clip[consensus] == pred[0][consensus]).mean()),
                         "render oracle keeps the render's shape on reconstructions": kept,
                         **by_group})
            print(rows[-1], flush=True)
    with atomic_path(OUT) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
