"""The objective's terms, the uniqueness memory and the search's setup, checked against
numbers computed here from their definitions (scoring.py's module docstring, search.py)."""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ribs.archives import GridArchive
from ribs.emitters.rankers import ImprovementRanker, TwoStageImprovementRanker
from toys import ToyClip, ToyGenerator, interrupt_at

from qdgs_lib.scoring import PromptScorer
from qdgs_lib.search import (
    QDSearch,
    SearchConfig,
    export_archive,
    load_checkpoint,
    make_result_archive,
    make_scheduler,
    read_archive,
    solutions,
)

RANGES = ((-0.5, 0.2), (0.0, 1.1))


def make_scorer(weights=(1.0, 0.0, 0.0), objective=("good", "bad"), memory_size=100,
                generator=None):
    return PromptScorer(generator or ToyGenerator(), ToyClip(), objective,
                        [("a", "b"), ("c", "d")], weights=weights, memory_size=memory_size)


def embed(sc, z) -> np.ndarray:
    """Unit image embeddings (B, D) of latents, in float64."""
    z = torch.as_tensor(np.asarray(z), dtype=torch.float32)
    with torch.no_grad():
        return sc.clip.encode_image(sc.generator.decode(z)).double().numpy()


def angles(sc, emb: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Angles (B, P) between image embeddings and the prompts' text embeddings (arccos)."""
    text = sc.clip.encode_text(prompts).double().numpy()
    return np.arccos(np.clip(emb @ text.T, -1, 1))


def with_norm(direction, norm) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64)
    return (d / np.linalg.norm(d) * norm)[None]


def config(algorithm, iterations=3, **kw):
    kw = {"sigma0": 0.3, "lr": 0.3, "seed": 1, **kw}
    return SearchConfig(dims=(10, 10), ranges=RANGES, algorithm=algorithm,
                        iterations=iterations, **kw)


def scheduler_for(algorithm, **kw):
    cfg = config(algorithm, **kw)
    return make_scheduler(4, cfg, np.zeros(4), make_result_archive(4, cfg))


# --- the objective loss ---------------------------------------------------------------------
def test_latent_norm_penalty_is_the_squared_excess_over_latent_norm():
    """Catches a dropped latent-norm penalty, or clamp(max=q) instead of clamp(min=q)."""
    sc = make_scorer(weights=(0.0, 1.0, 0.0))
    q = sc.generator.latent_norm
    for norm in (q + 0.7, 2.5 * q):
        loss = sc.evaluate(with_norm([1, -2, 0.5, 1], norm), update_memory=False).loss
        np.testing.assert_allclose(loss, [(norm - q) ** 2], rtol=1e-5)
    for norm in (0.0, 0.5 * q):  # inside the latent-norm ball: no penalty
        loss = sc.evaluate(with_norm([1, -2, 0.5, 1], norm), update_memory=False).loss
        np.testing.assert_allclose(loss, [0.0], atol=1e-7)


def test_uniqueness_term_uses_the_nearest_memory_embedding():
    """Catches ``uniqueness`` instead of ``1 - uniqueness``, and mean instead of min."""
    sc = make_scorer(weights=(0.0, 0.0, 0.7))
    z = np.random.default_rng(0).normal(0, 0.3, (1, 4))
    own = embed(sc, z)[0]
    far = F.normalize(torch.randn(3, own.size, generator=torch.Generator().manual_seed(5)),
                      dim=-1).double().numpy()
    sc.memory = torch.as_tensor(np.stack([far[0], own, -own, far[1], far[2]]),
                                dtype=torch.float32)
    assert np.arccos(np.clip(far @ own, -1, 1)).min() > 0.3  # the far ones are far
    loss = sc.evaluate(z, update_memory=False).loss
    np.testing.assert_allclose(loss, [0.7 * (1 - 0.0)], atol=1e-5)


def test_prompt_term_scales_with_its_weight():
    """Catches a dropped w_prompt factor."""
    z = np.random.default_rng(1).normal(0, 0.5, (5, 4))
    one = make_scorer(weights=(1.0, 0.0, 0.0)).evaluate(z, update_memory=False).loss
    two = make_scorer(weights=(2.0, 0.0, 0.0)).evaluate(z, update_memory=False).loss
    assert np.abs(one).min() > 1e-3
    np.testing.assert_allclose(two, 2 * one, rtol=1e-5)


def test_prompt_gap_averages_over_negative_alternatives():
    """Catches min (or another reduction) instead of mean over the negative prompt's
    alternatives."""
    sc = make_scorer(objective=("good", "bad | awful"))
    z = np.random.default_rng(2).normal(0, 0.5, (6, 4))
    emb = embed(sc, z)
    neg = angles(sc, emb, ["bad", "awful"])
    assert np.abs(neg[:, 0] - neg[:, 1]).min() > 1e-2  # min and mean differ here
    expected = angles(sc, emb, ["good"])[:, 0] - (neg[:, 0] + neg[:, 1]) / 2
    np.testing.assert_allclose(sc.evaluate(z, update_memory=False).loss, expected, atol=1e-4)


def test_loss_to_objective_is_softplus_with_beta_one_tenth():
    """Catches another softplus beta (1 instead of 0.1)."""
    loss = np.array([-1.0, 0.0, 1.0, 1.9, 2.0, 2.5, 4.0])
    x = 100 - 50 * loss
    expected = 10 * np.log1p(np.exp(0.1 * x))  # softplus_beta(x) = log(1 + e^(beta x)) / beta
    got = PromptScorer.loss_to_objective(torch.as_tensor(loss)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9)


# --- the uniqueness memory ------------------------------------------------------------------
def test_memory_keeps_the_newest_embeddings_in_order():
    """Catches a FIFO that keeps the oldest embeddings instead of the newest."""
    sc = make_scorer(weights=(0.0, 1.0, 1e-6), memory_size=3)
    zs = np.random.default_rng(3).normal(0, 0.05, (5, 1, 4))  # well inside the norm ball
    for z in zs:
        assert sc.evaluate(z).loss[0] < 1
    np.testing.assert_allclose(sc.memory.double().numpy(), embed(sc, zs[2:, 0]), atol=1e-6)


def test_memory_takes_only_embeddings_with_loss_below_one():
    """Catches another "good" threshold than loss < 1."""
    sc = make_scorer(weights=(1.0, 0.0, 0.2), memory_size=5)
    emb = F.normalize(torch.randn(3, sc.memory.shape[1],
                                  generator=torch.Generator().manual_seed(0)), dim=-1)
    for loss in ([1.0, 1.5, 1.99], [1.0, 3.0, 2.0], [1.0, 1.0, 1.0]):
        sc._remember(torch.tensor(loss), emb)
        assert len(sc.memory) == 0, loss
    sc._remember(torch.tensor([1.0, 0.99, 1.5]), emb)  # only row 1 is good
    assert torch.equal(sc.memory, emb[1:2])


def test_memory_update_through_evaluate_follows_the_loss():
    """Catches another "good" threshold than loss < 1, through evaluate's losses."""
    sc = make_scorer(weights=(0.0, 1.0, 1e-6), memory_size=5)
    q = sc.generator.latent_norm
    bad = np.concatenate([with_norm([1, 2, 3, 4], q + 1.2), with_norm([-1, 0, 1, 0], q + 3)])
    assert (sc.evaluate(bad).loss >= 1).all() and len(sc.memory) == 0
    good = with_norm([1, 0, -1, 2], q + 0.9)  # loss 0.81
    assert sc.evaluate(good).loss[0] < 1 and len(sc.memory) == 1


class NoisyToyGenerator(ToyGenerator):
    """A toy generator with per-call random noise from torch's global RNG, as StyleGAN2's
    ``noise_mode='random'``."""

    noise_mode = "random"

    def decode(self, z):
        images = super().decode(z)
        return (images + 0.05 * torch.randn(images.shape)).clamp(0, 1)


def test_reset_repeats_a_stochastic_scorers_first_call():
    """Catches a reset() that does not reseed the per-call random stream."""
    sc = make_scorer(generator=NoisyToyGenerator())
    assert sc.stochastic
    z = np.random.default_rng(4).normal(0, 0.3, (3, 4))
    first = sc.evaluate(z).objective
    assert not np.array_equal(sc.evaluate(z).objective, first)  # the noise differs per call
    sc.reset()
    np.testing.assert_array_equal(sc.evaluate(z).objective, first)


# --- the search's setup ---------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["cma_maega", "cma_mae", "cma_me", "map_elites"])
def test_annealing_archive_only_for_cma_mae_variants(algorithm):
    """Catches a dropped archive learning_rate / threshold_min (CMA-MAEGA would silently be
    CMA-MEGA)."""
    archive = scheduler_for(algorithm, archive_learning_rate=0.1, threshold_min=-3.0).archive
    if algorithm in ("cma_maega", "cma_mae"):
        assert archive.learning_rate == 0.1 and archive.threshold_min == -3.0
    else:  # a plain elitist archive
        assert archive.learning_rate == 1.0 and archive.threshold_min == -np.inf


@pytest.mark.parametrize("algorithm, ranker", [("cma_maega", ImprovementRanker),
                                               ("cma_mae", ImprovementRanker),
                                               ("cma_me", TwoStageImprovementRanker)])
def test_emitters_rank_as_their_algorithm(algorithm, ranker):
    """Catches a swapped ranker: CMA-MAE(GA) ranks by improvement ("imp", as in pyribs'
    CMA-MAE setup), CMA-ME by two-stage improvement ("2imp")."""
    for emitter in scheduler_for(algorithm, num_emitters=2).emitters:
        assert type(emitter._ranker) is ranker


@pytest.mark.parametrize("algorithm", ["cma_mae", "cma_me", "map_elites"])
def test_emitters_have_their_own_seeds(algorithm):
    """Catches every emitter seeded alike (they would all ask the same solutions)."""
    a, b = scheduler_for(algorithm, num_emitters=2).emitters
    assert not np.allclose(a.ask(), b.ask())


def test_cma_maega_emitters_have_their_own_seeds():
    """Catches CMA-MAEGA emitters seeded alike: told the same scores at the same start, their
    first branches would coincide."""
    scheduler = scheduler_for("cma_maega", num_emitters=2)
    sols = scheduler.ask_dqd()
    assert np.array_equal(sols[0], sols[1])  # both start at x0
    jac = np.repeat(np.random.default_rng(0).normal(size=(1, 3, 4)), len(sols), axis=0)
    scheduler.tell_dqd(np.ones(len(sols)), np.zeros((len(sols), 2)), jac)
    a, b = (e.ask() for e in scheduler.emitters)
    assert not np.allclose(a, b)


def test_prior_best_starts_at_the_best_prior_sample(tmp_path):
    """Catches the start latent taken as argmin instead of argmax of the objective."""
    sc = make_scorer()
    cfg = config("cma_maega", x0_samples=16, seed=3)
    z = sc.generator.sample_prior(16, seed=3).numpy()
    emb = embed(sc, z)
    # weights (1, 0, 0): the objective falls with the loss, the prompt gap
    gap = angles(sc, emb, ["good"])[:, 0] - angles(sc, emb, ["bad"])[:, 0]
    assert np.sort(gap)[1] - np.sort(gap)[0] > 1e-4  # a unique best
    start = QDSearch(sc, cfg, tmp_path).start_latent()
    np.testing.assert_allclose(start, z[np.argmin(gap)], rtol=1e-6)


def test_random_search_draws_new_latents_each_iteration(tmp_path):
    """Catches random sampling reusing one seed every iteration."""
    sc = make_scorer()
    seen = []
    evaluate = sc.evaluate
    sc.evaluate = lambda z, **kw: (seen.append(np.array(z)), evaluate(z, **kw))[1]
    QDSearch(sc, config("random", iterations=2), tmp_path).run(progress=False)
    assert len(seen) == 2 and seen[0].shape == seen[1].shape
    assert not np.allclose(seen[0], seen[1])


def test_resume_with_another_seed_is_refused(tmp_path):
    """Catches a resume that ignores a different ``seed``."""
    QDSearch(make_scorer(), config("cma_maega", seed=1), tmp_path).run(progress=False)
    with pytest.raises(ValueError, match=r"different settings \(seed\)"):
        QDSearch(make_scorer(), config("cma_maega", seed=2), tmp_path).run(progress=False)


def test_solutions_keeps_numeric_column_order(tmp_path):
    """Catches solution columns sorted as text (solution_10 before solution_2)."""
    archive = GridArchive(solution_dim=12, dims=(4,), ranges=((0, 1),), seed=0)
    sols = np.arange(3 * 12, dtype=np.float64).reshape(3, 12)
    archive.add(sols, np.ones(3), np.array([[0.1], [0.4], [0.9]]))
    df = read_archive(export_archive(archive, tmp_path / "a.parquet"))
    got = solutions(df.sort_values("measures_0"))
    np.testing.assert_array_equal(got, sols)


def test_resume_continues_the_checkpoints_seconds(tmp_path):
    """Catches ``seconds`` not restored on resume (the clock would restart at 0)."""
    cfg = config("cma_maega", iterations=6, checkpoint_every=3)

    class Killed(Exception):
        pass

    part = QDSearch(make_scorer(), cfg, tmp_path)
    interrupt_at(part, 4, Killed)
    with pytest.raises(Killed):
        part.run(progress=False)
    path = tmp_path / "checkpoint.pkl"
    state = load_checkpoint(path)
    assert state["iteration"] == 3
    state["seconds"] = 1000.0
    path.write_bytes(pickle.dumps(state))
    resumed = QDSearch(make_scorer(), cfg, tmp_path)
    resumed.run(progress=False)
    m = resumed.metrics()
    assert list(m["iteration"]) == list(range(1, 7))
    after = m["seconds"].to_numpy()[3:]
    assert (after >= 1000).all() and (after < 1000 + 60).all() and (np.diff(after) >= 0).all()
