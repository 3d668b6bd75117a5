"""Verdicts from known numbers: hand-made per-seed results."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qdgs_lib import claims


def _shapes_results(table):
    rows = []
    for bias, (none, rand, qd) in table.items():
        for seed, jitter in ((0, -0.01), (1, 0.01)):
            for name, acc in (("none", none), ("random", rand), ("qdgs", qd)):
                rows.append({"bias": bias, "seed": seed, "finetune": name, "mean": acc + jitter})
    return pd.DataFrame(rows)


def test_shapes_verdicts_from_hand_made_means():
    res = _shapes_results({0.98: (0.626, 0.916, 0.854), 0.90: (0.900, 0.950, 0.960)})
    v = claims.shapes_verdicts(res)
    assert v.loc[0.98, "qdgs - none"] == pytest.approx(0.228)
    assert v.loc[0.98, "qdgs - random"] == pytest.approx(-0.062)
    # the same jitter for every set of a seed: the paired differences have no spread, and a
    # zero-width interval is no evidence either way
    assert v.loc[0.98, "qdgs - random low"] == pytest.approx(-0.062)
    assert v.loc[0.98, "verdict"] == ("vs biased-only: no interval (no spread across seeds); "
                                      "vs random: no interval (no spread across seeds)")
    text = claims.format_shapes_verdicts(v)
    assert "bias 0.98: biased 0.626, +random 0.916, +QDGS 0.854 -> +22.8 pts vs none " \
           "[+22.8, +22.8] (no p), -6.2 pts vs random [-6.2, -6.2] (no p) (2 paired seeds, " \
           "95% intervals)" in text
    # with seed-to-seed spread in the differences the intervals decide
    res.loc[(res.seed == 1) & (res.finetune == "qdgs"), "mean"] += 0.0004
    v = claims.shapes_verdicts(res)
    assert v.loc[0.98, "verdict"] == "vs biased-only: better; vs random: worse"
    assert v.loc[0.90, "verdict"] == "QDGS helps (better than both)"
    assert v["family"].tolist() == [4, 4] and v["seeds"].tolist() == [2, 2]
    assert "+1.0 pts vs random [+0.8, +1.3] (p 0.012, Holm 0.012 of 4)" in \
        claims.format_shapes_verdicts(v)
    assert "90% intervals" in claims.format_shapes_verdicts(claims.shapes_verdicts(res, 0.9))


def test_shapes_verdicts_use_paired_intervals():
    """Seed noise larger than the effect: the means favour QDGS, the paired interval over
    three seeds does not exclude 0, so no "helps"; one seed gives no verdict."""
    rows = []
    for seed, (none, rand, qd) in enumerate([(0.6, 0.80, 0.90), (0.7, 0.90, 0.85),
                                             (0.5, 0.70, 0.74)]):
        for name, acc in (("none", none), ("random", rand), ("qdgs", qd)):
            rows.append({"bias": 0.98, "seed": seed, "finetune": name, "mean": acc})
    res = pd.DataFrame(rows)
    v = claims.shapes_verdicts(res).loc[0.98]
    assert v["qdgs - random"] == pytest.approx(0.03)
    assert v["qdgs - random low"] < 0 < v["qdgs - random high"]
    assert v["qdgs - none low"] > 0 and v["seeds"] == 3
    # the interval vs biased-only excludes 0 (p 0.034), but not once both comparisons of the
    # table are accounted for (Holm: 2 x 0.034)
    diffs = [0.90 - 0.6, 0.85 - 0.7, 0.74 - 0.5]  # qdgs - none per seed: a paired t-test
    assert v["qdgs - none p"] == pytest.approx(stats.ttest_1samp(diffs, 0).pvalue)
    assert 0.03 < v["qdgs - none p"] < 0.05
    assert v["qdgs - none p holm"] == pytest.approx(2 * v["qdgs - none p"])
    assert v["verdict"] == "vs biased-only: no clear difference; vs random: no clear difference"
    res.loc[res.finetune == "none", "mean"] -= [0.0, 0.09, 0.0]  # a steadier gain
    strong = claims.shapes_verdicts(res).loc[0.98]
    assert strong["qdgs - none p holm"] < 0.05
    assert strong["verdict"] == "vs biased-only: better; vs random: no clear difference"
    one = claims.shapes_verdicts(res[res.seed == 0]).loc[0.98]
    assert one["verdict"] == "1 complete seed(s): no interval, no verdict"


def test_shapes_verdicts_pair_only_complete_seeds_and_refuse_bad_tables():
    rows = [{"bias": 0.98, "seed": s, "finetune": f, "mean": m}
            for s in range(3) for f, m in (("none", 0.6), ("random", 0.9), ("qdgs", 0.8 + s / 50))]
    res = pd.DataFrame(rows)
    res.loc[(res.seed == 2) & (res.finetune == "none"), "mean"] = float("nan")
    v = claims.shapes_verdicts(res).loc[0.98]
    assert v["seeds"] == 2 and v["qdgs"] == pytest.approx(0.81)  # seed 2 left out everywhere
    res.loc[(res.seed == 1) & (res.finetune == "qdgs"), "mean"] = float("nan")
    v = claims.shapes_verdicts(res).loc[0.98]
    assert v["seeds"] == 1 and "no verdict" in v["verdict"]
    with pytest.raises(ValueError, match="share their bias, seed, finetune"):
        claims.shapes_verdicts(pd.concat([res, res.iloc[:1]]))
    with pytest.raises(ValueError, match="no fine-tuning \\['random'\\]"):
        claims.shapes_verdicts(res[res.finetune != "random"])


def test_share_verdicts():
    shares = pd.DataFrame({"dark": [0.091, 0.286], "50s": [0.35, 0.46], "masc": [0.5, 0.9]},
                          index=["random sampling", "QDGS archive"])
    v = claims.share_verdicts(shares)
    assert v.loc["dark", "change"] == pytest.approx(0.195)
    assert list(v.verdict) == ["closer to balance", "closer to balance",
                               "NOT closer to balance"]
    shares.loc["QDGS archive", "masc"] = float("nan")
    assert claims.share_verdicts(shares).loc["masc", "verdict"].startswith("no share")
    assert "dark: random sampling 9.1% -> QDGS archive 28.6% (+19.5 pts)" in \
        claims.format_share_verdicts(v)


def _fair_results():
    """Two groups; QDGS narrows the gap in seed 0 only, and on average."""
    acc = {("none", 0): (0.90, 0.70), ("none", 1): (0.90, 0.76),
           ("qdgs", 0): (0.86, 0.80), ("qdgs", 1): (0.88, 0.74)}
    rows = []
    for (name, seed), (a, b) in acc.items():
        mean, std = (a + b) / 2, abs(a - b) / 2
        rows.append({"pretraining": name, "seed": seed, "benchmark": "toy", "young": a,
                     "old": b, "fair_mean": mean, "fair_std": std, "fair_ser": 1.0, "all": 0.8})
    return pd.DataFrame(rows)


def test_fairness_verdicts_on_means_and_paired_seeds():
    v = claims.fairness_verdicts(_fair_results(), "toy", ["young", "old"])
    assert list(v.versus) == ["none"]  # no random pretraining in these results
    r = v.iloc[0]
    assert r["worst group"] == "old"
    assert r["worst before"] == pytest.approx(0.73) and r["worst after"] == pytest.approx(0.77)
    assert r["fairer"] and not r["accuracy cost"]
    assert (r["fairer_seeds"], r["seeds"]) == (1, 2)
    text = claims.format_fairness_verdicts(v)
    assert "fairer on average, fairer in 1 of 2 seeds" in text
    # seed 0: std 0.10 -> 0.03, seed 1: 0.07 -> 0.07; paired std diff -0.035, its interval
    # spans 0 over 2 seeds, so the verdict does not say fairer
    assert r["std diff"] == pytest.approx(-0.035)
    assert r["std diff low"] < 0 < r["std diff high"]
    assert r["verdict"].startswith("no clear difference")
    assert "QDGS vs none (2 paired seeds, 95% intervals, points)" in text


def test_fairness_verdict_says_not_fairer_and_cost():
    res = _fair_results()
    res.loc[res.pretraining == "qdgs", ["old", "fair_mean"]] -= 0.1
    r = claims.fairness_verdicts(res, "toy", ["young", "old"]).iloc[0]
    assert not r["fairer"] and r["accuracy cost"]


def test_fairness_verdict_from_paired_intervals():
    """Three seeds where QDGS lowers the spread and lifts the worst group in each by similar
    amounts: the intervals exclude 0 and the verdict says fairer; one seed says nothing."""
    rows = []
    for seed, shift in enumerate((0.0, 0.01, -0.01)):
        for name, (a, b) in {"none": (0.90, 0.70), "qdgs": (0.89, 0.80)}.items():
            a, b = a + shift, b + shift + 0.002 * seed + (0.001 * seed if name == "qdgs" else 0)
            rows.append({"pretraining": name, "seed": seed, "benchmark": "toy", "young": a,
                         "old": b, "fair_mean": (a + b) / 2, "fair_std": abs(a - b) / 2})
    res = pd.DataFrame(rows)
    r = claims.fairness_verdicts(res, "toy", ["young", "old"]).iloc[0]
    assert r["std diff high"] < 0 and r["worst diff low"] > 0
    assert r["verdict"].startswith("fairer (better spread, better worst group)")
    assert r["mean diff low"] > 0 and r["verdict"].endswith("more accurate")
    one = claims.fairness_verdicts(res[res.seed == 0], "toy", ["young", "old"]).iloc[0]
    assert one["verdict"] == "one complete seed: no interval, no verdict"
    # a NaN in one run leaves its seed out of the pairs and of the means
    res.loc[(res.pretraining == "qdgs") & (res.seed == 2), "old"] = float("nan")
    two = claims.fairness_verdicts(res, "toy", ["young", "old"]).iloc[0]
    assert two["seeds"] == 2
    assert two["worst after"] == pytest.approx(res[(res.pretraining == "qdgs")
                                                   & (res.seed < 2)]["old"].mean())
    with pytest.raises(ValueError, match="share their pretraining, seed"):
        claims.fairness_verdicts(pd.concat([res, res.iloc[:1]]), "toy", ["young", "old"])


def test_mean_ci_is_the_t_interval():
    m, lo, hi = claims.mean_ci([0.80, 0.84, 0.88])
    # mean 0.84, sd 0.04: half width t(0.975, 2) * 0.04 / sqrt(3)
    assert m == pytest.approx(0.84)
    assert hi - m == pytest.approx(stats.t.ppf(0.975, 2) * 0.04 / np.sqrt(3))
    assert m - lo == pytest.approx(hi - m)
    m, lo, hi = claims.mean_ci([0.7, float("nan")])  # one finite seed: no interval
    assert m == 0.7 and lo != lo and hi != hi


def test_latent_norm_summary():
    t = claims.latent_norm_summary({"elites": [1.0, 2.0, 10.0, 50.0], "prior": [2.0, 2.5]},
                                   typical=2.45)
    assert t.loc["elites", "median norm"] == 6.0
    assert t.loc["elites", "share > 2x typical"] == 0.5
    assert t.loc["prior", "share > 2x typical"] == 0.0 and t.loc["prior", "latents"] == 2


def test_fairness_verdict_without_spread_across_seeds():
    """Every seed the same paired difference (a saturated or random-weight run): a
    zero-width interval is no evidence, and the verdict says so instead of failing."""
    rows = []
    for seed in range(3):
        for name, (a, b) in {"none": (0.90, 0.70), "qdgs": (0.91, 0.71)}.items():
            rows.append({"pretraining": name, "seed": seed, "benchmark": "toy", "young": a,
                         "old": b, "fair_mean": (a + b) / 2, "fair_std": abs(a - b) / 2})
    r = claims.fairness_verdicts(pd.DataFrame(rows), "toy", ["young", "old"]).iloc[0]
    assert r["verdict"] == ("no fairness verdict (no interval (no spread across seeds) spread, "
                            "no interval (no spread across seeds) worst group); "
                            "accuracy: no interval (no spread across seeds)")


def _audit(values):
    cols = claims.label_audit_verdicts.__defaults__[0]
    return pd.DataFrame({f"{kind} seed {s}": dict.fromkeys(cols, v)
                         for kind, per_seed in values.items()
                         for s, v in enumerate(per_seed)}).T


def test_label_audit_verdicts_pair_seeds():
    # the notebook used to print "noisier labels" for any lower mean; seed noise this large
    # is no clear difference
    v = claims.label_audit_verdicts(_audit({"qdgs": [0.93, 0.97, 0.95, 0.97, 0.98],
                                            "random": [0.95, 0.97, 0.97, 0.96, 0.96]}))
    r = v.loc["CLIP label = oracle"]
    assert r["qdgs"] < r["random"] and r["low"] < 0 < r["high"]
    assert r["verdict"] == "no clear difference" and r["seeds"] == 5
    v = claims.label_audit_verdicts(_audit({"qdgs": [0.90, 0.91, 0.89],
                                            "random": [0.95, 0.97, 0.96]}))
    assert v.loc["blue triangle", "verdict"] == "QDGS lower"
    assert "QDGS - random -6.0 pts" in claims.format_label_audit_verdicts(v)
    one = claims.label_audit_verdicts(_audit({"qdgs": [0.9], "random": [0.95]}))
    assert one.loc["blue triangle", "verdict"] == "1 paired seed(s): no interval"
    with pytest.raises(ValueError, match="no synthetic sets"):
        claims.label_audit_verdicts(_audit({"qdgs": [0.9]}))


def test_label_audit_verdicts_leave_out_seeds_missing_a_side():
    # a NaN (e.g. no red or blue images in a set) drops that seed from both means and the
    # difference, as the other verdicts drop incomplete seeds
    v = claims.label_audit_verdicts(_audit({"qdgs": [0.9, np.nan, 0.8],
                                            "random": [0.7, 0.95, 0.6]}))
    r = v.loc["CLIP label = oracle"]
    assert r["seeds"] == 2 and r["qdgs"] == pytest.approx(0.85)
    assert r["random"] == pytest.approx(0.65) and r["qdgs - random"] == pytest.approx(0.2)


def test_holm_and_paired_p_match_their_definitions():
    from scipy import stats

    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, then running maximum
    assert claims.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = claims.holm([0.01, float("nan"), 0.04])  # a NaN is not part of the family
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)
    assert np.isnan(adjusted[1]) and claims.holm([0.6, 0.7]).max() == 1.0
    table = claims.holm([[0.01, 0.04], [0.03, 0.005]])  # a table keeps its shape
    assert table == pytest.approx(np.array([[0.03, 0.06], [0.06, 0.02]]))
    d = [0.03, -0.01, 0.05, 0.02]
    assert claims.paired_p(d) == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    assert np.isnan(claims.paired_p([0.1, 0.1])) and np.isnan(claims.paired_p([0.1]))


def test_fairness_worst_group_is_chosen_from_both_arms():
    """The baseline's least accurate group by chance (young) is not the one both arms find
    hardest (old); choosing from the baseline alone would credit QDGS with +10 points."""
    rows = []
    for seed, shift in enumerate((0.0, 0.01, -0.01)):
        for name, (a, b) in {"none": (0.70, 0.72), "qdgs": (0.80, 0.71)}.items():
            a, b = a + shift, b + shift * (1 + seed)
            rows.append({"pretraining": name, "seed": seed, "benchmark": "toy", "young": a,
                         "old": b, "fair_mean": (a + b) / 2, "fair_std": abs(a - b) / 2})
    res = pd.DataFrame(rows)
    r = claims.fairness_verdicts(res, "toy", ["young", "old"]).iloc[0]
    assert r["worst group"] == "old" and r["worst diff"] == pytest.approx(-0.01)
    fixed = claims.fairness_verdicts(res, "toy", ["young", "old"], worst_group="young")
    assert fixed.iloc[0]["worst diff"] == pytest.approx(0.10)
    with pytest.raises(ValueError, match="no group"):
        claims.fairness_verdicts(res, "toy", ["young", "old"], worst_group="middle")
