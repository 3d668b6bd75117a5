"""The benchmark script runs (quick, small setups) and its table logic is right."""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import run  # noqa: E402


def test_scoring_bench_rows_on_small_setups(monkeypatch):
    small = [s for s in run.setups("cpu", quick=True) if "StyleGAN2" not in s[0]][:1]
    monkeypatch.setattr(run, "setups", lambda device, quick: small)
    df = run.bench_scoring("cpu", quick=True)
    assert list(df.batch) == [1, 4]
    for col in ("fused_batched_sol_per_s", "fused_func_sol_per_s", "fused_loop_sol_per_s",
                "per_output_sol_per_s", "per_output_released_sol_per_s"):
        assert (df[col] > 0).all()
    best = df[["fused_batched_sol_per_s", "fused_func_sol_per_s", "fused_loop_sol_per_s"]]
    assert (df.fused_sol_per_s == best.max(axis=1)).all()
    assert (df.speedup - df.fused_sol_per_s / df.per_output_sol_per_s).abs().max() < 1e-9
    assert {"device", "threads", "torch", "malloc"} <= set(df.columns)


def test_time_to_coverage_takes_the_first_hit():
    m = pd.DataFrame({"algorithm": ["a"] * 3 + ["b"] * 2, "coverage": [0.05, 0.15, 0.25, 0.1, 0.12],
                      "evaluations": [10, 20, 30, 5, 9], "seconds": [1.0, 2.0, 3.0, 0.5, 0.9]})
    t = run.time_to_coverage(m, targets=(0.1, 0.2, 0.3)).set_index(["algorithm", "coverage"])
    assert t.loc[("a", 0.1), "evaluations"] == 20 and t.loc[("a", 0.2), "seconds"] == 3.0
    assert t.loc[("b", 0.1), "evaluations"] == 5
    assert pd.isna(t.loc[("a", 0.3), "evaluations"]) and pd.isna(t.loc[("b", 0.2), "seconds"])
