"""Notebooks 02-04's faces results with a new search per seed: the spread between searches.

The offline default runs one QDGS search and one random draw (notebook 02), and notebook 03's
5 seeds all pretrain on those two sets: its intervals are conditional on them. Here seed k
gets its own CMA-MAEGA and random-sampling searches (search seed k), its own datasets
(`build_datasets(seed=k)`: archive subsample, random draws, K-means) and notebook 03's seed k
training (its real data and initialisation), so the paired intervals over seeds include the
search-to-search spread. Seed 0 repeats the notebooks' own run: its shares equal
`figures/02_faces_shares.csv` and its accuracies `figures/04_results.csv`'s seed 0 rows on the
machine those were made on.

Writes results/faces_between_searches.csv (per seed: shares of random samples and of the
QDGS archive, both searches' QD metrics) and results/faces_between_searches_accuracy.csv
(notebook 04's columns), and prints notebook 02's share changes and notebook 04's fairness
verdicts as paired 95% t-intervals over the seeds.

    python bench/faces_between_searches.py   # ~40 min on 2 cores; runs/bench_faces_between_searches
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from qdgs_lib import claims, face_synthesis, recognition
from qdgs_lib.profiles import get_profile
from qdgs_lib.search import archive_frame, archive_summary, run_searches, solutions
from qdgs_lib.search import measures as elite_measures
from qdgs_lib.utils import write_run_info


def between_searches(profile: str, seeds: list[int], run_dir: Path,
                     ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Per seed: (shares and QD metrics table, notebook 04's accuracy table, its groups)."""
    faces, rec = (get_profile(profile, part) for part in ("faces", "recognition"))
    write_run_info(run_dir, {"profile": profile, "device": "cpu", "seeds": seeds,
                             "faces": faces, "recognition": rec})
    scorer = face_synthesis.build_scorer(faces, "cpu")
    runs = {(s, alg): (alg, s, run_dir / f"seed{s}" / f"search_{alg}")
            for s in seeds for alg in ("cma_maega", "random")}
    searches = run_searches(scorer, faces, runs, build_scorer=face_synthesis.build_scorer)
    rows, models = [], []
    for s in seeds:
        qd, rnd = searches[(s, "cma_maega")], searches[(s, "random")]
        qd_df = archive_frame(qd.result_archive)
        # as notebook 02: prior samples (here of seed s) as many as the archive's elites
        rand_z = scorer.generator.sample_prior(faces["prior_samples"], seed=s).cpu().numpy()
        rand_z = rand_z[: max(len(qd_df), 1)]
        row = {"seed": s}
        for arm, z, m in (("random", rand_z, scorer.measures_of(rand_z)),
                          ("qdgs", solutions(qd_df), elite_measures(qd_df))):
            row.update({f"{arm}: {k}": v
                        for k, v in face_synthesis.shares(faces, z, m).items()})
        for arm, r in archive_summary({"qdgs": qd, "random": rnd}).iterrows():
            row.update({f"{arm} search: {k}": v for k, v in r.items()})
        rows.append(row)
        datasets = face_synthesis.build_datasets(scorer, qd_df, faces, run_dir / f"seed{s}",
                                                 seed=s, progress=False)
        models.append(recognition.pretrain_protocol(
            rec, {k: datasets[k] for k in ("random", "qdgs")}, run_dir / f"seed{s}", seeds=[s],
            device="cpu"))
    toy = recognition.available_benchmarks(rec, include_toy=True)["sets"]["toy"]
    results = recognition.evaluate_models(rec, pd.concat(models, ignore_index=True),
                                          {"toy": toy}, device="cpu")
    return pd.DataFrame(rows), results, list(toy.group_names)


def report(table: pd.DataFrame, results: pd.DataFrame, groups: list[str]) -> str:
    lines = [f"shares, random samples -> QDGS archive, over {len(table)} searches per arm "
             "(mean; paired difference in points, 95% t-interval; closer to 0.5 in how many):"]
    for col in [c.removeprefix("qdgs: ") for c in table if c.startswith("qdgs: ")]:
        a, b = table[f"qdgs: {col}"], table[f"random: {col}"]
        m, lo, hi = (100 * v for v in claims.mean_ci(a - b))
        closer = int(((a - 0.5).abs() < (b - 0.5).abs()).sum())
        lines.append(f"  {col}: {b.mean():.1%} -> {a.mean():.1%}, {m:+.1f} [{lo:+.1f}, "
                     f"{hi:+.1f}], closer to balance in {closer} of {len(table)}")
    for col in ("coverage", "qd_score"):
        d = table[f"qdgs search: {col}"] - table[f"random search: {col}"]
        m, lo, hi = claims.mean_ci(d)
        lines.append(f"  {col}: random {table[f'random search: {col}'].mean():.4g}, "
                     f"QDGS {table[f'qdgs search: {col}'].mean():.4g}, QDGS - random "
                     f"{m:+.4g} [{lo:+.4g}, {hi:+.4g}]")
    lines.append(recognition.group_table(results, "toy", groups).round(4).to_string())
    lines.append(claims.format_fairness_verdicts(claims.fairness_verdicts(results, "toy",
                                                                          groups)))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--profile", default="default", help="smoke: a quick check of the script")
    ap.add_argument("--run-dir", default="runs/bench_faces_between_searches")
    ap.add_argument("--out", default="bench/results/faces_between_searches.csv")
    args = ap.parse_args()
    table, results, groups = between_searches(args.profile, args.seeds, Path(args.run_dir))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    results.to_csv(out.with_name(out.stem + "_accuracy.csv"), index=False)
    print(report(table, results, groups))


if __name__ == "__main__":
    main()
