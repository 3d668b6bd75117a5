"""The verdicts the notebooks print and the README quotes, computed from result tables.

Each function takes the CSV-shaped results a notebook writes and returns a table with one row
per comparison and a ``verdict`` column decided by the numbers alone (no expected outcome).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its two-sided ``level`` t-interval (n - 1 degrees of freedom) over seeds;
    the interval is NaN for fewer than two values (one seed says nothing about spread)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return (float("nan"),) * 3
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return m, m - half, m + half


def _paired(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval"
    if low == high:  # every seed gave the same difference: a t-interval says nothing
        return "no interval (no spread across seeds)"
    return "better" if low > 0 else "worse" if high < 0 else "no clear difference"


def _refuse_duplicates(results: pd.DataFrame, keys: list[str]) -> None:
    dup = results[results.duplicated(keys, keep=False)]
    if len(dup):
        raise ValueError(f"{len(dup)} result rows share their {', '.join(keys)} "
                         f"(e.g. {dup[keys].iloc[0].to_dict()}): each run must appear once; "
                         "remove the repeated rows (an appended rerun?)")


def _require(values, needed, what: str) -> None:
    have = set(values)
    missing = [k for k in needed if k not in have]
    if missing:
        raise ValueError(f"the results have no {what} {missing}: a verdict needs every one of "
                         f"{list(needed)}")


def shapes_verdicts(results: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Notebook 01: per color bias, the balanced accuracy (``mean`` over groups) without
    fine-tuning, with random and with QDGS fine-tuning, averaged over seeds, and the paired
    differences (same seed: same real data, initialisation and search seed) with their
    ``level`` t-intervals. Against each baseline QDGS is "better" (interval above 0), "worse"
    (below 0) or shows "no clear difference"; it "helps" when it is better than both. One seed
    gives no interval, and the verdict says so. Seeds with a missing or NaN result are left
    out of every comparison (``seeds``: the seeds with all three results)."""
    _refuse_duplicates(results, ["bias", "seed", "finetune"])
    _require(results["finetune"], ("none", "random", "qdgs"), "fine-tuning")
    wide = results.pivot_table(index=["bias", "seed"], columns="finetune", values="mean",
                               dropna=False)
    rows = {}
    for bias, r in wide.groupby(level="bias"):
        r = r[["none", "random", "qdgs"]].dropna()  # paired: the same seeds everywhere
        row = {k: float(r[k].mean()) if len(r) else np.nan for k in ("none", "random", "qdgs")}
        for base in ("none", "random"):
            m, lo, hi = mean_ci(r["qdgs"] - r[base], level)
            row.update({f"qdgs - {base}": m, f"qdgs - {base} low": lo,
                        f"qdgs - {base} high": hi})
        row["seeds"], row["level"] = len(r), level
        vs = {base: _paired(row[f"qdgs - {base} low"], row[f"qdgs - {base} high"])
              for base in ("none", "random")}
        if len(r) < 2:
            verdict = f"{len(r)} complete seed(s): no interval, no verdict"
        elif set(vs.values()) == {"better"}:
            verdict = "QDGS helps (better than both)"
        else:
            verdict = f"vs biased-only: {vs['none']}; vs random: {vs['random']}"
        row["verdict"] = verdict
        rows[bias] = row
    out = pd.DataFrame(rows).T
    out.index.name = "bias"
    return out.sort_index(ascending=False)


def format_shapes_verdicts(v: pd.DataFrame) -> str:
    def diff(r, base):
        return (f"{r[f'qdgs - {base}'] * 100:+.1f} pts vs {base} "
                f"[{r[f'qdgs - {base} low'] * 100:+.1f}, {r[f'qdgs - {base} high'] * 100:+.1f}]")

    return "\n".join(
        f"bias {bias:.2f}: biased {r['none']:.3f}, +random {r['random']:.3f}, "
        f"+QDGS {r['qdgs']:.3f} -> {diff(r, 'none')}, {diff(r, 'random')} "
        f"({r['seeds']} paired seeds, {r['level']:.0%} intervals): {r['verdict']}"
        for bias, r in v.iterrows())


def share_verdicts(shares: pd.DataFrame, before: str = "random sampling",
                   after: str = "QDGS archive") -> pd.DataFrame:
    """Notebook 02: each share (a column of ``shares``, rows ``before``/``after``) moved
    towards balance (0.5) or away from it."""
    b, a = shares.loc[before].astype(float), shares.loc[after].astype(float)
    out = pd.DataFrame({before: b, after: a, "change": a - b})
    closer = (a - 0.5).abs() < (b - 0.5).abs()
    out["verdict"] = np.where(a.isna() | b.isna(), "no share (missing), no verdict",
                              np.where(closer, "closer to balance", "NOT closer to balance"))
    return out


def format_share_verdicts(v: pd.DataFrame) -> str:
    before, after = v.columns[:2]
    return "\n".join(f"{name}: {before} {r[before]:.1%} -> {after} {r[after]:.1%} "
                     f"({r['change'] * 100:+.1f} pts): {r['verdict']}" for name, r in v.iterrows())


def fairness_verdicts(results: pd.DataFrame, benchmark: str, groups: list[str],
                      versus: tuple[str, ...] = ("random", "none"),
                      level: float = 0.95) -> pd.DataFrame:
    """Notebook 04: QDGS pretraining against each baseline on one benchmark with groups.

    On the means over seeds, QDGS is "fairer" when its spread across groups (``fair_std``) is
    smaller *and* the baseline's worst group is more accurate; the same test made seed by seed
    on paired runs (same seed: same real data and initialisation) is counted in
    ``fairer_seeds`` of ``seeds``. The paired differences QDGS - baseline of the spread, the
    worst group's accuracy and the mean accuracy get ``level`` t-intervals, and ``verdict``
    reads them: "fairer" only when the spread is clearly smaller and the worst group clearly
    more accurate, "less fair" for the reverse, else "no clear difference"; then the accuracy
    change ("costs accuracy", "more accurate", "no clear accuracy change").
    """
    r = results[results.benchmark == benchmark]
    _refuse_duplicates(r, ["pretraining", "seed"])
    cols = [*groups, "fair_mean", "fair_std"]
    per_seed = r.set_index(["pretraining", "seed"])
    rows = []
    for base in versus:
        if base not in set(r.pretraining) or "qdgs" not in set(r.pretraining):
            continue
        # paired seeds with every value present in both runs; all means over those only
        seeds = [s for s in sorted(r.seed.unique())
                 if (base, s) in per_seed.index and ("qdgs", s) in per_seed.index
                 and np.isfinite(per_seed.loc[[("qdgs", s), (base, s)], cols]
                                 .to_numpy(float)).all()]
        if not seeds:
            continue
        q = per_seed.loc[[("qdgs", s) for s in seeds], cols].astype(float).mean()
        b = per_seed.loc[[(base, s) for s in seeds], cols].astype(float).mean()
        worst = b[groups].idxmin()
        diff = {col: [per_seed.loc[("qdgs", s), col] - per_seed.loc[(base, s), col]
                      for s in seeds] for col in ("fair_std", worst, "fair_mean")}
        holds = sum(d_std < 0 and d_worst > 0
                    for d_std, d_worst in zip(diff["fair_std"], diff[worst], strict=True))
        row = {"benchmark": benchmark, "versus": base, "worst group": worst,
               "std before": b["fair_std"], "std after": q["fair_std"],
               "worst before": b[worst], "worst after": q[worst],
               "mean before": b["fair_mean"], "mean after": q["fair_mean"],
               "fairer": bool(q["fair_std"] < b["fair_std"] and q[worst] > b[worst]),
               "accuracy cost": bool(q["fair_mean"] < b["fair_mean"]),
               "fairer_seeds": int(holds), "seeds": len(seeds), "level": level}
        for name, col in (("std", "fair_std"), ("worst", worst), ("mean", "fair_mean")):
            m, lo, hi = mean_ci(diff[col], level)
            row.update({f"{name} diff": m, f"{name} diff low": lo, f"{name} diff high": hi})
        if len(seeds) < 2:
            row["verdict"] = "one complete seed: no interval, no verdict"
        else:
            spread = _paired(-row["std diff high"], -row["std diff low"])  # lower std: better
            worst_acc = _paired(row["worst diff low"], row["worst diff high"])
            fair = ("fairer" if spread == worst_acc == "better" else
                    "less fair" if spread == worst_acc == "worse" else
                    # a zero-width interval (every seed the same difference) is no evidence
                    "no fairness verdict" if "no interval" in spread + worst_acc else
                    "no clear difference")
            acc = _paired(row["mean diff low"], row["mean diff high"])
            row["verdict"] = f"{fair} ({spread} spread, {worst_acc} worst group); " + {
                "better": "more accurate", "worse": "costs accuracy",
                "no clear difference": "no clear accuracy change"}.get(acc, f"accuracy: {acc}")
        rows.append(row)
    return pd.DataFrame(rows)


def format_fairness_verdicts(v: pd.DataFrame) -> str:
    def diff(r, name, scale=100):
        return (f"{r[f'{name} diff'] * scale:+.2f} [{r[f'{name} diff low'] * scale:+.2f}, "
                f"{r[f'{name} diff high'] * scale:+.2f}]")

    return "\n".join(
        f"{r['benchmark']}: QDGS vs {r['versus']} ({r['seeds']} paired seeds, "
        f"{r['level']:.0%} intervals, "
        f"points): std across groups {r['std before']:.4f} -> {r['std after']:.4f} "
        f"{diff(r, 'std')}, worst group ({r['worst group']}) {r['worst before']:.4f} -> "
        f"{r['worst after']:.4f} {diff(r, 'worst')}, mean {r['mean before']:.4f} -> "
        f"{r['mean after']:.4f} {diff(r, 'mean')}: {r['verdict']}; "
        f"{'fairer' if r['fairer'] else 'NOT fairer'} on average"
        f"{', at an accuracy cost' if r['accuracy cost'] else ''}, "
        f"fairer in {r['fairer_seeds']} of {r['seeds']} seeds" for _, r in v.iterrows())


def label_audit_verdicts(per_seed: pd.DataFrame, columns: tuple[str, ...] = (
        "CLIP label = oracle", "CLIP label = oracle, all images", "CLIP color = pixels",
        "CLIP color = pixels, red or blue images", "blue triangle"),
        level: float = 0.95) -> pd.DataFrame:
    """Notebook 01's label audit (:func:`qdgs_lib.shapes_poc.label_audit`, rows
    ``"qdgs seed k"`` / ``"random seed k"``): per column, the means over seeds and the paired
    difference QDGS - random (same seed) with its ``level`` t-interval; the verdict says
    "QDGS higher" / "QDGS lower" only when the interval excludes 0."""
    kind = per_seed.index.str.split(" seed ").str[0]
    seed = per_seed.index.str.split(" seed ").str[-1]
    wide = {k: per_seed[kind == k].set_axis(seed[kind == k]) for k in ("qdgs", "random")}
    _require(set(kind), ("qdgs", "random"), "synthetic sets")
    seeds = sorted(set(wide["qdgs"].index) & set(wide["random"].index))
    rows = {}
    for col in columns:
        q = wide["qdgs"].loc[seeds, col].astype(float)
        r = wide["random"].loc[seeds, col].astype(float)
        paired = np.isfinite(q) & np.isfinite(r)  # a seed missing either side is left out
        q, r = q[paired], r[paired]
        m, lo, hi = mean_ci(q - r, level)
        outcome = _paired(lo, hi)
        rows[col] = {"qdgs": q.mean(), "random": r.mean(), "qdgs - random": m,
                     "low": lo, "high": hi, "seeds": len(q), "level": level,
                     "verdict": {"better": "QDGS higher", "worse": "QDGS lower",
                                 "no clear difference": "no clear difference"}.get(
                                     outcome, f"{len(q)} paired seed(s): {outcome}")}
    return pd.DataFrame(rows).T


def format_label_audit_verdicts(v: pd.DataFrame) -> str:
    return "\n".join(
        f"{col}: QDGS {r['qdgs']:.1%}, random {r['random']:.1%}, QDGS - random "
        f"{r['qdgs - random'] * 100:+.1f} pts [{r['low'] * 100:+.1f}, {r['high'] * 100:+.1f}] "
        f"({r['seeds']} paired seeds, {r['level']:.0%} interval): {r['verdict']}"
        for col, r in v.iterrows())


def latent_norm_summary(norms: dict[str, np.ndarray], typical: float) -> pd.DataFrame:
    """Are the elites where the generator was trained? Per set of latents (e.g. QDGS elites,
    random-sampling elites, prior samples): median and 99th percentile of the latent norm, and
    the share beyond twice the prior's typical norm (the generator's ``latent_norm``)."""
    rows = {}
    for name, v in norms.items():
        v = np.asarray(v, dtype=float)
        rows[name] = {"latents": len(v), "median norm": float(np.median(v)) if len(v) else np.nan,
                      "99th percentile": float(np.percentile(v, 99)) if len(v) else np.nan,
                      "share > 2x typical": float((v > 2 * typical).mean()) if len(v) else np.nan}
    return pd.DataFrame(rows).T
