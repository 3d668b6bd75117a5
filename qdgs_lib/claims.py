"""The verdicts the notebooks print and the README quotes, computed from result tables.

Each function takes the CSV-shaped results a notebook writes and returns a table with one row
per comparison and a ``verdict`` column decided by the numbers alone (no expected outcome).

A table is one family of comparisons: each interval is a ``level`` t-interval of its own
(unadjusted), while the verdicts ("better", "worse", ...) come from the paired t-tests'
p-values after Holm's adjustment over every comparison in the table, so that a table of six
comparisons does not call one of them at chance. A verdict can therefore read "no clear
difference" next to an interval that excludes 0; the printed Holm p-value says why.
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


def paired_p(differences) -> float:
    """Two-sided p-value of the one-sample t-test that the mean of the paired
    ``differences`` is 0: the test behind :func:`mean_ci`'s interval (p < 1 - level exactly
    when that interval excludes 0). NaN for fewer than two finite values or no spread."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) < 2 or d.std(ddof=1) == 0:
        return float("nan")
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    return float(2 * stats.t.sf(abs(t), len(d) - 1))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (controls the chance of any false
    "better"/"worse" among them at the test level). NaN entries stay NaN and are not counted
    in the family."""
    shape = np.shape(pvalues)
    p = np.asarray(pvalues, dtype=float).ravel()
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = (len(order) - np.arange(len(order))) * p[order]
    out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out.reshape(shape)


def _paired(low: float, high: float, p_holm: float, level: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval"
    if low == high:  # every seed gave the same difference: a t-interval says nothing
        return "no interval (no spread across seeds)"
    if not p_holm < 1 - level:
        return "no clear difference"
    return "better" if low + high > 0 else "worse"


def _adjust(table: pd.DataFrame, columns: list[str]) -> None:
    """Holm-adjust a verdict table's p-value ``columns`` together, as one family: adds a
    ``"<column> holm"`` per column and ``family``, the number of comparisons with a p-value."""
    adjusted = holm(table[columns].to_numpy(float))
    for j, col in enumerate(columns):
        table[f"{col} holm"] = adjusted[:, j]
    table["family"] = int(np.isfinite(adjusted).sum())


def _p_text(p: float, p_holm: float, family: int) -> str:
    return f"p {p:.2g}, Holm {p_holm:.2g} of {family}" if np.isfinite(p) else "no p"


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
    ``level`` t-intervals and paired t-test p-values (``p``; ``p holm``: Holm-adjusted over
    every bias level and baseline in the table, ``family`` comparisons). Against each baseline
    QDGS is "better" or "worse" when its Holm-adjusted p is below 1 - ``level``, else shows "no
    clear difference"; it "helps" when it is better than both. One seed gives no interval, and
    the verdict says so. Seeds with a missing or NaN result are left out of every comparison
    (``seeds``: the seeds with all three results)."""
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
                        f"qdgs - {base} high": hi,
                        f"qdgs - {base} p": paired_p(r["qdgs"] - r[base])})
        row["seeds"], row["level"] = len(r), level
        rows[bias] = row
    out = pd.DataFrame(rows).T
    out.index.name = "bias"
    out["seeds"] = out["seeds"].astype(int)
    _adjust(out, [f"qdgs - {base} p" for base in ("none", "random")])
    verdicts = []
    for _, row in out.iterrows():
        vs = {base: _paired(row[f"qdgs - {base} low"], row[f"qdgs - {base} high"],
                            row[f"qdgs - {base} p holm"], level) for base in ("none", "random")}
        if row["seeds"] < 2:
            verdicts.append(f"{int(row['seeds'])} complete seed(s): no interval, no verdict")
        elif set(vs.values()) == {"better"}:
            verdicts.append("QDGS helps (better than both)")
        else:
            verdicts.append(f"vs biased-only: {vs['none']}; vs random: {vs['random']}")
    out["verdict"] = verdicts
    return out.sort_index(ascending=False)


def format_shapes_verdicts(v: pd.DataFrame) -> str:
    """One line per bias level of a :func:`shapes_verdicts` table: the three balanced
    accuracies, QDGS's paired differences (in points) with intervals and p-values, and the
    verdict."""
    def diff(r, base):
        c = f"qdgs - {base}"
        return (f"{r[c] * 100:+.1f} pts vs {base} [{r[f'{c} low'] * 100:+.1f}, "
                f"{r[f'{c} high'] * 100:+.1f}] "
                f"({_p_text(r[f'{c} p'], r[f'{c} p holm'], r['family'])})")

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
    """One line per share of a :func:`share_verdicts` table: before -> after, the change in
    points and the verdict."""
    before, after = v.columns[:2]
    return "\n".join(f"{name}: {before} {r[before]:.1%} -> {after} {r[after]:.1%} "
                     f"({r['change'] * 100:+.1f} pts): {r['verdict']}" for name, r in v.iterrows())


def fairness_verdicts(results: pd.DataFrame, benchmark: str, groups: list[str],
                      versus: tuple[str, ...] = ("random", "none"),
                      level: float = 0.95, worst_group: str | None = None) -> pd.DataFrame:
    """Notebook 04: QDGS pretraining against each baseline on one benchmark with groups.

    The worst group is ``worst_group`` if given, else the group least accurate on average over
    both arms' paired runs (choosing it from the baseline's runs alone would favour QDGS: the
    baseline's unluckiest group tends to do better in any other run). On the means over seeds,
    QDGS is "fairer" when its spread across groups (``fair_std``) is smaller *and* it is more
    accurate on the worst group; the same test made seed by seed on paired runs (same seed:
    same real data and initialisation) is counted in ``fairer_seeds`` of ``seeds``. The paired
    differences QDGS - baseline of the spread, the worst group's accuracy and the mean accuracy
    get ``level`` t-intervals and paired t-test p-values, Holm-adjusted over every comparison
    in the table (``p holm``, ``family``), and ``verdict`` reads the adjusted ones: "fairer"
    only when the spread is clearly smaller and the worst group clearly more accurate, "less
    fair" for the reverse, else "no clear difference"; then the accuracy change ("costs
    accuracy", "more accurate", "no clear accuracy change").
    """
    r = results[results.benchmark == benchmark]
    _refuse_duplicates(r, ["pretraining", "seed"])
    if worst_group is not None:
        _require(groups, (worst_group,), "group")
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
        worst = worst_group or (q[groups] + b[groups]).idxmin()
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
            row.update({f"{name} diff": m, f"{name} diff low": lo, f"{name} diff high": hi,
                        f"{name} p": paired_p(diff[col])})
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    _adjust(out, ["std p", "worst p", "mean p"])
    verdicts = []
    for _, row in out.iterrows():
        if row["seeds"] < 2:
            verdicts.append("one complete seed: no interval, no verdict")
            continue
        spread = _paired(-row["std diff high"], -row["std diff low"],  # lower std: better
                         row["std p holm"], level)
        worst_acc = _paired(row["worst diff low"], row["worst diff high"], row["worst p holm"],
                            level)
        fair = ("fairer" if spread == worst_acc == "better" else
                "less fair" if spread == worst_acc == "worse" else
                # a zero-width interval (every seed the same difference) is no evidence
                "no fairness verdict" if "no interval" in spread + worst_acc else
                "no clear difference")
        acc = _paired(row["mean diff low"], row["mean diff high"], row["mean p holm"], level)
        verdicts.append(f"{fair} ({spread} spread, {worst_acc} worst group); " + {
            "better": "more accurate", "worse": "costs accuracy",
            "no clear difference": "no clear accuracy change"}.get(acc, f"accuracy: {acc}"))
    out["verdict"] = verdicts
    return out


def format_fairness_verdicts(v: pd.DataFrame) -> str:
    """One line per baseline of a :func:`fairness_verdicts` table: spread across groups,
    worst group and mean accuracy before -> after with their paired differences (in points),
    the verdict, and the on-average and per-seed "fairer" counts."""
    def diff(r, name, scale=100):
        return (f"{r[f'{name} diff'] * scale:+.2f} [{r[f'{name} diff low'] * scale:+.2f}, "
                f"{r[f'{name} diff high'] * scale:+.2f}] "
                f"({_p_text(r[f'{name} p'], r[f'{name} p holm'], r['family'])})")

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
    difference QDGS - random (same seed) with its ``level`` t-interval and paired t-test
    p-value, Holm-adjusted over the columns (``p holm``, ``family``); the verdict says "QDGS
    higher" / "QDGS lower" only when the adjusted p is below 1 - ``level``."""
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
        rows[col] = {"qdgs": q.mean(), "random": r.mean(), "qdgs - random": m,
                     "low": lo, "high": hi, "p": paired_p(q - r), "seeds": len(q),
                     "level": level}
    out = pd.DataFrame(rows).T
    out["seeds"] = out["seeds"].astype(int)
    _adjust(out, ["p"])
    words = {"better": "QDGS higher", "worse": "QDGS lower",
             "no clear difference": "no clear difference"}
    verdicts = []
    for _, r in out.iterrows():
        outcome = _paired(r["low"], r["high"], r["p holm"], level)
        verdicts.append(words.get(outcome, f"{int(r['seeds'])} paired seed(s): {outcome}"))
    out["verdict"] = verdicts
    return out


def format_label_audit_verdicts(v: pd.DataFrame) -> str:
    """One line per column of a :func:`label_audit_verdicts` table: QDGS and random means,
    their paired difference (in points) with interval and p-values, and the verdict."""
    return "\n".join(
        f"{col}: QDGS {r['qdgs']:.1%}, random {r['random']:.1%}, QDGS - random "
        f"{r['qdgs - random'] * 100:+.1f} pts [{r['low'] * 100:+.1f}, {r['high'] * 100:+.1f}] "
        f"({r['seeds']} paired seeds, {r['level']:.0%} interval; "
        f"{_p_text(r['p'], r['p holm'], r['family'])}): {r['verdict']}"
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
