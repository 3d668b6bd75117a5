"""The paper profile's settings from the released code (github.com/Cylumn/qd-generative-sampling):
its shapes VAE file, w+ latents, the penalty scale, the start draws, the parents rule and its
latent augmentations file, each in its real format (files written here, random weights)."""

import dataclasses
import json
import os
import pickle
import types

import numpy as np
import pytest
import torch
from PIL import Image
from test_stylegan2 import small_net
from toys import ToyClip, ToyGenerator

from qdgs_lib.face_synthesis import latent_offsets, load_latent_offsets
from qdgs_lib.generators.shapes_vae import ReleasedShapesVAE, load_released_shapes_vae
from qdgs_lib.generators.stylegan2 import StyleGAN2Generator
from qdgs_lib.plumbing import write_latent_augmentations, write_released_shapes_vae
from qdgs_lib.profiles import get_profile
from qdgs_lib.scoring import PromptScorer, Scores, angdist
from qdgs_lib.search import (
    CHECKPOINT,
    QDSearch,
    SearchConfig,
    load_checkpoint,
    make_result_archive,
    make_scheduler,
)
from qdgs_lib.utils import BadFileError

# the released vae-shapes.pt's state dict, as read from the file (sha256 acc1d152...)
RELEASED_VAE_SHAPES = {
    "encoder.conv1.weight": (16, 3, 3, 3), "encoder.conv1.bias": (16,),
    "encoder.conv2.weight": (32, 16, 3, 3), "encoder.conv2.bias": (32,),
    "encoder.conv3.weight": (32, 32, 3, 3), "encoder.conv3.bias": (32,),
    "encoder.fc_mu.weight": (6, 8192), "encoder.fc_mu.bias": (6,),
    "encoder.fc_logvar.weight": (6, 8192), "encoder.fc_logvar.bias": (6,),
    "decoder.fc1.weight": (8192, 6), "decoder.fc1.bias": (8192,),
    "decoder.convT1.weight": (32, 32, 4, 4), "decoder.convT1.bias": (32,),
    "decoder.convT2.weight": (32, 16, 4, 4), "decoder.convT2.bias": (16,),
    "decoder.convT3.weight": (16, 3, 4, 4), "decoder.convT3.bias": (3,),
}


# --- the released shapes VAE ------------------------------------------------------------------
def test_released_vae_has_the_released_files_parameters_and_loads_it(tmp_path):
    model = ReleasedShapesVAE()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == RELEASED_VAE_SHAPES
    write_released_shapes_vae(tmp_path / "vae-shapes.pt", seed=3)
    loaded = load_released_shapes_vae(tmp_path / "vae-shapes.pt", device="cpu")
    torch.manual_seed(3)
    want = ReleasedShapesVAE()  # the same seeded initialisation the file holds
    z = loaded.sample_prior(5, seed=1)
    assert z.shape == (5, 6) and torch.equal(z, loaded.sample_prior(5, seed=1))
    images = loaded.decode(z)
    assert images.shape == (5, 3, 128, 128) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, want.eval().decode(z))
    mu, logvar = loaded.encode(images)
    assert mu.shape == logvar.shape == (5, 6)


def test_released_vae_refuses_what_is_not_its_state_dict(tmp_path):
    with pytest.raises(FileNotFoundError, match="Cylumn/qd-generative-sampling.*"
                                                "data/pretrained/vae-shapes.pt"):
        load_released_shapes_vae(tmp_path / "missing.pt", device="cpu")
    state = ReleasedShapesVAE().state_dict()
    cases = {
        "list": ([1, 2], "not the released shapes VAE's state dict"),
        "keys": ({"conv.weight": torch.zeros(1)}, "not the released shapes VAE's state dict"),
        "shape": ({**state, "encoder.fc_mu.weight": torch.zeros(8, 8192)},
                  "encoder.fc_mu.weight has shape \\(8, 8192\\).*\\(6, 8192\\)"),
        "nan": ({**state, "decoder.fc1.bias": torch.full((8192,), float("nan"))}, "NaN"),
    }
    for name, (obj, match) in cases.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        with pytest.raises(ValueError, match=match):
            load_released_shapes_vae(tmp_path / f"{name}.pt", device="cpu")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_released_vae_never_runs_code_from_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as f:
        pickle.dump({"encoder.conv1.weight": _Payload()}, f)
    with pytest.raises(BadFileError, match="cannot read it as the released shapes VAE"):
        load_released_shapes_vae("evil.pt", device="cpu")
    assert not (tmp_path / "pwned").exists()


def test_paper_profiles_pick_the_released_vae_by_suffix(tmp_path, monkeypatch):
    from qdgs_lib.shapes_poc import build_generator

    own = build_generator(get_profile("smoke", "shapes"), "cpu")  # None: the project's VAE
    assert type(own).__name__ == "ShapesVAE"
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    write_released_shapes_vae(tmp_path / "pretrained" / "vae-shapes.pt")
    p = get_profile("paper", "shapes")
    assert p["shapes_vae"] == "pretrained/vae-shapes.pt"
    assert isinstance(build_generator(p, "cpu"), ReleasedShapesVAE)


# --- StyleGAN2 in w+ --------------------------------------------------------------------------
def test_w_plus_latents_give_each_layer_its_own_w():
    net = small_net()
    w, wp = (StyleGAN2Generator(net, num_std_samples=500, latent_space=s) for s in ("w", "w+"))
    assert wp.latent_dim == net.num_ws * w.latent_dim
    assert wp.latent_norm == pytest.approx(w.latent_norm * net.num_ws**0.5)
    z, zp = w.sample_prior(3, seed=2), wp.sample_prior(3, seed=2)
    # a prior w+ latent repeats the w on every layer: the same images, to the bit
    assert torch.equal(zp.view(3, net.num_ws, -1), z[:, None].expand(-1, net.num_ws, -1))
    assert torch.equal(wp.decode(zp), w.decode(z))
    # layers apart: the last layers' own w changes the image (w-space cannot express this)
    moved = zp.clone().view(3, net.num_ws, -1)
    moved[:, -2:] += 1.0
    assert not torch.allclose(wp.decode(moved.view(3, -1)), wp.decode(zp))
    # and every layer's part of the latent reaches the image
    q = zp[:1].clone().requires_grad_(True)
    wp.decode(q).sum().backward()
    assert (q.grad.view(net.num_ws, -1).abs().sum(1) > 0).all()
    with pytest.raises(ValueError, match="latent_space must be 'w'"):
        StyleGAN2Generator(net, num_std_samples=500, latent_space="z")


def test_truncated_prior_draws_are_psi_times_the_latent():
    gen = StyleGAN2Generator(small_net(), num_std_samples=500, latent_space="w+")
    z, zt = gen.sample_prior(4, seed=5), gen.sample_prior(4, seed=5, truncation_psi=0.7)
    torch.testing.assert_close(zt, 0.7 * z, rtol=1e-5, atol=1e-5)


# --- the objective's penalty scale ------------------------------------------------------------
def test_the_latent_norm_penalty_starts_at_its_scale():
    gen = ToyGenerator(prior_std=0.3)
    make = lambda scale: PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b")],  # noqa: E731
                                      weights=(1.0, 0.5, 0.0), latent_norm_scale=scale)
    z = gen.sample_prior(1, seed=0)
    z = z / z.norm() * 0.75 * gen.latent_norm  # between half and all of the typical norm
    full, half = make(1.0).evaluate(z.numpy()), make(0.5).evaluate(z.numpy())
    penalty = 0.5 * (0.25 * gen.latent_norm) ** 2
    assert half.loss[0] - full.loss[0] == pytest.approx(penalty, rel=1e-4)
    assert make(0.5).settings()["latent_norm_scale"] == 0.5
    for bad in (0, -1, float("inf"), "half"):
        with pytest.raises(ValueError, match="latent_norm_scale must be a finite number > 0"):
            make(bad)


def test_unclamped_images_are_scored_as_the_released_faces_were():
    """clamp_images False: CLIP sees (x + 1) / 2 of StyleGAN2's raw output, overshoot and its
    gradients included; values, jacobians and the per-output scheme agree."""
    from qdgs_lib.clip import create_clip

    gen = StyleGAN2Generator(small_net(), num_std_samples=500, latent_space="w+")
    clip = create_clip("qdgs-faces-clip", pretrained=False)
    z = gen.sample_prior(3, seed=0)
    raw = gen.decode_unclamped(z)
    assert raw.min() < 0 or raw.max() > 1  # this random network overshoots
    assert torch.equal(gen.decode(z), raw.clamp(0, 1))
    make = lambda clamp: PromptScorer(gen, clip, ("good", "bad"), [("a", "b")],  # noqa: E731
                                      weights=(1.0, 0.5, 0.0), clamp_images=clamp)
    unclamped, clamped = make(False), make(True)
    s = unclamped.evaluate(z.numpy(), jacobian=True)
    emb = clip.encode_image(raw, check=False)
    want = -(angdist(emb, clip.encode_text(["a"])).mean(1)
             - angdist(emb, clip.encode_text(["b"])).mean(1))
    np.testing.assert_allclose(s.measures[:, 0], want.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(s.measures, clamped.evaluate(z.numpy()).measures, rtol=0, atol=1e-7)
    per_output = unclamped.evaluate_per_output(z.numpy())
    np.testing.assert_allclose(s.jacobian, per_output.jacobian, rtol=1e-3, atol=1e-5)
    assert unclamped.settings()["clamp_images"] is False
    assert clamped.settings()["clamp_images"] is True
    with pytest.raises(ValueError, match="has no decode_unclamped"):
        PromptScorer(ToyGenerator(), ToyClip(), ("good", "bad"), [("a", "b")],
                     clamp_images=False)
    assert get_profile("paper", "faces")["clamp_images"] is False
    assert get_profile("default", "faces")["clamp_images"] is True


# --- the search's start and parents -----------------------------------------------------------
def _scorer(gen=None, weights=(1.0, 0.0, 0.0)):
    return PromptScorer(gen or ToyGenerator(prior_std=0.05), ToyClip(), ("good", "bad"),
                        [("a", "b"), ("c", "d")], weights=weights)


def _cfg(**kw):
    return SearchConfig(**{"dims": (10, 10), "ranges": ((-0.5, 0.2), (0.0, 1.1)),
                           "iterations": 5, "sigma0": 0.3, "lr": 0.3, "seed": 1, **kw})


def test_selection_rule_and_start_truncation_are_checked_and_reach_pyribs(tmp_path):
    for bad in ({"selection_rule": "best"}, {"x0_truncation": 0.0}, {"x0_truncation": 1.5}):
        with pytest.raises(ValueError, match="selection_rule must be|x0_truncation must be"):
            _cfg(**bad)
    for rule in ("mu", "filter"):
        cfg = _cfg(selection_rule=rule)
        sched = make_scheduler(4, cfg, np.zeros(4), make_result_archive(4, cfg))
        assert sched.emitters[0]._selection_rule == rule
    # a generator without truncation: a clear error, not a silent untruncated start
    with pytest.raises(ValueError, match="x0_truncation=0.7 needs a generator whose "
                                         "sample_prior takes truncation_psi"):
        QDSearch(_scorer(), _cfg(x0_truncation=0.7), tmp_path / "toy").start_latent()


def test_the_start_is_the_best_of_truncated_draws(tmp_path):
    gen = StyleGAN2Generator(small_net(), num_std_samples=500, latent_space="w+")
    scorer = PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b")])
    target = torch.linspace(-1, 1, gen.latent_dim)  # (ToyClip reads 8 x 8 images: a stand-in)
    scorer.evaluate = lambda z, **kw: Scores(
        objective=-np.linalg.norm(np.asarray(z) - target.numpy(), axis=1),
        measures=np.zeros((len(z), 1)), loss=np.linalg.norm(np.asarray(z), axis=1))
    search = QDSearch(scorer, SearchConfig(dims=(4,), ranges=((-1.0, 1.0),), x0_samples=8,
                                           x0_truncation=0.7), tmp_path)
    draws = gen.sample_prior(8, seed=0, truncation_psi=0.7)
    best = int((draws - target).norm(dim=1).argmin())
    np.testing.assert_array_equal(search.start_latent(), draws[best].numpy().astype(np.float64))


def test_a_start_among_equal_objectives_is_the_smallest_loss(tmp_path, monkeypatch):
    search = QDSearch(_scorer(), _cfg(x0_samples=4), tmp_path)

    fake = Scores(objective=np.zeros(4), measures=np.zeros((4, 2)),
                  loss=np.array([30.0, 25.0, 40.0, 26.0]))  # every objective underflowed
    monkeypatch.setattr(search.scorer, "evaluate", lambda *a, **k: fake)
    z = search.scorer.generator.sample_prior(4, seed=1)
    np.testing.assert_array_equal(search.start_latent(), z[1].numpy().astype(np.float64))


def _released_pick(gen, z: torch.Tensor, w_reg: float, scale: float) -> int:
    """The released find_good_start_latent, computed here from the toy CLIP's prompt gaps:
    per batch of 16 the best gap, plus the penalty on the whole batch's norm; the best batch."""
    clip = ToyClip()
    emb = clip.encode_image(gen.decode(z))
    gap = (angdist(emb, clip.encode_text(["good"])).mean(1)
           - angdist(emb, clip.encode_text(["bad"])).mean(1)).numpy()
    q = scale * gen.latent_norm
    best, best_loss = None, np.inf
    for b in range(0, len(z), 16):
        i = b + int(np.argmin(gap[b:b + 16]))
        penalty = w_reg * max(float(z[b:b + 16].norm()) - q, 0.0) ** 2
        if gap[i] + penalty < best_loss:
            best, best_loss = i, gap[i] + penalty
    return best


@pytest.mark.parametrize("w_reg", [0.0, 0.5])
def test_the_released_start_takes_the_penalty_per_batch_of_16(tmp_path, w_reg):
    gen = ToyGenerator(latent_dim=6, prior_std=0.3)
    scorer = _scorer(gen, weights=(1.0, w_reg, 0.0))
    scorer.latent_norm_scale = 0.5
    cfg = _cfg(x0="released", x0_samples=48, seed=2)  # 3 batches of 16
    z = gen.sample_prior(48, seed=cfg.seed)
    start = QDSearch(scorer, cfg, tmp_path / "released").start_latent()
    want = _released_pick(gen, z, w_reg, scale=0.5)
    np.testing.assert_allclose(start, z[want].numpy().astype(np.float64), rtol=0, atol=0)
    if w_reg:  # the penalty per draw picks another start: the test tells the two apart
        other = QDSearch(scorer, _cfg(x0_samples=48, seed=2), tmp_path / "best").start_latent()
        assert not np.array_equal(other, start)
    with pytest.raises(ValueError, match="multiple of 16"):  # a short last batch would win
        _cfg(x0="released", x0_samples=40)
    with pytest.raises(ValueError, match="takes no jacobians"):
        scorer.evaluate(z[:2].numpy(), jacobian=True, whole_batch_norm=True)


def test_the_released_start_may_fill_the_uniqueness_memory(tmp_path):
    # each batch's call may remember one embedding (loss below 1), as the released one did;
    # the best-of-draws start leaves the memory empty
    scorer = _scorer(weights=(1.0, 0.0, 0.2))
    QDSearch(scorer, _cfg(x0="released", x0_samples=48), tmp_path / "a").start_latent()
    assert len(scorer.memory) == 3
    scorer.reset()
    QDSearch(scorer, _cfg(x0_samples=48), tmp_path / "b").start_latent()
    assert len(scorer.memory) == 0
    search = QDSearch(scorer, _cfg(x0="released", x0_samples=48, iterations=1), tmp_path / "c")
    scores = []
    evaluate = scorer.evaluate
    scorer.evaluate = lambda *a, **k: scores.append(len(scorer.memory)) or evaluate(*a, **k)
    search.run(progress=False)
    assert scores[:4] == [0, 1, 2, 3] and scores[4] >= 3  # the search starts with them
    with pytest.raises(ValueError, match="x0 must be 'prior_best'"):
        _cfg(x0="best")


def test_runs_written_before_these_settings_resume(tmp_path):
    QDSearch(_scorer(weights=(1.0, 0.5, 0.0)), _cfg(), tmp_path).run(progress=False)
    path = tmp_path / CHECKPOINT
    state = load_checkpoint(path)
    config = json.loads(state["config"])
    for key in ("selection_rule", "x0_truncation", "x0"):
        del config[key]
    for key in ("latent_norm_scale", "objective_floor", "uniqueness_fill_scale",
                "clamp_images", "clip_precision"):
        del config["scorer"][key]
    state["config"] = json.dumps(config, sort_keys=True)
    with open(path, "wb") as f:
        pickle.dump(state, f)
    search = QDSearch(_scorer(weights=(1.0, 0.5, 0.0)), _cfg(iterations=7), tmp_path)
    search.run(progress=False)
    assert search.iteration == 7
    with pytest.raises(ValueError, match="different settings"):  # but not under other ones
        QDSearch(_scorer(weights=(1.0, 0.5, 0.0)), _cfg(iterations=9, selection_rule="filter"),
                 tmp_path).run(progress=False)


# --- the latent augmentations file ------------------------------------------------------------
def test_latent_offsets_file_in_the_released_format(tmp_path):
    write_latent_augmentations(tmp_path / "augmentations.pt", seed=0, latent_dim=12)
    grid = torch.load(tmp_path / "augmentations.pt", weights_only=True)
    assert grid.dtype == torch.float64 and grid.shape == (9, 12)
    off = load_latent_offsets(tmp_path / "augmentations.pt", 12, 9)
    # the zero row (the grid's centre, row 4) first, the others in their order
    np.testing.assert_array_equal(off[0], 0)
    np.testing.assert_allclose(off[1:], grid[[0, 1, 2, 3, 5, 6, 7, 8]].float().numpy())
    np.save(tmp_path / "grid.npy", grid.numpy())
    np.testing.assert_array_equal(load_latent_offsets(tmp_path / "grid.npy", 12, 9), off)
    with pytest.raises(ValueError, match="set offsets=9"):
        load_latent_offsets(tmp_path / "augmentations.pt", 12, 4)
    with pytest.raises(ValueError, match=r"\(k, 4\) is needed \(the released file .*w\+"):
        load_latent_offsets(tmp_path / "augmentations.pt", 4, 9)
    torch.save(grid[[0, 1, 2]], tmp_path / "nozero.pt")
    with pytest.raises(ValueError, match="no all-zero row"):
        load_latent_offsets(tmp_path / "nozero.pt", 12, 3)
    bad = grid.clone()
    bad[1, 0] = float("nan")
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="NaN or inf"):
        load_latent_offsets(tmp_path / "nan.pt", 12, 9)
    np.save(tmp_path / "text.npy", np.array([["a"] * 12] * 9))
    with pytest.raises(ValueError, match="<U1 offsets, not numbers"):
        load_latent_offsets(tmp_path / "text.npy", 12, 9)
    torch.save({"offsets": grid}, tmp_path / "dict.pt")
    with pytest.raises(BadFileError, match="not a tensor"):
        load_latent_offsets(tmp_path / "dict.pt", 12, 9)
    with pytest.raises(FileNotFoundError, match="augmentations.pt in "
                                                "github.com/Cylumn/qd-generative-sampling"):
        load_latent_offsets(tmp_path / "missing.pt", 12, 9)


def test_the_profile_reads_offsets_from_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    gen = StyleGAN2Generator(small_net(), num_std_samples=500, latent_space="w+")
    write_latent_augmentations(tmp_path / "pretrained" / "augmentations.pt",
                               latent_dim=gen.latent_dim)
    p = get_profile("paper", "faces")
    assert (p["offsets"], p["offsets_file"]) == (9, "pretrained/augmentations.pt")
    off = latent_offsets(p, gen)
    assert off.shape == (9, gen.latent_dim) and not off[0].any() and off[1:].any(axis=1).all()
    p = get_profile("paper", "faces", offsets_file=None, offsets=4)  # random offsets instead
    assert latent_offsets(p, gen).shape == (4, gen.latent_dim)


def test_the_datasets_files_are_read_before_the_search(tmp_path, monkeypatch):
    """Notebook 02 reads the offsets and MTCNN weights only after its searches; its scorer
    reads them first, so a wrong file fails at once, not an hour into a paper run."""
    from qdgs_lib import face_synthesis
    from qdgs_lib.generators.stylegan2_legacy import save_stylegan2
    from qdgs_lib.paths import weights_dir
    from qdgs_lib.plumbing import write_mtcnn_weights

    (tmp_path / "weights").symlink_to(weights_dir())  # the project's CLIP, for build_scorer
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    gen = StyleGAN2Generator(small_net(), num_std_samples=500, latent_space="w+")
    write_latent_augmentations(tmp_path / "pretrained" / "augmentations.pt",
                               latent_dim=gen.latent_dim)
    write_mtcnn_weights(tmp_path / "pretrained" / "mtcnn", seed=0)
    p = get_profile("paper", "faces")
    face_synthesis.check_dataset_inputs(p, gen)  # the right files: no error
    with pytest.raises(ValueError, match="set latent_space='w\\+'"):  # w offsets wanted
        face_synthesis.check_dataset_inputs(get_profile("paper", "faces", latent_space="w"),
                                            StyleGAN2Generator(small_net(), latent_space="w"))
    (tmp_path / "pretrained" / "mtcnn" / "rnet.npy").unlink()
    with pytest.raises(FileNotFoundError, match="rnet"):
        face_synthesis.check_dataset_inputs(p, gen)
    # build_scorer makes the check (a StyleGAN2 file in our format, the project's faces CLIP)
    save_stylegan2(small_net(), tmp_path / "g.safetensors")
    with pytest.raises(FileNotFoundError, match="rnet"):
        face_synthesis.build_scorer(get_profile("paper", "faces", stylegan_weights="g.safetensors",
                                                clip="qdgs-faces-clip", clip_precision="float32"),
                                    "cpu")


def test_a_search_whose_every_score_is_zero_says_why(tmp_path):
    """Every objective floored at 0 (e.g. a latent-norm penalty far above the prompt gap):
    nothing enters the archive, the flat ranking restarts the emitter, and pyribs has no elite
    to restart at; the search names the cause instead of pyribs' IndexError."""
    scorer = _scorer()
    evaluate = scorer.evaluate
    scorer.evaluate = lambda z, **kw: dataclasses.replace(evaluate(z, **kw),
                                                          objective=np.zeros(len(z)))
    with pytest.raises(ValueError, match="restarted while no solution had entered the "
                                         "archive.*latent_norm_scale"):
        QDSearch(scorer, _cfg(iterations=20), tmp_path).run(progress=False)


def test_unfloored_objective_follows_the_released_dynamics(tmp_path):
    """The released code's start: every draw far outside a tight latent-norm penalty. Floored
    at 0, their scores are equal and the search cannot go on; unfloored (100 - 50 loss), they
    are ranked, pyribs' "filter" rule pulls the gradient point toward the origin while nothing
    enters, and the archive fills as the branches' norms fall under the penalty's threshold."""
    gen = ToyGenerator(prior_std=0.3)

    def tight(floor):
        return PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")],
                            weights=(1.0, 1e5, 0.0), latent_norm_scale=0.05,
                            objective_floor=floor)

    z = gen.sample_prior(16, seed=1).numpy()
    s = tight(False).evaluate(z)
    np.testing.assert_allclose(s.objective, 100 - 50 * s.loss, rtol=1e-6)
    assert s.objective.max() < 0 and len(np.unique(s.objective)) == 16  # negative, ranked
    assert tight(True).evaluate(z).objective.max() == 0  # floored: all the same
    cfg = _cfg(iterations=40, selection_rule="filter", x0_samples=16)
    with pytest.raises(ValueError, match="restarted while no solution had entered the "
                                         "archive.*objective_floor off"):
        QDSearch(tight(True), cfg, tmp_path / "floored").run(progress=False)
    search = QDSearch(tight(False), cfg, tmp_path / "unfloored")
    archive = search.run(progress=False)
    assert archive.stats.num_elites > 5
    start = search.start_latent()  # outside the penalty's threshold: a negative score
    assert tight(False).evaluate(start[None], update_memory=False).objective[0] < 0


def test_released_classifier_trains_as_sigmoid_and_bce():
    from qdgs_lib.models.shape_classifier import ReleasedShapeClassifier, make_shape_classifier

    torch.manual_seed(0)
    model = ReleasedShapeClassifier(128)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "conv1.weight": (16, 3, 3, 3), "conv1.bias": (16,), "conv2.weight": (32, 16, 3, 3),
        "conv2.bias": (32,), "conv3.weight": (64, 32, 3, 3), "conv3.bias": (64,),
        "fc1.weight": (128, 128 * 128), "fc1.bias": (128,), "fc2.weight": (1, 128),
        "fc2.bias": (1,)}  # the released ShapeClassifier's
    x, y = torch.rand(6, 3, 128, 128), torch.tensor([0, 1, 1, 0, 1, 0])
    logits = model(x)
    ce = torch.nn.functional.cross_entropy(logits, y)
    (g_ce,) = torch.autograd.grad(ce, model.fc2.weight)
    h = x
    for conv in (model.conv1, model.conv2, model.conv3):  # the released forward, as written
        h = model.pool(torch.relu(conv(h)))
    p = torch.sigmoid(model.fc2(torch.relu(model.fc1(h.view(h.size(0), -1))))).squeeze(1)
    bce = torch.nn.functional.binary_cross_entropy(p, y.float())  # the released loss
    (g_bce,) = torch.autograd.grad(bce, model.fc2.weight)
    torch.testing.assert_close(ce, bce)
    torch.testing.assert_close(g_ce, g_bce)
    assert torch.equal(logits.argmax(1), (p > 0.5).long())
    assert make_shape_classifier("released", 32).fc1.in_features == 64 * 4 * 4
    with pytest.raises(ValueError, match="classifier must be"):
        make_shape_classifier("resnet", 128)


# --- the released shapes data ----------------------------------------------------------------
def test_released_base_shapes_are_its_triangle_and_square():
    from qdgs_lib.data.shapes import RELEASED_BLUE, RELEASED_RED, released_base_shapes

    base = released_base_shapes()
    ink = base.amax(1) > 0
    assert ink[0].sum() == ink[1].sum() == sum(32 - abs(32 - i) for i in range(64)) == 1024
    assert ink[2].sum() == ink[3].sum() == 36 * 36 and ink[2, 46:82, 46:82].all()
    assert ink[0, 31].sum() == 0 and ink[0, 32].sum() == 1 and ink[0, 63].sum() == 63
    for k, rgb in enumerate((RELEASED_RED, RELEASED_BLUE, RELEASED_RED, RELEASED_BLUE)):
        assert torch.equal(base[k][:, ink[k]].unique(dim=1).squeeze(1),
                           torch.tensor(rgb).div(255))


def test_released_shapes_dataset_draws_its_items_in_order_as_released():
    import torchvision.transforms as T

    from qdgs_lib.data.shapes import ReleasedShapesDataset, released_base_shapes

    data = ReleasedShapesDataset(40, 0.9, seed=3)
    # its order: red triangles, blue triangles, blue squares, red squares (18/2/18/2 at 0.9)
    assert data.labels.tolist() == [0] * 20 + [1] * 20
    assert data.colors.tolist() == [0] * 18 + [1] * 2 + [1] * 18 + [0] * 2
    assert data.groups.bincount().tolist() == [18, 2, 2, 18]
    # each item as the released __getitem__ makes it, drawn in order under the seed
    base = released_base_shapes()
    transform = T.Compose([T.ToPILImage(), T.RandomRotation(180),
                           T.RandomResizedCrop(128, scale=(0.5, 2)), T.ToTensor()])
    state = torch.get_rng_state()
    torch.manual_seed(3)
    for i, k in enumerate([0] * 18 + [1] * 2 + [3] * 18 + [2] * 2):
        want = transform(base[k])
        want[:, want.lt(0.5).all(dim=0)] = 1
        assert torch.equal(data.images[i], want)
    torch.set_rng_state(state)
    before = torch.get_rng_state()
    again = ReleasedShapesDataset(40, 0.9, seed=3)
    assert torch.equal(again.images, data.images) and torch.equal(torch.get_rng_state(), before)
    assert not (data.images < 0.5).all(dim=1).any()  # no black pixel left
    assert torch.equal(data.images, (data.images * 255).round() / 255)  # 8-bit values
    test = ReleasedShapesDataset(8, None, size=32, seed=0)  # bias 0.5, resized
    assert test.images.shape == (8, 3, 32, 32) and test.groups.bincount().tolist() == [2] * 4
    for n, bias in ((41, 0.9), (0, 0.9), (40, 0.3)):
        with pytest.raises(ValueError, match="even number|n >= 1|bias must be"):
            ReleasedShapesDataset(n, bias)


def test_released_batch_rotation_turns_a_batch_by_one_angle():
    from qdgs_lib.data.shapes import ReleasedShapesDataset, released_batch_rotation

    x = ReleasedShapesDataset(2, 0.5, seed=0).images[:1].repeat(4, 1, 1, 1)
    torch.manual_seed(1)
    out = released_batch_rotation(x)
    assert all(torch.equal(out[0], o) for o in out) and not torch.equal(out[0], x[0])
    corners = torch.stack([out[0, :, 0, 0], out[0, :, 0, -1], out[0, :, -1, 0], out[0, :, -1, -1]])
    assert (corners == 0).all(1).any()  # the released rotation's black corners


def test_synthetic_shapes_go_through_jpeg_files_as_released(tmp_path):
    """image_format "jpg": 8 bits by truncation, PIL's JPEG at its default quality, read back
    as ImageFolder + ToTensor read the released files."""
    import torchvision

    from qdgs_lib.sampling import as_released_jpeg

    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 24, 24, generator=g) * 0.2 + 0.8
    images[:, 0] = 254.9 / 255  # truncated: 254, rounded: 255
    for i, img in enumerate(images):
        (tmp_path / "0").mkdir(exist_ok=True)
        arr = img.clamp(0, 1).mul(255).permute(1, 2, 0).numpy().astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / "0" / f"{i:03d}.jpg")
    read = torchvision.datasets.ImageFolder(tmp_path, transform=torchvision.transforms.ToTensor())
    want = torch.stack([read[i][0] for i in range(len(read))])
    got = as_released_jpeg(images)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert not torch.equal(got, as_released_jpeg((images * 255).round() / 255))
    with pytest.raises(ValueError, match="must lie in"):
        as_released_jpeg(images * 255)


def test_the_released_protocol_trains_on_the_released_sets(monkeypatch):
    """shapes_data "released": both stages on ReleasedShapesDataset images, rotated a batch at
    a time, each epoch's last batch kept; tested on its balanced set."""
    from qdgs_lib import shapes_poc
    from qdgs_lib.data.shapes import ReleasedShapesDataset, released_batch_rotation

    calls = []
    train = shapes_poc.train_classifier
    monkeypatch.setattr(shapes_poc, "train_classifier",
                        lambda model, data, *a, **kw: calls.append((data, kw))
                        or train(model, data, *a, **kw))
    p = get_profile("paper", "shapes", n_train=16, n_test=8, train_epochs=1, finetune_epochs=1,
                    batch=8, image_size=32, seeds=[0], bias_levels=[0.9])
    g = torch.Generator().manual_seed(0)
    synthetic = {"images": torch.rand(6, 3, 32, 32, generator=g),
                 "labels": torch.tensor([0, 1] * 3)}
    rows = shapes_poc.classifier_protocol(p, {"qdgs": synthetic}, progress=False, device="cpu")
    assert rows["finetune"].tolist() == ["none", "qdgs"]
    (real, first), (_, second) = calls
    assert torch.equal(real.tensors[0], ReleasedShapesDataset(16, 0.9, size=32, seed=0).images)
    for kw in (first, second):
        assert kw["augment"] is released_batch_rotation and kw["drop_last"] is False
    p = get_profile("default", "shapes")
    assert shapes_poc.shapes_datasets(p["shapes_data"])[1] is not released_batch_rotation


def test_one_training_set_per_bias_for_every_seed_as_released(monkeypatch):
    """train_sets "per_bias" (paper): every seed trains on the same biased set (seed 0's), as
    the released code's stored set per bias; "per_seed" draws one per seed. The networks
    follow their seeds either way."""
    from qdgs_lib import shapes_poc

    calls = []
    monkeypatch.setattr(shapes_poc, "train_classifier",
                        lambda model, data, *a, **kw: calls.append(
                            (data.tensors[0], next(model.parameters()).detach().clone())))
    synthetic = {"images": torch.rand(4, 3, 32, 32), "labels": torch.tensor([0, 1] * 2)}
    sets, inits = {}, {}
    for style in ("per_bias", "per_seed"):
        calls.clear()
        p = get_profile("paper", "shapes", n_train=16, n_test=8, train_epochs=1,
                        finetune_epochs=1, batch=8, image_size=32, seeds=[0, 1],
                        bias_levels=[0.9], train_sets=style)
        shapes_poc.classifier_protocol(p, {"qdgs": synthetic}, progress=False, device="cpu")
        # per seed: the biased stage, then the fine-tune
        sets[style] = [calls[0][0], calls[2][0]]
        inits[style] = [calls[0][1], calls[2][1]]
    assert torch.equal(*sets["per_bias"]) and not torch.equal(*sets["per_seed"])
    assert torch.equal(sets["per_bias"][0], sets["per_seed"][0])  # seed 0's set
    for style in sets:  # the networks start from their own seed's initialisation
        assert not torch.equal(*inits[style])
    assert get_profile("default", "shapes")["train_sets"] == "per_seed"


def test_synthetic_shapes_of_the_paper_profile_are_the_jpeg_pixels():
    from qdgs_lib import shapes_poc
    from qdgs_lib.sampling import as_released_jpeg

    vae = ReleasedShapesVAE().eval()  # random weights: the pixels, not the shapes, matter
    scorer = types.SimpleNamespace(generator=vae)
    z = vae.sample_prior(4, seed=0).numpy()
    m = np.array([[0.0, 0.5], [0.0, -0.5], [0.0, 0.0], [0.0, 0.005]])
    p = get_profile("paper", "shapes", image_size=128)
    data = shapes_poc.synthetic_set(scorer, z, m, p)
    assert data["labels"].tolist() == [0, 1, 1]  # 0.005: ambiguous, left out
    with torch.no_grad():
        want = as_released_jpeg(vae.decode(torch.as_tensor(z[:3])))
    assert torch.equal(data["images"], want)
    small = shapes_poc.synthetic_set(scorer, z, m, {**p, "image_size": 32})["images"]
    assert small.shape == (3, 3, 32, 32)  # through JPEG at 128 px, then resized
    png = shapes_poc.synthetic_set(scorer, z, m, {**p, "image_format": "png"})["images"]
    assert not torch.equal(png, want)


def test_released_labels_put_the_square_at_or_below_zero():
    from qdgs_lib.shapes_poc import label_by_shape_measure

    m = np.array([[0.0, v] for v in (0.02, 0.01, 0.005, 0.0, -0.005, -0.02)])
    p = get_profile("paper", "shapes")
    assert p["label_style"] == "released"
    assert label_by_shape_measure(m, p).tolist() == [0, -1, -1, 1, 1, 1]
    p = get_profile("default", "shapes")
    assert label_by_shape_measure(m, p).tolist() == [0, -1, -1, -1, -1, 1]
    with pytest.raises(ValueError, match="label_style must be"):
        label_by_shape_measure(m, {**p, "label_style": "paper"})


def test_the_released_protocol_keeps_each_epochs_last_batch():
    from torch.utils.data import TensorDataset

    from qdgs_lib.train import train_classifier

    seen = []
    data = TensorDataset(torch.rand(10, 3, 8, 8), torch.arange(10) % 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    for drop in (None, False):
        seen.clear()
        train_classifier(model, data, 1, batch_size=4, progress=False, device="cpu",
                         augment=lambda x: seen.append(len(x)) or x, drop_last=drop)
        assert seen == ([4, 4] if drop is None else [4, 4, 2])


def test_uniqueness_fill_scale_is_the_released_one_until_the_memory_is_full():
    gen = ToyGenerator(prior_std=0.3)

    def make(fill):
        return PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b")],
                            weights=(1.0, 0.0, 0.2), uniqueness_fill_scale=fill)

    z = gen.sample_prior(3, seed=4).numpy()
    plain, released = make(False), make(True)
    memory = ToyClip().encode_image(gen.decode(gen.sample_prior(2, seed=9)))
    for sc in (plain, released):
        sc.memory = memory.clone()
    emb = ToyClip().encode_image(gen.decode(torch.as_tensor(z)))
    d = angdist(emb, memory).min(dim=1).values.numpy()
    got = released.evaluate(z, update_memory=False).loss - plain.evaluate(
        z, update_memory=False).loss
    np.testing.assert_allclose(got, -0.2 * d * (100 / 2 - 1), rtol=1e-4)
    full = ToyClip().encode_image(gen.decode(gen.sample_prior(100, seed=9)))
    for sc in (plain, released):
        sc.memory = full.clone()
    np.testing.assert_array_equal(released.evaluate(z, update_memory=False).loss,
                                  plain.evaluate(z, update_memory=False).loss)
    assert released.settings()["uniqueness_fill_scale"] is True


def test_kmeans_settings_reach_scikit_learn(monkeypatch):
    import sklearn.cluster

    from qdgs_lib.sampling import cluster_identities

    seen = []
    real = sklearn.cluster.KMeans

    def recording(**kw):
        seen.append((kw["n_init"], kw["max_iter"]))
        return real(**kw)

    monkeypatch.setattr(sklearn.cluster, "KMeans", recording)
    z = np.random.default_rng(0).normal(size=(12, 3))
    ids = cluster_identities(z, np.zeros(12, int), 2, n_init=10, max_iter=2000)
    assert seen == [(10, 2000)] and len(np.unique(ids)) == 6
    cluster_identities(z, np.zeros(12, int), 2)
    assert seen[-1] == (4, 300)  # the offline profiles' (scikit-learn's default iterations)
    p = get_profile("paper", "faces")
    assert (p["kmeans_n_init"], p["kmeans_max_iter"]) == (10, 2000)


def test_the_offline_profiles_keep_every_earlier_behaviour():
    """The keys the released-code audit added leave smoke/default as they were: each equals
    its earlier value (profiles.EARLIER), which files and dicts without the key get."""
    from qdgs_lib.profiles import EARLIER, PROFILES, with_earlier

    for name in ("smoke", "default"):
        for section in PROFILES[name].values():
            assert {k: v for k, v in section.items() if k in EARLIER} == \
                {k: EARLIER[k] for k in section if k in EARLIER}
    assert with_earlier({"offsets": 9})["offsets_file"] is None
    assert with_earlier({"classifier": "released"})["classifier"] == "released"
