"""Shapes ground truth for label checks: color read off the pixels, the oracle's agreement."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from qdgs_lib import shapes_poc
from qdgs_lib.data.shapes import ShapesDataset, render, sample_params
from qdgs_lib.shapes_poc import pixel_color
from qdgs_lib.utils import BadFileError


def test_pixel_color_recovers_the_render_color():
    g = torch.Generator().manual_seed(0)
    n = 64
    p = sample_params(n, torch.zeros(n, dtype=torch.long), (torch.rand(n, generator=g) < 0.5)
                      .long(), g)
    p.color = torch.rand(n, generator=g)
    est = pixel_color(render(p, 64))
    err = np.abs(est - p.color.numpy())
    assert err.max() < 0.12 and err.mean() < 0.05  # anti-aliased edges blend with white
    balanced = ShapesDataset(200, None, 32, seed=3)
    red = pixel_color(balanced.images) < 0.5
    assert (red == (balanced.colors.numpy() == 0)).all()


@pytest.mark.parametrize("bias", [0.5, 0.8, 0.98])
def test_the_biased_sets_have_the_bias_they_are_named_for(bias):
    """The experiment's manipulation: half triangles, half squares; a triangle is red (a
    square blue) with probability ``bias``, in the groups and in the rendered pixels."""
    from qdgs_lib.data.shapes import biased_groups

    n = 40_000
    colors, shapes = biased_groups(n, bias, torch.Generator().manual_seed(0))
    sd = np.sqrt(0.25 / n)  # binomial standard deviations: 5 of them, a loose bound
    assert abs(shapes.float().mean().item() - 0.5) < 5 * sd
    majority = (colors == shapes).float()  # red (0) triangles (0), blue (1) squares (1)
    for shape in (0, 1):
        share = majority[shapes == shape].mean().item()
        assert abs(share - bias) < 5 * np.sqrt(bias * (1 - bias) / (n / 2)) + 1e-9, share
    data = ShapesDataset(400, bias, 32, seed=1)
    assert ((pixel_color(data.images) > 0.5) == (data.colors.numpy() == 1)).all()


def test_shape_augmentation_is_seeded_white_filled_and_keeps_the_shape():
    import torch

    from qdgs_lib.data.shapes import ShapesDataset, augment_shapes

    d = ShapesDataset(64, None, 32, seed=3)
    torch.manual_seed(0)
    a = augment_shapes(d.images)
    torch.manual_seed(0)
    assert torch.equal(a, augment_shapes(d.images))  # torch's global RNG: seeded runs repeat
    assert a.shape == d.images.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, d.images)
    white = torch.ones(4, 3, 32, 32)
    assert torch.allclose(augment_shapes(white), white)  # rotation fills with white
    # the shape stays mostly in view: its ink (1 - brightness) keeps >= 70% of its amount
    ink = (1 - d.images.mean(1)).sum((1, 2))
    assert ((1 - a.mean(1)).sum((1, 2)) / ink).min() > 0.7


class _Fixed(torch.nn.Module):
    """A stand-in member whose "square" logit is a fixed function of the mean brightness."""

    def __init__(self, threshold: float):
        super().__init__()
        self.t = torch.nn.Parameter(torch.tensor(threshold), requires_grad=False)

    def forward(self, x):
        s = 50 * (x.mean((1, 2, 3)) - self.t)
        return torch.stack([torch.zeros_like(s), s], 1)


def test_oracle_labels_by_mean_probability_and_flags_disagreement():
    from qdgs_lib.shapes_oracle import ShapeOracle

    oracle = ShapeOracle([_Fixed(0.3), _Fixed(0.5), _Fixed(0.7)], size=8)
    x = torch.stack([torch.full((3, 16, 16), v) for v in (0.1, 0.45, 0.55, 0.9)])
    label, unanimous, confidence = oracle.labels(x)
    assert label.tolist() == [0, 0, 1, 1]  # majority: 0/3, 1/3, 2/3, 3/3 members say square
    assert unanimous.tolist() == [True, False, False, True]
    assert (confidence > 0.5).all() and confidence[0] > 0.99


def test_oracle_rejects_bad_images_and_missing_weights(tmp_path):
    import pytest

    from qdgs_lib.shapes_oracle import ShapeOracle, load_shapes_oracle, save_shapes_oracle

    oracle = ShapeOracle([_Fixed(0.5)], size=8)
    with pytest.raises(ValueError, match="NaN"):
        oracle.labels(torch.full((2, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        oracle.labels(torch.zeros(3, 8, 8))
    with pytest.raises(FileNotFoundError, match="train_shapes_oracle.py"):
        load_shapes_oracle(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BadFileError, match="train_shapes_oracle.py"):
        load_shapes_oracle(tmp_path / "bad.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))  # not an oracle
    with pytest.raises(BadFileError, match="train_shapes_oracle.py"):
        load_shapes_oracle(tmp_path / "other.safetensors")
    from qdgs_lib.models.shape_classifier import ShapeClassifier

    real = ShapeOracle([ShapeClassifier(), ShapeClassifier()], size=16)
    save_shapes_oracle(real, tmp_path / "o.safetensors")
    back = load_shapes_oracle(tmp_path / "o.safetensors")
    x = torch.rand(4, 3, 32, 32)
    assert back.size == 16 and len(back.members) == 2
    assert torch.equal(back.member_probs(x), real.eval().member_probs(x))


def test_shipped_oracle_reads_renders_and_is_sure_of_most_prior_decodes():
    """Each member labels held-out renders (resized as decodes are) right; on decodes of the
    VAE's prior the members are unanimous on most images (the rest lie between a triangle and
    a square: see bench/README.md)."""
    from qdgs_lib.generators.shapes_vae import load_shapes_vae
    from qdgs_lib.sampling import decode_batched
    from qdgs_lib.shapes_oracle import load_shapes_oracle
    from qdgs_lib.utils import resize_square

    oracle = load_shapes_oracle()
    renders = ShapesDataset(400, None, 128, seed=5)
    votes = oracle.member_probs(resize_square(renders.images, oracle.size)) > 0.5
    accuracy = (votes == renders.labels.bool()).float().mean(1)
    print("member accuracy on renders:", accuracy.tolist())
    assert (accuracy >= 0.99).all()
    vae = load_shapes_vae(device="cpu")
    decodes = decode_batched(vae.decode, vae.sample_prior(500, seed=3).numpy(), size=oracle.size)
    _, unanimous, _ = oracle.labels(decodes)
    print("unanimous on prior decodes:", unanimous.mean())
    assert unanimous.mean() >= 0.85


def test_color_columns_leave_purple_out_of_the_clear_agreement():
    from qdgs_lib.shapes_poc import _color_columns

    color = np.array([0.1, 0.2, 0.5, 0.6, 0.9])  # red, red, purple, purple, blue
    red = np.array([True, True, False, True, False])  # wrong on the purple at 0.5 only
    c = _color_columns(red, color)
    assert c["CLIP color = pixels"] == pytest.approx(0.8)
    assert c["purple share"] == pytest.approx(0.4)
    assert c["CLIP color = pixels, red or blue images"] == 1.0
    assert all(np.isnan(v) for v in _color_columns(red[:0], color[:0]).values())


def test_weights_record_is_what_the_sha256_check_reads(tmp_path):
    import json

    from qdgs_lib.utils import BadFileError, check_recorded_sha256, write_weights_record

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    write_weights_record(weights, {"steps": 3}, final={"loss": 0.5})
    record = json.loads((tmp_path / "w.safetensors.json").read_text())
    assert list(record) == ["config", "final", "versions", "sha256"]
    assert record["config"] == {"steps": 3} and record["final"] == {"loss": 0.5}
    check_recorded_sha256(weights, "rebuild it")  # intact: passes
    weights.write_bytes(b"changed")
    with pytest.raises(BadFileError, match="rebuild it"):
        check_recorded_sha256(weights, "rebuild it")


def test_random_set_scores_only_what_it_needs_and_gives_the_full_scoring_set():
    from qdgs_lib import shapes_poc
    from qdgs_lib.profiles import get_profile

    p = get_profile("smoke", "shapes")
    scorer = shapes_poc.build_scorer(p, "cpu")
    n = 300
    fast = shapes_poc.random_set(scorer, n, p, seed=4)
    z = scorer.generator.sample_prior(4 * n + 64, seed=4).cpu().numpy()
    full = shapes_poc.synthetic_set(scorer, z, scorer.measures_of(z), p, limit=n)
    assert len(fast["labels"]) == n
    for key in ("images", "labels", "latents", "measures"):
        a, b = (torch.as_tensor(d[key]) for d in (fast, full))
        assert torch.equal(a, b), key


def test_group_accuracy_by_bias_keeps_the_bias_levels_apart():
    from qdgs_lib.data.shapes import group_names

    groups = group_names()
    rows = [{"bias": b, "seed": s, "finetune": f, **dict(zip(groups, acc, strict=True))}
            for b, acc in ((0.98, (1.0, 0.0, 0.2, 1.0)), (0.8, (1.0, 1.0, 1.0, 1.0)))
            for s in (0, 1) for f in ("none", "qdgs")]
    table = shapes_poc.group_accuracy_by_bias(pd.DataFrame(rows))
    assert list(table.index) == [0.98, 0.8] and list(table.columns) == groups
    assert table.loc[0.98].tolist() == [1.0, 0.0, 0.2, 1.0]   # not averaged with bias 0.8
    with pytest.raises(ValueError, match="no results with finetune 'random'"):
        shapes_poc.group_accuracy_by_bias(pd.DataFrame(rows), "random")


def _tiny_protocol():
    p = {"n_test": 80, "image_size": 16, "bias_levels": (0.95,), "seeds": (0,), "n_train": 64,
         "train_epochs": 1, "finetune_epochs": 1, "batch": 32}

    def fake(seed):
        d = ShapesDataset(32, None, 16, seed=seed)
        return {"images": d.images, "labels": d.labels}

    return p, fake(101), fake(102)


def test_classifier_protocol_rows_do_not_depend_on_the_other_sets():
    p, a, b = _tiny_protocol()
    alone = shapes_poc.classifier_protocol(p, {"a": a}, progress=False, device="cpu")
    after = shapes_poc.classifier_protocol(p, {"b": b, "a": a}, progress=False, device="cpu")
    pd.testing.assert_frame_equal(alone[alone.finetune == "a"].reset_index(drop=True),
                                  after[after.finetune == "a"].reset_index(drop=True))


def test_classifier_protocol_resumes_after_the_last_finished_pair(tmp_path, monkeypatch):
    """A run stopped in its third (bias, seed) pair resumes from the checkpoint with the two
    finished pairs' rows and ends with an uninterrupted run's table; a checkpoint from other
    inputs (a profile setting, a set) or a damaged one is refused, saying what to do."""
    p, a, _ = _tiny_protocol()
    p = {**p, "bias_levels": (0.95, 0.8), "seeds": (0, 1)}
    whole = shapes_poc.classifier_protocol(p, {"a": a}, progress=False, device="cpu")
    ckpt = tmp_path / "classifier_rows.json"
    calls = []
    train = shapes_poc.train_classifier

    def stopping(*args, **kw):  # two calls per pair: the base model, the fine-tune on "a"
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return train(*args, **kw)

    monkeypatch.setattr(shapes_poc, "train_classifier", stopping)
    with pytest.raises(KeyboardInterrupt):
        shapes_poc.classifier_protocol(p, {"a": a}, progress=False, device="cpu",
                                       checkpoint=ckpt)
    assert len(json.loads(ckpt.read_text())["rows"]) == 4  # 2 pairs x (none, a)
    calls.clear()
    resumed = shapes_poc.classifier_protocol(p, {"a": a}, progress=False, device="cpu",
                                             checkpoint=ckpt)
    assert len(calls) == 4  # only the two pairs left were trained
    pd.testing.assert_frame_equal(resumed, whole)
    old = json.loads(ckpt.read_text())  # a file from before finetune_lr / classifier
    for k in ("finetune_lr", "classifier"):
        del old["key"]["profile"][k]
    ckpt.write_text(json.dumps(old))
    calls.clear()
    pd.testing.assert_frame_equal(shapes_poc.classifier_protocol(
        p, {"a": a}, progress=False, device="cpu", checkpoint=ckpt), whole)
    assert not calls  # every pair was in the file
    with pytest.raises(ValueError, match="other inputs.*profile: classifier"):
        shapes_poc.classifier_protocol({**p, "classifier": "released"}, {"a": a},
                                       progress=False, device="cpu", checkpoint=ckpt)
    with pytest.raises(ValueError, match="other inputs.*profile: train_epochs.*delete it"):
        shapes_poc.classifier_protocol({**p, "train_epochs": 2}, {"a": a}, progress=False,
                                       device="cpu", checkpoint=ckpt)
    b = {**a, "labels": 1 - a["labels"]}
    with pytest.raises(ValueError, match="other inputs.*sets: a seed 0"):
        shapes_poc.classifier_protocol(p, {"a": b}, progress=False, device="cpu",
                                       checkpoint=ckpt)
    ckpt.write_text('{"key": [1]}')
    with pytest.raises(BadFileError, match="classifier-protocol checkpoint.*Delete"):
        shapes_poc.classifier_protocol(p, {"a": a}, progress=False, device="cpu",
                                       checkpoint=ckpt)


def test_classifier_protocol_refuses_sets_it_cannot_learn_from(monkeypatch):
    p, a, _ = _tiny_protocol()
    # each case is refused before any training, with its own reason
    bad = {"NaN/inf pixels": {**a, "images": a["images"].clone().index_fill_(
               0, torch.tensor([3]), float("nan"))},
           "in \\[0, 1\\]": {**a, "images": a["images"] * 255},
           "expected \\(N, 3, 16, 16\\)": {**a, "images": torch.nn.functional.interpolate(
               a["images"], size=32)},
           "values \\[2\\]": {**a, "labels": a["labels"].clone().fill_(2)}}

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the sets")

    monkeypatch.setattr(shapes_poc, "train_classifier", no_training)
    for why, data in bad.items():
        with pytest.raises(ValueError, match=f"synthetic set 'x' \\(seed 0\\):? .*{why}"):
            shapes_poc.classifier_protocol(p, {"x": data}, progress=False, device="cpu")
    with pytest.raises(KeyError, match="has seeds \\[5\\], the profile \\(0,\\)"):
        shapes_poc.classifier_protocol(p, {"x": {5: a}}, progress=False, device="cpu")


def test_empty_or_negative_shapes_datasets_are_refused():
    for n in (0, -4):
        with pytest.raises(ValueError, match="needs n >= 1"):
            ShapesDataset(n, None)
