"""Do the purple shapes cost QDGS its lead over random fine-tuning? (issue 15)

QDGS fills the CLIP color measure uniformly, so about half of its images are purple (pixel
color 0.35-0.65), against ~8% of random prior samples, while the test set is pure red and
blue. This re-runs notebook 01's classifier protocol at color bias 0.98 on the default run's
own sets (rebuilt from its archives exactly as the notebook builds them, so the "random" and
"qdgs" rows must equal `figures/01_shapes_results.csv`) and on the same sets without their
purple images (read off the pixels: the renderer's ground truth, which a real user would not
have; a diagnostic, not a method). Writes results/shapes_purple.csv (one row per seed and
fine-tune set) and prints the paired differences with 95% t-intervals.

    python bench/shapes_purple.py   # after `make reproduce` (runs/01_shapes_poc/default); ~4 min
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from qdgs_lib.claims import mean_ci
from qdgs_lib.profiles import get_profile
from qdgs_lib.search import read_archive
from qdgs_lib.shapes_poc import (
    build_scorer,
    classifier_protocol,
    clearly_red_or_blue,
    pixel_color,
    qdgs_set,
    random_set,
)


def red_or_blue(data: dict) -> dict:
    """The set without its purple images (as the label audit, shapes_poc.label_audit)."""
    keep = np.flatnonzero(clearly_red_or_blue(pixel_color(data["images"])))
    return {k: v[torch.as_tensor(keep)] if torch.is_tensor(v) else v[keep]
            for k, v in data.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default="runs/01_shapes_poc/default")
    ap.add_argument("--bias", type=float, default=0.98)
    ap.add_argument("--out", default="bench/results/shapes_purple.csv")
    args = ap.parse_args()
    p = get_profile("default", "shapes", bias_levels=(args.bias,))
    scorer = build_scorer(p, "cpu")
    run = Path(args.run_dir)
    qd = {s: qdgs_set(scorer, read_archive(run / f"search_cma_maega_seed{s}" / "archive.parquet"),
                      p) for s in p["seeds"]}
    rnd = {s: random_set(scorer, len(qd[s]["labels"]), p, seed=s) for s in p["seeds"]}
    sets = {"random": rnd, "qdgs": qd,
            "random, red/blue only": {s: red_or_blue(d) for s, d in rnd.items()},
            "qdgs, red/blue only": {s: red_or_blue(d) for s, d in qd.items()}}
    # dropping purple halves QDGS's sets but not random's: the same size as a control
    sets["random, red/blue only, QDGS's size"] = {
        s: {k: v[: len(sets["qdgs, red/blue only"][s]["labels"])] for k, v in d.items()}
        for s, d in sets["random, red/blue only"].items()}
    sizes = {name: {s: len(d["labels"]) for s, d in v.items()} for name, v in sets.items()}
    res = classifier_protocol(p, sets, progress=False)
    res["images"] = [sizes[f].get(s, 0) if f != "none" else 0
                     for f, s in zip(res.finetune, res.seed, strict=True)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    res.to_csv(args.out, index=False)
    wide = res.pivot_table(index="seed", columns="finetune", values="mean")
    print(f"bias {args.bias}: balanced accuracy, mean over {len(wide)} seeds (images per set)")
    for name in ["none", *sets]:
        n = np.mean(list(sizes[name].values())) if name in sizes else 0
        print(f"  {name:36s} {wide[name].mean():.3f}  ({n:.0f} images)")
    print("paired differences, points [95% t-interval]:")
    for a, b in [("qdgs", "random"), ("qdgs, red/blue only", "random, red/blue only"),
                 ("qdgs, red/blue only", "random, red/blue only, QDGS's size"),
                 ("qdgs, red/blue only", "qdgs"),
                 ("random, red/blue only, QDGS's size", "random, red/blue only")]:
        m, lo, hi = (100 * v for v in mean_ci(wide[a] - wide[b]))
        print(f"  {a} - {b}: {m:+.1f} [{lo:+.1f}, {hi:+.1f}]")


if __name__ == "__main__":
    main()
