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
    assert not search.checkpoint_path.exists()  # no archive pickles (1.3 GB at paper scale)
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
    with run._extra_setting("cudnn_benchmark+math_attention"):  # settings joined by "+"
        assert torch.backends.cudnn.benchmark is True
        assert not torch.backends.cuda.flash_sdp_enabled()  # restricted to the math backend
    assert torch.backends.cudnn.benchmark is before
    with run._extra_setting("autocast_float16+compile"):  # scorer attributes: nothing here
        assert torch.backends.cudnn.benchmark is before
    assert run._scorer_settings("autocast_float16+compile") == (True, "float16", False)
    assert run._scorer_settings("compile") == (True, None, False)
    assert run._scorer_settings("autocast_bfloat16") == (False, "bfloat16", False)
    assert run._scorer_settings("deterministic") == (False, None, True)
    assert run._scorer_settings(None) == (False, None, False)
    with pytest.raises(ValueError, match="one autocast"):
        run._scorer_settings("autocast_float16+autocast_bfloat16")
    for bad in ("fast", "compile+fast", "autocast_float64"):
        with pytest.raises(ValueError, match="unknown setting"), run._extra_setting(bad):
            pass


def test_prefault_keeps_every_value_of_an_archive():
    """Touching an archive's pages (so the timed window does not pay for first touches) must
    not change it: every field, occupied cells and the untouched garbage alike, and what the
    next add does."""
    import numpy as np
    from ribs.archives import GridArchive

    def archive():
        a = GridArchive(solution_dim=600, dims=(20, 10), ranges=[(-1, 1)] * 2,
                        learning_rate=0.02, threshold_min=0, seed=0)
        rng = np.random.default_rng(0)
        a.add(rng.normal(size=(30, 600)), rng.random(30) * 100, rng.uniform(-1, 1, (30, 2)))
        return a

    a, b = archive(), archive()
    before = {k: v.copy() for k, v in a._store._fields.items()}
    run._prefault(a)
    for k, v in a._store._fields.items():
        assert v.tobytes() == before[k].tobytes()
    rng = np.random.default_rng(1)
    new = rng.normal(size=(8, 600)), rng.random(8) * 100, rng.uniform(-1, 1, (8, 2))
    assert str(a.add(*new)) == str(b.add(*new))
    assert a.data(return_type="pandas").equals(b.data(return_type="pandas"))
    run._prefault(object())  # another archive class (pyribs internals changed): nothing done


def test_iteration_rows_are_written_as_they_come(monkeypatch, tmp_path):
    """Candidate rows run quick ones first and land in the results after each row (a run cut
    short keeps them); a failing candidate is recorded and the others still run."""
    from types import SimpleNamespace

    import torch

    monkeypatch.setattr(run, "RESULTS", tmp_path)
    scorer = SimpleNamespace(clip=torch.nn.Linear(1, 1))
    monkeypatch.setattr(run, "setups", lambda device, quick: [("x", lambda: scorer)])
    paper = object()  # the paper profile's own scorer (w+), with its search settings
    monkeypatch.setattr(run, "paper_profile_scorer", lambda device: paper)
    seen = []

    def fake_row(sc, outdir, warmup, timed, mode, graphs, tf32, extra, label="",
                 search_kw=None):
        if seen:  # the file holds the rows so far
            assert len(pd.read_csv(tmp_path / "cands.csv")) == len(seen)
        assert (sc is paper) == (search_kw is not None)
        if sc is paper:
            assert search_kw == {"batch_size": 3, "selection_rule": "filter"}
            extra = "paper_profile"
        seen.append(extra)
        if extra == "math_attention":
            raise RuntimeError("no kernel")
        return {"jacobian_mode": mode, "extra": extra or "", "ms_per_iteration": 1.0}

    monkeypatch.setattr(run, "_iteration_row", fake_row)
    df = run.bench_iteration("cpu", quick=True, candidates=True, partial="cands")
    # the same card's fp32 baseline, then half precision; compiling last; the autotuner not
    # at all (its own process)
    assert seen[:3] == [None, "autocast_float16", "autocast_bfloat16"] and seen[-2:] == [
        "autocast_float16+compile", "compile"] and "cudnn_benchmark" not in seen
    assert len(df) == len(seen) == len(pd.read_csv(tmp_path / "cands.csv"))
    assert df.set_index("extra").loc["math_attention", "error"] == "RuntimeError: no kernel"
    # rows that share a setting (func+compile with and without TF32, compile) stay apart
    assert df.candidate.tolist() == run.DEFAULT_CANDIDATES
    assert df.run.notna().all() and "cuda" in df   # every row names its run and CUDA
    seen.clear()
    run.bench_iteration("cpu", quick=True, candidates=["cudnn_benchmark"], partial="cudnn")
    assert seen == ["cudnn_benchmark"]


def test_candidate_results_are_named_portably():
    assert run.candidates_results_name(None, "gpu") == "iteration_candidates_gpu"
    name = run.candidates_results_name(["autocast_float16+compile", "compile"], "gpu")
    assert name == "iteration_candidates_autocast_float16-compile_compile_gpu"


def test_faces_between_searches_repeats_notebook_02_at_its_seed(tmp_path):
    """bench/faces_between_searches.py: seed 0 is notebook 02's own search (the same shares),
    seed 1 another search, and every seed gets notebook 03's three pretrainings."""
    from bench import faces_between_searches as fbs
    from qdgs_lib import face_synthesis
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.search import archive_frame, measures, run_search, solutions

    table, results, groups = fbs.between_searches("smoke", [0, 1], tmp_path / "bench")
    faces = get_profile("smoke", "faces")
    scorer = face_synthesis.build_scorer(faces, "cpu")
    df = archive_frame(run_search(scorer, faces, "cma_maega", tmp_path / "nb02",
                                  progress=False).result_archive)
    expected = face_synthesis.shares(faces, solutions(df), measures(df))
    row = table.set_index("seed")
    assert {k: row.loc[0, f"qdgs: {k}"] for k in expected} == expected
    assert row.loc[0, "qdgs search: qd_score"] != row.loc[1, "qdgs search: qd_score"]
    assert sorted(zip(results.pretraining, results.seed, strict=True)) == sorted(
        (arm, s) for arm in ("none", "random", "qdgs") for s in (0, 1))
    assert results[groups].notna().all().all()
    text = fbs.report(table, results, groups)
    assert "true dark skin" in text and "QDGS vs random (2 paired seeds" in text
