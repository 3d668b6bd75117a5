"""Does InsightFace's threshold grid decide notebook 04's group accuracies? (claims audit)

The 10-fold protocol picks each fold's distance threshold from ``arange(0, 4, 0.01)`` (what
InsightFace and the paper's evaluation use). On the toy benchmark the dark-skinned groups'
best thresholds are small (means 0.05-0.06 over the runs, some folds at 0.02): the grid's
step is a fifth of them or more. This evaluates
notebook 03's default models once per grid, InsightFace's (its rows must equal
``figures/04_results.csv``) and a 100x finer one (``arange(0, 4, 1e-4)``), and prints notebook
04's verdicts for both. Writes results/threshold_grid.csv (one row per model and grid).

    python bench/threshold_grid.py   # after `make reproduce` (runs/03_pretraining/); 10-20 min
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from qdgs_lib import claims, recognition
from qdgs_lib.paths import runs_dir
from qdgs_lib.profiles import get_profile
from qdgs_lib.utils import atomic_write_csv

GRIDS = {"insightface (0.01)": np.arange(0, 4, 0.01), "fine (1e-4)": np.arange(0, 4, 1e-4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "threshold_grid.csv"))
    args = ap.parse_args()
    p = get_profile(args.profile)["recognition"]
    models = recognition.read_models_table(runs_dir() / "03_pretraining" / args.profile
                                           / "models.csv")
    bench = recognition.available_benchmarks(p, include_toy=True)["sets"]["toy"]
    groups = list(bench.group_names)
    rows = []
    for _, m in tqdm(list(models.iterrows()), desc="embed + evaluate"):
        net = recognition.load_backbone(p, m["model"])
        for grid, thresholds in GRIDS.items():
            res = recognition.evaluate_recognizer(net, bench, "cpu", thresholds)
            rows.append({"grid": grid, "pretraining": m["pretraining"], "seed": m["seed"],
                         "benchmark": "toy", **res})
    table = pd.DataFrame(rows)
    atomic_write_csv(table, args.out, index=False)
    for grid, t in table.groupby("grid", sort=False):
        print(f"== {grid}")
        print(t.groupby("pretraining")[[*groups, "fair_mean", "fair_std"]].mean().round(4)
              .to_string())
        print(claims.format_fairness_verdicts(claims.fairness_verdicts(t, "toy", groups)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
