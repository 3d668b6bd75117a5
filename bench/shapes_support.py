"""Does the shapes search stay on the VAE's support, and are its CLIP labels right? (issue 15)

For each latent-norm weight of the objective (the released code's regularizer, 0 = the shapes
profile before this measurement) and each search seed: run the default shapes search, then
report archive coverage, the elites' latent norms against the prior's, and how often the CLIP
shape label of the dataset built from the archive agrees with an oracle shape classifier
(trained on renders), beside random prior samples. Settings are chosen by these mechanism
numbers (label agreement, prior support), not by the downstream classifier.

    python bench/shapes_support.py [--weights 0 0.5 2] [--seeds 0 1] [--iterations 2000]
    python bench/shapes_support.py --labels [--clip-weights FILE]

Writes bench/results/shapes_support.csv; ``--labels`` instead measures how far the labels can be
trusted at all on the VAE's prior samples: CLIP vs oracle (shape) and vs pixels (color), and
oracles of different seeds against each other (bench/results/shapes_labels.csv).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qdgs_lib import claims, shapes_poc  # noqa: E402
from qdgs_lib.profiles import get_profile  # noqa: E402
from qdgs_lib.search import archive_frame, run_search, solutions  # noqa: E402
from qdgs_lib.utils import atomic_path  # noqa: E402


def label_reliability(clip_weights: str | None, out: str) -> None:
    import torch

    from qdgs_lib.sampling import decode_batched

    p = get_profile("default", "shapes", clip_weights=clip_weights)
    scorer = shapes_poc.build_scorer(p, "cpu")
    oracles = {s: shapes_poc.train_oracle(p, seed=s).eval() for s in (0, 1, 2)}
    rows = []
    for sample_seed in (0, 11):
        agree = shapes_poc.prior_label_agreement(scorer, p, oracles[0], n=1000, seed=sample_seed)
        z = scorer.generator.sample_prior(1000, seed=sample_seed).numpy()
        x = decode_batched(scorer.generator.decode, z, size=p["image_size"])
        with torch.no_grad():
            pred = {s: o(x).argmax(1).numpy() for s, o in oracles.items()}
        rows.append({"clip weights": clip_weights or "shipped", "prior sample seed": sample_seed,
                     "CLIP shape = oracle 0": agree["shape"], "CLIP color = pixels": agree["color"],
                     "oracle 0 = oracle 1": float((pred[0] == pred[1]).mean()),
                     "oracle 0 = oracle 2": float((pred[0] == pred[2]).mean()),
                     "oracle 1 = oracle 2": float((pred[1] == pred[2]).mean())})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    if Path(out).exists():  # one row block per CLIP weights file
        old = pd.read_csv(out)
        table = pd.concat([old[old["clip weights"] != table["clip weights"][0]], table])
    with atomic_path(out) as tmp_out:
        table.to_csv(tmp_out, index=False)
    print("wrote", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 2.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "shapes_support.csv"))
    ap.add_argument("--labels", action="store_true", help="label reliability instead")
    ap.add_argument("--clip-weights", default=None, help="a shapes CLIP file to check")
    args = ap.parse_args()
    if args.labels:
        # (a relative path on the command line means the working directory's, not data/'s)
        weights = str(Path(args.clip_weights).resolve()) if args.clip_weights else None
        return label_reliability(weights,
                                 str(ROOT / "bench" / "results" / "shapes_labels.csv"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.weights:
            p = get_profile("default", "shapes", objective_weights=(1.0, w, 0.0),
                            iterations=args.iterations)
            scorer = shapes_poc.build_scorer(p, "cpu")
            typical = scorer.generator.latent_norm
            for seed in args.seeds:
                qd = run_search(scorer, p, "cma_maega", Path(tmp) / f"w{w}_s{seed}", seed=seed,
                                progress=False)
                df = archive_frame(qd.result_archive)
                norms = np.linalg.norm(solutions(df), axis=1)
                qd_set = shapes_poc.qdgs_set(scorer, df, p)
                rnd_set = shapes_poc.random_set(scorer, len(qd_set["labels"]), p, seed=seed)
                audit = shapes_poc.label_audit(p, {"random": rnd_set, "qdgs": qd_set}, seed=0)
                summary = claims.latent_norm_summary({"qdgs": norms}, typical).loc["qdgs"]
                row = {"latent-norm weight": w, "seed": seed,
                       "coverage": float(qd.result_archive.stats.coverage),
                       "median elite norm": summary["median norm"],
                       "elites > 2x typical norm": summary["share > 2x typical"],
                       "shape label = oracle (QDGS)": audit.loc["qdgs", "CLIP label = oracle"],
                       "shape label = oracle (random)": audit.loc["random",
                                                                  "CLIP label = oracle"],
                       "blue triangle share (QDGS)": audit.loc["qdgs", "blue triangle"],
                       "images": int(audit.loc["qdgs", "images"])}
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
                      flush=True)
                rows.append(row)
    table = pd.DataFrame(rows)
    with atomic_path(args.out) as tmp_out:
        table.to_csv(tmp_out, index=False)
    print(table.groupby("latent-norm weight").mean(numeric_only=True).round(3).to_string())
    print("wrote", args.out)


if __name__ == "__main__":
    main()
