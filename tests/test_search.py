import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from toys import ToyClip, ToyGenerator, interrupt_at

from qdgs_lib.scoring import NonFiniteScoresError, PromptScorer
from qdgs_lib.search import (
    ALGORITHMS,
    QDSearch,
    SearchConfig,
    archive_summary,
    load_checkpoint,
    read_archive,
)

RANGES = ((-0.5, 0.2), (0.0, 1.1))  # the toy's reachable measure region


def scorer(prior_std=0.05):
    # A narrow prior: the toy generator is "biased", random samples cover a small region.
    return PromptScorer(ToyGenerator(prior_std=prior_std), ToyClip(), ("good", "bad"),
                        [("a", "b"), ("c", "d")])


def config(algorithm, iterations=300, **kw):
    kw = {"sigma0": 0.3, "lr": 0.3, "seed": 1, **kw}
    return SearchConfig(dims=(20, 20), ranges=RANGES, algorithm=algorithm,
                        iterations=iterations, **kw)


def test_cma_maega_covers_more_than_random_sampling(tmp_path):
    cov = {}
    for alg in ["cma_maega", "random"]:
        search = QDSearch(scorer(), config(alg), tmp_path / alg)
        cov[alg] = search.run(progress=False).stats.coverage
        m = search.metrics()
        assert len(m) == 300 and m["evaluations"].iloc[-1] == 300 * 5
    assert cov["cma_maega"] > 2 * cov["random"], cov


@pytest.mark.parametrize("algorithm", ["cma_mae", "cma_me", "map_elites"])
def test_other_algorithms_fill_the_archive(tmp_path, algorithm):
    archive = QDSearch(scorer(), config(algorithm, iterations=40), tmp_path).run(progress=False)
    assert archive.stats.num_elites > 5


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_resume_after_interruption_continues_the_same_run(tmp_path, algorithm):
    full = QDSearch(scorer(), config(algorithm, 60, checkpoint_every=20), tmp_path / "full")
    full.run(progress=False)

    class Killed(Exception):
        pass

    part = QDSearch(scorer(), config(algorithm, 60, checkpoint_every=20), tmp_path / "part")
    interrupt_at(part, 47, Killed)
    with pytest.raises(Killed):
        part.run(progress=False)
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pkl")["iteration"] == 40
    # killed while writing a metrics row: its first characters ("4" of "46,...") are no row
    metrics = tmp_path / "part" / "metrics.csv"
    text = metrics.read_text()
    assert text.endswith("\n")
    metrics.write_text(text + text.splitlines()[-1][:1])

    resumed = QDSearch(scorer(), config(algorithm, 60, checkpoint_every=20), tmp_path / "part")
    resumed.run(progress=False)
    m = resumed.metrics()
    assert list(m["iteration"]) == list(range(1, 61))  # no gaps, no duplicates
    a = read_archive(tmp_path / "full" / "archive.parquet").sort_values("index")
    b = read_archive(tmp_path / "part" / "archive.parquet").sort_values("index")
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_a_finished_run_extends_to_more_iterations_as_one_longer_run(tmp_path, capsys):
    """More iterations on a finished folder (what "search longer" asks): the run continues
    from its checkpoint and ends as one uninterrupted longer run would, archive and curve;
    another checkpoint pace is fine too. Fewer iterations than the checkpoint holds are
    refused (its archive holds more), naming what to ask for."""
    import json

    full = QDSearch(scorer(), config("cma_maega", 30, checkpoint_every=10), tmp_path / "full")
    full.run(progress=False)
    QDSearch(scorer(), config("cma_maega", 20, checkpoint_every=10), tmp_path / "ext").run(
        progress=False)
    longer = QDSearch(scorer(), config("cma_maega", 30, checkpoint_every=7), tmp_path / "ext")
    longer.run(progress=False)
    assert "asked for 20 iterations, now 30; continuing from iteration 20" in \
        capsys.readouterr().out
    a = read_archive(tmp_path / "full" / "archive.parquet").sort_values("index")
    b = read_archive(tmp_path / "ext" / "archive.parquet").sort_values("index")
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    cols = ["iteration", "evaluations", "num_elites", "coverage", "qd_score", "obj_max"]
    pd.testing.assert_frame_equal(full.metrics()[cols], longer.metrics()[cols])
    record = json.loads((tmp_path / "ext" / "config.json").read_text())["config"]
    assert record["iterations"] == 30 and record["checkpoint_every"] == 7
    with pytest.raises(ValueError, match="at iteration 30, past the 25 iterations asked: "
                                         "ask for at least 30"):
        QDSearch(scorer(), config("cma_maega", 25), tmp_path / "ext").run(progress=False)


def test_ranges_that_miss_the_measures_warn(tmp_path):
    """Ranges away from where the scorer's measures lie: every solution lands in an edge
    cell. The search says so at its end; ranges that cover the measures stay quiet."""
    import warnings

    cfg = SearchConfig(dims=(10, 10), ranges=((0.5, 0.6), (0.5, 0.6)), iterations=20, seed=0)
    with pytest.warns(UserWarning, match=r"100% of the 100 solutions scored had measure 0 "
                                         r"outside its range \(0.5, 0.6\).*edge cells"):
        QDSearch(scorer(), cfg, tmp_path / "off").run(progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        QDSearch(scorer(), config("cma_maega", 20), tmp_path / "on").run(progress=False)


def test_a_long_search_warns_of_missed_ranges_early_and_once(tmp_path, monkeypatch):
    """Checked once EARLY_RANGE_CHECK solutions are scored, not only after the last
    iteration (hours into a paper-scale search), and not again at the end."""
    import warnings

    from qdgs_lib import search

    monkeypatch.setattr(search, "EARLY_RANGE_CHECK", 60)  # 5 solutions an iteration
    cfg = SearchConfig(dims=(10, 10), ranges=((0.5, 0.6), (0.5, 0.6)), iterations=40, seed=0)
    run = QDSearch(scorer(), cfg, tmp_path / "early")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match=r"100% of the 60 solutions scored so far "
                                              r"\(iteration 12 of 40: interrupt"):
            run.run(progress=False)
    assert run.iteration == 12
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        QDSearch(scorer(), cfg, tmp_path / "once").run(progress=False)
    assert len([w for w in caught if "outside its range" in str(w.message)]) == 1
    # a resumed run counts its own session's solutions: a crossing at its last iteration is
    # the end's check, not "so far ... interrupt it"
    short = SearchConfig(dims=(10, 10), ranges=((0.5, 0.6), (0.5, 0.6)), iterations=28, seed=0)
    with pytest.warns(UserWarning, match="so far"):
        QDSearch(scorer(), short, tmp_path / "resumed").run(progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        QDSearch(scorer(), cfg, tmp_path / "resumed").run(progress=False)  # 28 -> 40: 60 new
    said = [str(w.message) for w in caught if "outside its range" in str(w.message)]
    assert len(said) == 1 and "of the 60 solutions scored had" in said[0], said


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    QDSearch(scorer(), config("cma_maega", 10), tmp_path).run(progress=False)
    with pytest.raises(ValueError, match="different settings") as err:
        QDSearch(scorer(), config("cma_maega", 10, batch_size=8), tmp_path).run(progress=False)
    assert "(batch_size)" in str(err.value)  # no hint at other weights when they are the same
    import json

    assert json.loads((tmp_path / "config.json").read_text())["config"]["device"] == "cpu"


def test_checkpoint_scored_by_other_weights_is_refused(tmp_path):
    """Same settings and prompts, another CLIP's weights: the finished run is neither reloaded
    nor resumed (it was before: its archive came back as if it were this scorer's)."""
    import json

    def scorer_with(clip_seed):
        return PromptScorer(ToyGenerator(prior_std=0.05), ToyClip(seed=clip_seed),
                            ("good", "bad"), [("a", "b"), ("c", "d")])

    QDSearch(scorer_with(1), config("cma_maega", 5), tmp_path).run(progress=False)
    with pytest.raises(ValueError, match="weights_sha256"):
        QDSearch(scorer_with(2), config("cma_maega", 5), tmp_path).run(progress=False)
    # a checkpoint from before weights were recorded still loads (nothing to compare)
    state = load_checkpoint(tmp_path / "checkpoint.pkl")
    cfg = json.loads(state["config"])
    del cfg["weights_sha256"]
    state["config"] = json.dumps(cfg, sort_keys=True)
    (tmp_path / "checkpoint.pkl").write_bytes(pickle.dumps(state))
    search = QDSearch(scorer_with(2), config("cma_maega", 5), tmp_path)
    search.run(progress=False)
    assert search.iteration == 5


@pytest.mark.parametrize("second", ["cma_maega", "random"])
def test_a_search_does_not_inherit_the_previous_searchs_memory(tmp_path, second):
    """With a uniqueness term, a search run after another one on the same scorer gives the
    archive a fresh scorer gives (before: it started from the first search's memory)."""
    def make():
        return PromptScorer(ToyGenerator(prior_std=0.05), ToyClip(), ("good", "bad"),
                            [("a", "b"), ("c", "d")], weights=(1, 0, 0.2), memory_size=5)

    shared = make()
    QDSearch(shared, config("cma_maega", 30), tmp_path / "first").run(progress=False)
    assert len(shared.memory) == 5  # the first search left a full memory behind
    after = QDSearch(shared, config(second, 30, seed=2), tmp_path / "after").run(progress=False)
    alone = QDSearch(make(), config(second, 30, seed=2), tmp_path / "alone").run(progress=False)
    pd.testing.assert_frame_equal(after.data(return_type="pandas"),
                                  alone.data(return_type="pandas"))


def test_malicious_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(pickle.dumps({"iteration": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="allow-list"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [
    ("numpy.random._common", "__builtins__.exec"),  # a dotted name walks attributes
    ("ribs.archives._grid_archive", "np.load"),      # what an allowed module imported
    ("numpy.random._pickle", "__builtins__"),
])
def test_checkpoint_globals_are_exact_names(tmp_path, module, name):
    """A protocol-4 pickle resolves ``module`` + dotted ``name`` attribute by attribute: from a
    numpy.random module that reaches the real builtins. Only exact names load."""
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('ran')".encode()

    def short(b: bytes) -> bytes:  # SHORT_BINUNICODE
        return b"\x8c" + bytes([len(b)]) + b

    payload = (b"\x80\x04" + short(module.encode()) + short(name.encode()) + b"\x93"
               + short(code) + b"\x85R0}.")  # STACK_GLOBAL, (code,), REDUCE, POP, {}
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match="allow-list"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithms_checkpoint_loads(tmp_path, algorithm):
    """The exact allow-list covers what each algorithm's checkpoint holds (2 emitters)."""
    cfg = config(algorithm, 3, num_emitters=2)
    QDSearch(scorer(), cfg, tmp_path).run(progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pkl")
    assert state["iteration"] == 3


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="unknown algorithm"):
        SearchConfig(dims=(5, 5), ranges=RANGES, algorithm="nope")
    with pytest.raises(ValueError, match="ranges"):
        SearchConfig(dims=(5, 5, 5), ranges=RANGES)
    with pytest.raises(ValueError, match="low < high"):
        SearchConfig(dims=(5, 5), ranges=((1, 0), (0, 1)))
    with pytest.raises(ValueError, match="measures"):
        QDSearch(scorer(), SearchConfig(dims=(5,), ranges=((0, 1),)), "/tmp/x")


def test_bad_counts_seeds_and_starts_raise():
    for kw, match in [({"seed": -1}, r"^seed must be >= 0, got"),
                      ({"iterations": 2.5}, "whole numbers"),
                      ({"batch_size": 0}, r"^batch_size must be >= 1, got"),
                      ({"batch_size": 2.5}, "whole numbers"), ({"x0": "nope"}, "x0 must be"),
                      ({"dims": (2.7, 5)}, "grid dims must be whole numbers"),
                      ({"lr": float("inf")}, "finite and > 0"),
                      ({"sigma0": float("inf")}, "finite and > 0"),
                      ({"threshold_min": float("nan")}, "threshold_min must be a number")]:
        with pytest.raises(ValueError, match=match):
            SearchConfig(**{"dims": (5, 5), "ranges": RANGES, **kw})
    assert SearchConfig(dims=(5, 5), ranges=RANGES, threshold_min=-np.inf).threshold_min < 0
    assert SearchConfig(dims=(5, 5), ranges=RANGES, iterations=np.int64(3)).iterations == 3


class Killed(Exception):
    pass


def archive_of(path):
    return read_archive(path / "archive.parquet").sort_values("index").reset_index(drop=True)


def test_running_the_same_object_again_after_an_early_kill_starts_over(tmp_path):
    """Killed before its first checkpoint, run() on the same object starts from scratch: it
    once kept the dead attempt's iteration count and result archive."""
    QDSearch(scorer(), config("cma_maega", 60, checkpoint_every=50), tmp_path / "full").run(
        progress=False)
    search = QDSearch(scorer(), config("cma_maega", 60, checkpoint_every=50), tmp_path / "part")
    step = search._step
    interrupt_at(search, 30, Killed)
    with pytest.raises(Killed):
        search.run(progress=False)
    search._step = step
    search.run(progress=False)
    assert list(search.metrics()["iteration"]) == list(range(1, 61))
    pd.testing.assert_frame_equal(archive_of(tmp_path / "full"), archive_of(tmp_path / "part"))


def test_a_fresh_start_removes_the_previous_runs_archive(tmp_path):
    QDSearch(scorer(), config("cma_maega", 10), tmp_path).run(progress=False)
    for f in ("checkpoint.pkl", "checkpoint.prev.pkl"):  # "delete ... to start over"
        (tmp_path / f).unlink(missing_ok=True)
    again = QDSearch(scorer(), config("cma_maega", 10, seed=5), tmp_path)
    interrupt_at(again, 5, Killed)
    with pytest.raises(Killed):
        again.run(progress=False)
    assert not (tmp_path / "archive.parquet").exists()  # never the old run's as this one's


def test_a_run_resumes_only_with_the_same_memory_length(tmp_path):
    QDSearch(scorer(), config("cma_maega", 10), tmp_path).run(progress=False)
    other = PromptScorer(ToyGenerator(prior_std=0.05), ToyClip(), ("good", "bad"),
                         [("a", "b"), ("c", "d")], memory_size=7)
    with pytest.raises(ValueError, match="different settings \\(scorer"):
        QDSearch(other, config("cma_maega", 10), tmp_path).run(progress=False)


def test_a_run_moved_to_another_clip_precision_says_how_to_resume(tmp_path):
    """clip_precision "released" is float16 on CUDA and float32 on a CPU: a run moved between
    them is refused, and the error names the setting to pin."""
    from qdgs_lib.clip import create_clip

    def make(precision):
        torch.manual_seed(0)  # the same random CLIP weights each time
        clip = create_clip("qdgs-shapes-clip", pretrained=False, device="cpu",
                           precision=precision)
        return PromptScorer(ToyGenerator(prior_std=0.05), clip, ("good", "bad"),
                            [("a", "b"), ("c", "d")])

    QDSearch(make("float32"), config("cma_maega", 3), tmp_path).run(progress=False)
    with pytest.raises(ValueError, match="clip_precision: CLIP in float16 or float32.*set "
                                         "clip_precision to what the run used"):
        QDSearch(make("float16"), config("cma_maega", 5), tmp_path).run(progress=False)
    search = QDSearch(make("released"), config("cma_maega", 5), tmp_path)  # float32 here
    search.run(progress=False)
    assert search.iteration == 5


class NoisyClip(ToyClip):
    """Random cutouts stand-in: every call draws from torch's global RNG."""

    num_cutouts = 1

    def encode_image(self, images, generator=None, normalize=True, check=True):
        images = images + 0.05 * torch.rand(images.shape, generator=generator)
        return super().encode_image(images, generator, normalize, check)


def noisy_scorer():
    return PromptScorer(ToyGenerator(prior_std=0.05), NoisyClip(), ("good", "bad"),
                        [("a", "b"), ("c", "d")], weights=(1.0, 0.5, 0.2), memory_size=7)


def test_a_stochastic_scorer_reproduces_and_resumes_exactly(tmp_path):
    """Cutouts / generator noise draw from a stream seeded by the scorer: two runs agree
    whatever the global RNG did before, an interrupted run resumes exactly, and the caller's
    RNG state is left alone."""
    torch.manual_seed(123)
    cfg = config("cma_maega", 30, checkpoint_every=10)
    QDSearch(noisy_scorer(), cfg, tmp_path / "a").run(progress=False)
    torch.rand(17)  # a different global RNG state
    QDSearch(noisy_scorer(), cfg, tmp_path / "b").run(progress=False)
    pd.testing.assert_frame_equal(archive_of(tmp_path / "a"), archive_of(tmp_path / "b"))
    part = QDSearch(noisy_scorer(), cfg, tmp_path / "c")
    interrupt_at(part, 25, Killed)
    with pytest.raises(Killed):
        part.run(progress=False)
    QDSearch(noisy_scorer(), cfg, tmp_path / "c").run(progress=False)
    pd.testing.assert_frame_equal(archive_of(tmp_path / "a"), archive_of(tmp_path / "c"))
    state = torch.get_rng_state()
    noisy_scorer().evaluate(np.zeros((2, 4)))
    assert torch.equal(torch.get_rng_state(), state)


def test_measures_of_images_draw_their_cutouts_from_a_seed_of_the_scorer():
    """The same images give the same measures on every call, and neither the caller's RNG
    nor the stream a search's calls draw from moves (they drew from the global RNG)."""
    sc = noisy_scorer()
    images = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    state, stream = torch.get_rng_state(), sc._call_rng.bit_generator.state
    first = sc.measures_of_images(images)
    np.testing.assert_array_equal(sc.measures_of_images(images), first)
    assert torch.equal(torch.get_rng_state(), state)
    assert sc._call_rng.bit_generator.state == stream
    other = PromptScorer(ToyGenerator(prior_std=0.05), NoisyClip(), ("good", "bad"),
                         [("a", "b"), ("c", "d")], seed=1)
    assert not np.array_equal(other.measures_of_images(images), first)  # the draws count
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        sc.measures_of_images(images, batch_size=0)


def test_a_reloaded_run_without_its_metrics_file_still_summarizes(tmp_path):
    from qdgs_lib.search import archive_summary

    QDSearch(scorer(), config("cma_maega", 10), tmp_path).run(progress=False)
    (tmp_path / "metrics.csv").unlink()
    search = QDSearch(scorer(), config("cma_maega", 10), tmp_path)
    with pytest.warns(UserWarning, match="rows for the checkpoint"):
        search.run(progress=False)
    assert archive_summary({"qd": search}).loc["qd", "evaluations"] == 10 * 5
    with pytest.warns(UserWarning, match="is missing"):
        assert search.metrics().empty


def test_empty_archive_file_raises(tmp_path):
    pd.DataFrame({"index": np.array([], dtype=int)}).to_parquet(tmp_path / "a.parquet")
    with pytest.raises(ValueError, match="empty"):
        read_archive(tmp_path / "a.parquet")


def test_searches_in_worker_processes_match_in_process_runs(tmp_path):
    # Two one-thread worker processes vs. this process (all its threads), on the real shapes
    # networks: CMA-MAEGA's archives and metrics bit for bit; random sampling (larger batches)
    # up to float rounding.
    from qdgs_lib import shapes_poc
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.search import archive_frame, run_search, run_searches

    p = get_profile("smoke", "shapes", iterations=25)
    shapes = shapes_poc.build_scorer(p, "cpu")
    runs = {0: ("cma_maega", 0, tmp_path / "par0"), 1: ("cma_maega", 1, tmp_path / "par1"),
            "random": ("random", 0, tmp_path / "par_random")}
    parallel = run_searches(shapes, p, runs, build_scorer=shapes_poc.build_scorer, workers=2,
                            progress=False)
    for key, (algorithm, seed, _) in runs.items():
        alone = run_search(shapes_poc.build_scorer(p, "cpu"), p, algorithm,
                           tmp_path / f"alone_{key}", seed=seed, progress=False)
        a, b = (archive_frame(s.result_archive).sort_values("index").reset_index(drop=True)
                for s in (parallel[key], alone))
        assert len(a) > 5
        exact = algorithm == "cma_maega"
        pd.testing.assert_frame_equal(a, b, check_exact=exact, rtol=1e-5)
        cols = ["iteration", "num_elites", "coverage", "qd_score"]
        pd.testing.assert_frame_equal(parallel[key].metrics()[cols], alone.metrics()[cols],
                                      check_exact=exact, rtol=1e-5)
    # finished runs are reloaded, not rerun
    mtime = (tmp_path / "par0" / "checkpoint.pkl").stat().st_mtime_ns
    again = run_searches(shapes, p, runs, build_scorer=shapes_poc.build_scorer, workers=2,
                         progress=False)
    assert (tmp_path / "par0" / "checkpoint.pkl").stat().st_mtime_ns == mtime
    assert again[0].result_archive.stats.num_elites == parallel[0].result_archive.stats.num_elites


def test_a_dead_worker_and_shared_folders_are_named(tmp_path):
    from toys import dying_scorer

    from qdgs_lib import shapes_poc
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.search import run_searches

    p = get_profile("smoke", "shapes", iterations=3)
    scorer = shapes_poc.build_scorer(p, "cpu")
    runs = {0: ("cma_maega", 0, tmp_path / "a"), 1: ("cma_maega", 1, tmp_path / "b")}
    with pytest.raises(RuntimeError, match="worker process died"):
        run_searches(scorer, p, runs, build_scorer=dying_scorer, workers=2, progress=False)
    runs[1] = ("random", 0, tmp_path / "x" / ".." / "a")  # the same folder, spelled otherwise
    with pytest.raises(ValueError, match="two runs share a folder"):
        run_searches(scorer, p, runs, progress=False)


def test_one_search_per_folder_at_a_time(tmp_path):
    """A second process in the same folder is refused while the first holds it; a temp file
    left by a killed writer is cleared when the run starts."""
    from qdgs_lib.search import _folder_lock

    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".checkpoint.pkl.abc123.tmp").write_bytes(b"half a checkpoint")
    with _folder_lock(tmp_path):  # (flock: a second open file conflicts even in one process)
        with pytest.raises(RuntimeError, match="another process is running a search"):
            QDSearch(scorer(), config("cma_maega", 3), tmp_path).run(progress=False)
    QDSearch(scorer(), config("cma_maega", 3), tmp_path).run(progress=False)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failing_worker_names_its_search(tmp_path):
    from toys import broken_scorer

    from qdgs_lib import shapes_poc
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.search import run_searches

    p = get_profile("smoke", "shapes", iterations=3)
    runs = {0: ("cma_maega", 0, tmp_path / "a"), 1: ("cma_maega", 1, tmp_path / "b")}
    with pytest.raises(RuntimeError, match="failed in its worker process: toy weights"):
        run_searches(shapes_poc.build_scorer(p, "cpu"), p, runs, build_scorer=broken_scorer,
                     workers=2, progress=False)


def test_metrics_rows_are_written_as_pandas_writes_them():
    """The search writes its metrics row by row without pandas (a DataFrame per row cost
    0.7 ms, 5% of a paper-scale iteration's budget); the file must read back the same."""
    from qdgs_lib.search import METRIC_COLUMNS, _csv_field

    rng = np.random.default_rng(0)
    for i in range(2000):
        row = {"iteration": i, "evaluations": np.int64(rng.integers(10**9)),
               "seconds": round(float(rng.random() * 1e4), 3),
               "num_elites": int(rng.integers(10**5)),
               "coverage": np.float64(rng.random() * 10.0 ** -rng.integers(0, 9)),
               "qd_score": np.float64(rng.normal() * 10.0 ** rng.integers(-3, 13)),
               "obj_max": np.nan if i % 7 == 0 else np.float32(rng.random() * 100),
               "obj_mean": float(rng.integers(0, 100)) if i % 3 else np.float64(np.nan)}
        expected = pd.DataFrame([row], columns=METRIC_COLUMNS).to_csv(header=False, index=False)
        assert ",".join(_csv_field(row[c]) for c in METRIC_COLUMNS) + "\n" == expected


def test_metrics_rows_keep_the_archive_stats_values(tmp_path):
    """What a search logs is pyribs' archive stats, some of them 0-d arrays (coverage,
    obj_mean): the metrics file must hold their values, not their integer parts (coverage was
    written as 0)."""
    from ribs.archives import GridArchive

    from qdgs_lib.search import _csv_field

    a = GridArchive(solution_dim=3, dims=(10, 10), ranges=[(-1, 1)] * 2, learning_rate=0.02,
                    threshold_min=0, seed=0)
    rng = np.random.default_rng(0)
    a.add(rng.normal(size=(30, 3)), rng.random(30) * 50, rng.uniform(-1, 1, (30, 2)))
    st = a.stats
    for v in (st.coverage, st.qd_score, st.obj_max, st.obj_mean, st.num_elites):
        assert float(_csv_field(v)) == pytest.approx(float(v), rel=1e-6)
    assert 0 < float(_csv_field(st.coverage)) < 1
    with pytest.raises(ValueError, match="scalar"):
        _csv_field(np.zeros(2))

    search = QDSearch(scorer(), config("cma_maega", iterations=5), tmp_path / "run")
    search.run(progress=False)
    last = search.metrics().iloc[-1]
    assert last.coverage == pytest.approx(search.result_archive.stats.coverage)
    assert last.obj_mean == pytest.approx(search.result_archive.stats.obj_mean, rel=1e-6)


def test_a_run_resumes_with_tf32_switched_and_records_it(tmp_path):
    """TF32 matmuls (and the jacobian mode, graphs, compiling) change scores at rounding
    level only: a run may resume with them switched (e.g. to finish faster, or on another
    device), and each checkpoint records the settings it ran with."""
    import json

    class Killed(Exception):
        pass

    part = QDSearch(scorer(), config("cma_maega", 8, checkpoint_every=4), tmp_path)
    interrupt_at(part, 6, Killed)
    with pytest.raises(Killed):
        part.run(progress=False)
    scoring = json.loads((tmp_path / "config.json").read_text())["config"]["scoring"]
    assert scoring == {"jacobian_mode": "batched", "cuda_graphs": "auto", "tf32_matmul": False,
                       "compile_static": False, "deterministic": False}
    sc = scorer()
    sc.tf32_matmul, sc.jacobian_mode = True, "func"
    search = QDSearch(sc, config("cma_maega", 8, checkpoint_every=4), tmp_path)
    search.run(progress=False)
    assert list(search.metrics().iteration) == list(range(1, 9))
    scoring = json.loads(load_checkpoint(search.checkpoint_path)["config"])["scoring"]
    assert scoring["tf32_matmul"] is True and scoring["jacobian_mode"] == "func"
    # config.json: this session's settings, and the first session's up to the checkpoint
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["config"]["scoring"]["tf32_matmul"] is True
    [first] = record["earlier_sessions"]
    assert first["until"] == 4 and first["config"]["scoring"]["jacobian_mode"] == "batched"
    assert first["versions"] == record["versions"]
    # a reload with the same settings adds no session
    QDSearch(sc, config("cma_maega", 8, checkpoint_every=4), tmp_path).run(progress=False)
    assert json.loads((tmp_path / "config.json").read_text()) == record


def test_a_run_resumes_only_with_the_same_autocast(tmp_path):
    """Half precision moves the scores by more than rounding: a run does not resume (or
    reload) under another ``autocast``; a checkpoint from before autocast was recorded
    counts as float32."""
    import json

    def scorer_with(autocast):
        sc = scorer()
        sc.autocast = autocast
        return sc

    QDSearch(scorer_with(None), config("cma_maega", 5), tmp_path).run(progress=False)
    with pytest.raises(ValueError, match="different settings.*autocast"):
        QDSearch(scorer_with("bfloat16"), config("cma_maega", 5), tmp_path).run(progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pkl")
    cfg = json.loads(state["config"])
    assert cfg["autocast"] is None
    del cfg["autocast"]
    state["config"] = json.dumps(cfg, sort_keys=True)
    (tmp_path / "checkpoint.pkl").write_bytes(pickle.dumps(state))
    with pytest.raises(ValueError, match="autocast"):
        QDSearch(scorer_with("float16"), config("cma_maega", 5), tmp_path).run(progress=False)
    search = QDSearch(scorer_with(None), config("cma_maega", 5), tmp_path)
    search.run(progress=False)  # the finished float32 run, reloaded
    assert search.iteration == 5


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_evaluations_column_counts_every_scored_solution_with_several_emitters(tmp_path,
                                                                              algorithm):
    """evaluations = what the scorer was asked to score (x0='zeros': no prior draws), with
    3 emitters: CMA-MAEGA's gradient step scores one solution per emitter, not one."""
    sc = scorer()
    counted = []
    evaluate = sc.evaluate

    def counting(latents, *args, **kw):
        counted.append(len(latents))
        return evaluate(latents, *args, **kw)

    sc.evaluate = counting
    cfg = config(algorithm, iterations=3, num_emitters=3, batch_size=2, x0="zeros")
    search = QDSearch(sc, cfg, tmp_path)
    search.run(progress=False)
    assert search.metrics()["evaluations"].iloc[-1] == sum(counted)
    assert sum(counted) == 3 * cfg.evaluations_per_iteration


def test_metrics_last_row_is_the_result_archives_stats(tmp_path):
    search = QDSearch(scorer(), config("cma_maega", 5), tmp_path)
    st = search.run(progress=False).stats
    last = search.metrics().iloc[-1]
    assert last["num_elites"] == st.num_elites
    for col in ("coverage", "qd_score", "obj_max", "obj_mean"):
        assert last[col] == pytest.approx(float(getattr(st, col))), col


def test_cma_maega_offers_every_scored_batch_to_the_uniqueness_memory(tmp_path):
    """The gradient step's solutions (ask_dqd) and the branches (ask) both update the memory."""
    sc = PromptScorer(ToyGenerator(prior_std=0.05), ToyClip(), ("good", "bad"),
                      [("a", "b"), ("c", "d")], weights=(1.0, 0.0, 0.2), memory_size=1000)
    batches = []
    remember = sc._remember

    def spy(loss, emb, bad=None):
        batches.append(len(loss))
        remember(loss, emb, bad)

    sc._remember = spy
    QDSearch(sc, config("cma_maega", 3, batch_size=4), tmp_path).run(progress=False)
    assert batches == [1, 4] * 3


def test_checkpoints_hold_only_the_occupied_cells(tmp_path):
    """An archive's arrays hold a row per cell (a paper-scale w+ archive: 9 GB); a checkpoint
    keeps the filled ones, and reads back to the same stores, row for row."""
    from ribs.archives import ArrayStore

    from qdgs_lib.search import _CompactPickler
    from qdgs_lib.utils import BadFileError

    gen = ToyGenerator(latent_dim=256, prior_std=0.05)
    sc = PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")])
    cfg = SearchConfig(dims=(100, 100), ranges=RANGES, iterations=20, sigma0=0.3, lr=0.3,
                       seed=1)
    search = QDSearch(sc, cfg, tmp_path)
    search.run(progress=False)
    full_rows = 2 * 100 * 100 * 256 * 8  # two archives' solution arrays, float64
    size = (tmp_path / "checkpoint.pkl").stat().st_size
    assert size < full_rows / 20, size
    state = load_checkpoint(tmp_path / "checkpoint.pkl")
    for live, back in ((search.scheduler.archive, state["scheduler"].archive),
                       (search.result_archive, state["result_archive"])):
        assert type(back._store) is ArrayStore
        rows = live._store.occupied_list
        assert 0 < len(rows) < 10_000
        np.testing.assert_array_equal(back._store.occupied_list, rows)
        for name, arr in live._store._fields.items():
            np.testing.assert_array_equal(back._store._fields[name][rows], arr[rows])

    with open(tmp_path / "plain.pkl", "wb") as f:  # checkpoints written before: full rows
        pickle.dump(state, f)
    plain = load_checkpoint(tmp_path / "plain.pkl")["result_archive"]._store
    np.testing.assert_array_equal(plain.occupied_list, search.result_archive._store.occupied_list)

    class Forged(_CompactPickler):  # rows that are not the store's occupied cells
        def reducer_override(self, obj):
            out = super().reducer_override(obj)
            if out is not NotImplemented:
                out[2]["_compact_rows"] = out[2]["_compact_rows"][::-1] + 1
            return out

    with open(tmp_path / "forged.pkl", "wb") as f:
        Forged(f).dump({**state, "scheduler": search.scheduler,
                        "result_archive": search.result_archive})
    with pytest.raises(BadFileError, match="compact ArrayStore whose rows do not match"):
        load_checkpoint(tmp_path / "forged.pkl")

    # sizes a small file could ask for: object rows (zeros written out), rows wider than any
    # archive's, a capacity beyond the occupancy flags the file holds
    def object_rows(st):
        st["_fields"] = {k: v.astype(object) for k, v in st["_fields"].items()}

    def wide_rows(st):  # an empty store whose rows would be 8M numbers wide
        cap = st["_props"]["capacity"]
        st["_props"] = {**st["_props"], "occupied": np.zeros(cap, bool), "n_occupied": 0}
        st["_compact_rows"] = np.zeros(0, np.int64)
        st["_fields"] = {k: np.zeros((0, 1 << 23), v.dtype) for k, v in st["_fields"].items()}

    def capacity(st):
        st["_props"] = {**st["_props"], "capacity": 10**9}

    for name, edit in (("object", object_rows), ("wide", wide_rows), ("capacity", capacity)):
        class Abused(_CompactPickler):
            def reducer_override(self, obj, edit=edit):
                out = super().reducer_override(obj)
                if out is not NotImplemented:
                    edit(out[2])
                return out

        with open(tmp_path / f"{name}.pkl", "wb") as f:
            Abused(f).dump({**state, "scheduler": search.scheduler,
                            "result_archive": search.result_archive})
        with pytest.raises(BadFileError, match="compact ArrayStore"):
            load_checkpoint(tmp_path / f"{name}.pkl")


class HoleyGenerator(ToyGenerator):
    """NaN images where z[0] > ``limit``: a generator that breaks in part of its latent space,
    which the searches here reach from a prior of std 0.05 (random sampling: of std 0.2)."""

    limit = 0.25

    def decode(self, z):
        img = super().decode(z)
        z = self.check_latents(z).to(img.device)
        return torch.where((z[:, 0] > self.limit)[:, None, None, None], torch.nan, img)


def holey_scorer(limit=0.25, prior_std=0.05):
    gen = HoleyGenerator(prior_std=prior_std)
    gen.limit = limit
    return PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")])


def _all_rows(search):
    """Both archives' elites, for checks on every stored row."""
    frames = [search.result_archive.data(return_type="pandas")]
    if search.scheduler is not None:
        frames.append(search.scheduler.archive.data(return_type="pandas"))
    return pd.concat(frames)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_skip_nonfinite_leaves_nan_solutions_out_of_every_archive(tmp_path, algorithm):
    """A generator with a NaN region stops a search at its first NaN image; with
    skip_nonfinite the search runs through, no archive holds a solution of that region, and
    CMA-MAEGA's gradient points that fall into it restart at elites."""
    prior_std = 0.2 if algorithm == "random" else 0.05  # (random: only the prior's draws)
    with pytest.raises(NonFiniteScoresError, match="skip_nonfinite=True"):
        QDSearch(holey_scorer(prior_std=prior_std), config(algorithm, 150),
                 tmp_path / "stops").run(progress=False)
    search = QDSearch(holey_scorer(prior_std=prior_std),
                      config(algorithm, 150, skip_nonfinite=True), tmp_path / "skips")
    with pytest.warns(UserWarning, match=r"solutions scored NaN/inf .* were skipped"):
        search.run(progress=False)
    assert search.skipped > 10
    rows = _all_rows(search)
    assert len(rows) > 20 and (rows["solution_0"] <= 0.25).all()
    assert np.isfinite(rows.filter(regex="objective|measures").to_numpy()).all()
    assert np.isfinite(read_archive(tmp_path / "skips" / "archive.parquet")
                       .filter(regex="objective|measures").to_numpy()).all()
    if algorithm == "cma_maega":
        assert search.scheduler.emitters[0].restarts > 0
    plain = QDSearch(scorer(), config(algorithm, 5), tmp_path / "plain")
    plain.run(progress=False)
    summary = archive_summary({"skips": search, "plain": plain})
    assert summary["skipped"].tolist() == [search.skipped, 0]
    assert "skipped" not in archive_summary({"plain": plain}).columns


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_skip_nonfinite_changes_nothing_where_every_image_is_finite(tmp_path, algorithm):
    runs = [QDSearch(scorer(), config(algorithm, 80, skip_nonfinite=skip), tmp_path / str(skip))
            for skip in (False, True)]
    for run in runs:
        run.run(progress=False)
    a, b = (read_archive(r.outdir / "archive.parquet") for r in runs)
    pd.testing.assert_frame_equal(a, b, check_exact=True)  # bitwise
    pd.testing.assert_frame_equal(*(r.metrics().drop(columns="seconds") for r in runs),
                                  check_exact=True)
    assert runs[1].skipped == 0


def test_a_skipping_run_resumes_as_one_run(tmp_path):
    """Skipped counts, restarts and archives survive an interruption; and a run that stopped
    at a NaN image resumes with skip_nonfinite switched on, as if it had skipped from the
    start."""
    def cfg(**kw):
        return config("cma_maega", 60, checkpoint_every=20, skip_nonfinite=True, **kw)

    full = QDSearch(holey_scorer(0.4), cfg(), tmp_path / "full")
    full.run(progress=False)

    class Killed(Exception):
        pass

    part = QDSearch(holey_scorer(0.4), cfg(), tmp_path / "part")
    interrupt_at(part, 47, Killed)
    with pytest.raises(Killed):
        part.run(progress=False)
    resumed = QDSearch(holey_scorer(0.4), cfg(), tmp_path / "part")
    resumed.run(progress=False)
    assert resumed.skipped == full.skipped > 0
    assert resumed.scheduler.emitters[0].restarts == full.scheduler.emitters[0].restarts
    pd.testing.assert_frame_equal(read_archive(tmp_path / "full" / "archive.parquet"),
                                  read_archive(tmp_path / "part" / "archive.parquet"))

    # cma_mae with this generator meets its first NaN at iteration 8
    stopped = QDSearch(holey_scorer(0.4), config("cma_mae", 40, checkpoint_every=1),
                       tmp_path / "stopped")
    with pytest.raises(NonFiniteScoresError):
        stopped.run(progress=False)
    assert stopped.iteration > 2
    on = QDSearch(holey_scorer(0.4), config("cma_mae", 40, skip_nonfinite=True),
                  tmp_path / "stopped")
    on.run(progress=False)
    fresh = QDSearch(holey_scorer(0.4), config("cma_mae", 40, skip_nonfinite=True),
                     tmp_path / "fresh")
    fresh.run(progress=False)
    pd.testing.assert_frame_equal(read_archive(tmp_path / "stopped" / "archive.parquet"),
                                  read_archive(tmp_path / "fresh" / "archive.parquet"))
    assert json.loads((tmp_path / "stopped" / "config.json").read_text()
                      )["config"]["skip_nonfinite"] is True


def test_a_gradient_point_without_an_elite_to_restart_at_stops_the_search(tmp_path):
    """A NaN at the first gradient point (the start, scored before any solution entered the
    archive) has no elite to restart at: the error says so and what to change."""
    search = QDSearch(holey_scorer(0.4), config("cma_maega", 5, skip_nonfinite=True,
                                                x0="zeros"), tmp_path)
    search.scorer.generator.limit = -1.0  # every latent with z[0] > -1: the start too
    with pytest.raises(NonFiniteScoresError, match="no elite to restart at"):
        search.run(progress=False)


def test_skip_nonfinite_is_a_profile_key():
    from qdgs_lib.profiles import get_profile

    assert not SearchConfig.from_profile(get_profile("smoke", "faces"), "cma_maega").skip_nonfinite
    p = get_profile("smoke", "faces", skip_nonfinite=True)
    assert SearchConfig.from_profile(p, "cma_maega").skip_nonfinite
    with pytest.raises(ValueError, match="skip_nonfinite"):
        get_profile("smoke", "faces", skip_nonfinite="yes")


def _asked_with_one_elite(algorithm):
    """A seeded scheduler (one emitter, batch 4) with one elite to restart at, after ask()."""
    from qdgs_lib.search import make_result_archive, make_scheduler

    cfg = config(algorithm, 10, seed=3)
    sch = make_scheduler(4, cfg, np.zeros(4), make_result_archive(4, cfg))
    sch.archive.add(np.full((1, 4), 0.01), np.array([1.0]), np.array([[0.15, 1.0]]))
    if algorithm == "cma_maega":
        sch.ask_dqd()
        sch.tell_dqd(np.array([0.0]), np.array([[-0.4, 0.1]]), np.ones((1, 3, 4)))
    sch.ask()
    return sch


def test_skipped_rows_leave_pyribs_restarts_as_on_the_scored_rows(tmp_path):
    """An emitter all of whose solutions are skipped restarts at an elite (a flat batch, as
    pyribs restarts a stalled emitter) instead of sampling the NaN region for good; and a
    skipped row does not hide a flat batch of scored ones from pyribs' stop check."""
    from qdgs_lib.search import _tell_skipping

    search = QDSearch(holey_scorer(0.1), config("cma_mae", 20, skip_nonfinite=True,
                                                x0="zeros"), tmp_path)
    search.run(progress=False)
    emitter = search.scheduler.emitters[0]
    emitter._opt.mean, emitter._opt.sigma = np.array([0.6, 0.0, 0.0, 0.0]), 0.05  # in it
    before = search.skipped
    for _ in range(40):
        search._step()
        search.iteration += 1
    assert emitter.restarts >= 1 and search.skipped - before < 20, search.skipped - before

    for algorithm in ("cma_mae", "cma_maega"):
        restarts = []
        for skipped in (False, True):
            sch = _asked_with_one_elite(algorithm)
            objective, meas = np.zeros(4), np.tile([[-0.4, 0.1]], (4, 1))  # all floored at 0
            bad = np.array([False, False, False, skipped])
            objective[bad], meas[bad] = np.nan, np.nan
            _tell_skipping(sch, objective, meas, bad)
            restarts.append(sch.emitters[0].restarts)
        assert restarts == [1, 1], (algorithm, restarts)

    # one scored row (and three skipped) is no flat batch: pyribs judges flatness on two or more
    for algorithm in ("cma_mae", "cma_maega"):
        sch = _asked_with_one_elite(algorithm)
        bad = np.array([False, True, True, True])
        _tell_skipping(sch, np.where(bad, np.nan, 50.0), np.tile([[-0.4, 0.1]], (4, 1)), bad)
        assert sch.emitters[0].restarts == 0, algorithm


@pytest.mark.parametrize("x0", ["prior_best", "released"])
def test_skip_nonfinite_covers_the_start_draws(tmp_path, x0):
    # the hole at z0 > 0.1 (2 prior sigmas): a few of the 64 start draws are NaN
    search = QDSearch(holey_scorer(0.1), config("cma_mae", 5, x0=x0, skip_nonfinite=True),
                      tmp_path / "some")
    search.run(progress=False)
    assert search.start_latent()[0] <= 0.1
    search = QDSearch(holey_scorer(-1.0), config("cma_mae", 5, x0=x0, skip_nonfinite=True),
                      tmp_path / "all")
    with pytest.raises(NonFiniteScoresError, match="all 64 prior draws .* none is left"):
        search.run(progress=False)


def test_a_search_whose_every_solution_was_skipped_says_so(tmp_path):
    search = QDSearch(holey_scorer(0.1), config("cma_me", 12, batch_size=1, x0="zeros",
                                                skip_nonfinite=True), tmp_path)
    with pytest.raises(ValueError, match=r"1 solutions so far scored NaN/inf and were skipped"
                                         r".*best none scored"):
        search.run(progress=False)


def test_a_fresh_start_on_the_same_object_counts_skips_afresh(tmp_path):
    class Killed(Exception):
        pass

    def cfg():
        return config("cma_mae", 40, checkpoint_every=100, skip_nonfinite=True)

    ref = QDSearch(holey_scorer(0.4), cfg(), tmp_path / "ref")
    ref.run(progress=False)
    again = QDSearch(holey_scorer(0.4), cfg(), tmp_path / "again")
    step = again._step
    interrupt_at(again, 30, Killed)  # before the first checkpoint
    with pytest.raises(Killed):
        again.run(progress=False)
    assert again.skipped > 0
    again._step = step
    again.run(progress=False)
    assert again.skipped == ref.skipped == load_checkpoint(
        tmp_path / "again" / "checkpoint.pkl")["skipped"]


@pytest.mark.parametrize("algorithm", ["cma_maega", "cma_mae", "cma_me"])
def test_skipped_rows_reach_each_emitter_as_not_added_below_its_scored_rows(algorithm):
    """What the emitters are told: a skipped row has status 0 and an improvement just below
    the lowest of its own emitter's scored rows (per emitter, for two of them)."""
    from qdgs_lib.search import _tell_skipping, make_result_archive, make_scheduler

    cfg = config(algorithm, 10, seed=3, num_emitters=2)
    sch = make_scheduler(4, cfg, np.zeros(4), make_result_archive(4, cfg))
    told = []
    for emitter in sch.emitters:
        emitter.tell = (lambda tell: lambda *a, add_info, **kw: (
            told.append({k: v.copy() for k, v in add_info.items()}),
            tell(*a, add_info=add_info, **kw)))(emitter.tell)
    if algorithm == "cma_maega":
        sch.ask_dqd()
        sch.tell_dqd(np.array([0.5, 0.5]), np.array([[-0.4, 0.1]] * 2), np.ones((2, 3, 4)))
    sols = sch.ask()
    rng = np.random.default_rng(0)
    objective = rng.uniform(-1, 2, 8)
    meas = rng.uniform((-0.5, 0.0), (0.2, 1.1), (8, 2))
    bad = np.array([True, False, False, True, False, False, False, True])
    objective[bad] = np.nan
    _tell_skipping(sch, objective, meas, bad)
    assert len(told) == 2
    for info, rows in zip(told, (bad[:4], bad[4:]), strict=True):
        assert (info["status"][rows] == 0).all()
        assert (info["value"][rows] < info["value"][~rows].min()).all()
        assert np.isfinite(info["value"]).all()
    for archive in (sch.archive, sch.result_archive):
        stored = archive.data("solution")
        assert len(stored) and not any((stored == row).all(1).any() for row in sols[bad])


def test_gradient_points_restart_up_to_a_limit_and_rescore_without_the_memory(tmp_path):
    """Restarted gradient points are rescored without a second memory update (each scoring
    call of an iteration offers one embedding); a generator that fails everywhere after a
    while exhausts the restarts with an error that says so."""
    sc = holey_scorer(0.25)
    sc.weights = (1.0, 0.0, 0.2)  # the uniqueness memory on
    calls = []
    remember = sc._remember
    sc._remember = lambda *a: (calls.append(1), remember(*a))[1]
    search = QDSearch(sc, config("cma_maega", 60, skip_nonfinite=True), tmp_path)
    search.run(progress=False)
    assert search.scheduler.emitters[0].restarts > 0 and len(calls) == 2 * 60
    search.cfg.iterations = 80
    sc.generator.limit = -np.inf  # NaN everywhere from now on: at every elite too
    with pytest.raises(NonFiniteScoresError, match="also after 10 restarts at elites"):
        search.run(progress=False)
