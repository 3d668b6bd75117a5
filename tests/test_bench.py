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


def test_iteration_timing_splits_an_iteration_into_its_scorer_calls(tmp_path):
    """The wall clock of an iteration = its jacobian call + its values call + the rest; the
    scorer gets its own evaluate back afterwards."""
    sys.path.insert(0, str(Path(__file__).parent))
    from toys import ToyClip, ToyGenerator

    from qdgs_lib.scoring import PromptScorer
    from qdgs_lib.search import SearchConfig

    class Slow(PromptScorer):  # a jacobian call takes 20 ms, a values call 10 ms
        calls = []

        def evaluate(self, latents, jacobian=False, update_memory=True):
            self.calls.append(jacobian)
            run.time.sleep(0.02 if jacobian else 0.01)
            return super().evaluate(latents, jacobian, update_memory)

    sc = Slow(ToyGenerator(), ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")])
    cfg = SearchConfig(dims=(5, 5), ranges=((-1, 1), (-1, 1)), iterations=6, x0_samples=4)
    search = run._WallClockSearch(sc, cfg, tmp_path)
    search.run(progress=False)
    a, b = search.scoring_at[1], search.scoring_at[6]
    assert sc.calls.count(True) == 6 and sc.calls.count(False) == 7  # + the start latent's
    jac, values = b["jacobian"] - a["jacobian"], b["values"] - a["values"]
    assert jac >= 0.1 and values >= 0.05  # 5 iterations' calls, counted by kind
    assert search.logged_at[6] - search.logged_at[1] >= jac + values  # parts of the period
    search.release()
    assert "evaluate" not in vars(sc)


def test_iteration_extras_are_set_for_the_run_only():
    import pytest
    import torch

    before = torch.backends.cudnn.benchmark
    with run._extra_setting("cudnn_benchmark"):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is before
    q = torch.randn(2, 4, 5, 8, requires_grad=True)
    with run._extra_setting("math_attention"):  # the math backend's vmapped backward works
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        (jac,) = torch.autograd.grad(out, q, torch.randn(3, *out.shape),
                                     is_grads_batched=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    torch.testing.assert_close(out, ref)
    assert jac.shape == (3, *q.shape)
    with pytest.raises(ValueError, match="unknown setting"), run._extra_setting("fast"):
        pass
