"""Contracts that plausible slips in the library would break (each test names the slip it
catches): training input preparation and logging, evaluation rules, verdicts, dataset writing,
measure ranges, face-dataset building and atomic folder replacement."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from toys import TinyNet, ToyGenerator

from qdgs_lib import augment, claims, face_synthesis, recognition
from qdgs_lib.augment import face_augment
from qdgs_lib.data.benchmarks import PairSet
from qdgs_lib.data.identities import TensorFaces
from qdgs_lib.evaluate import embed, group_accuracy, group_verification, verification_accuracy
from qdgs_lib.generators import toy_faces
from qdgs_lib.measures import Measure, ranges_from_samples
from qdgs_lib.models.heads import CosFace
from qdgs_lib.profiles import get_profile
from qdgs_lib.sampling import cluster_identities, read_identity_dataset, write_identity_dataset
from qdgs_lib.search import solutions
from qdgs_lib.train import RecognitionTrainer, adaface_input
from qdgs_lib.utils import atomic_dir, tensor_digest


# --- train.py ---------------------------------------------------------------------------------
def _separable(per_class=2):
    """4 identities, each a distinct flat color plus a little noise (8x8 images)."""
    g = torch.Generator().manual_seed(0)
    colors = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.5, 0.5, 0.5]])
    x = colors.repeat_interleave(per_class, 0)[:, :, None, None] + 0.05 * torch.randn(
        4 * per_class, 3, 8, 8, generator=g)
    return x.clamp(0, 1), torch.arange(4).repeat_interleave(per_class)


def _trainer(outdir, x, y, augment, lr=0.1, batch_size=None):
    torch.manual_seed(0)
    return RecognitionTrainer(TinyNet(), CosFace(16, 4), TensorFaces(x, y), outdir, lr=lr,
                              milestones=(99,), batch_size=batch_size or len(x),
                              augment=augment, progress=False, device="cpu",
                              channels_last=False)


def test_trainer_augments_only_when_asked(tmp_path):
    """Catches a trainer whose batch preparation never (or always) augments."""
    x, y = _separable()
    on = _trainer(tmp_path / "on", x, y, augment=True)
    got, _ = on._prepare(x, y, torch.Generator().manual_seed(5))
    want = adaface_input(face_augment(x, torch.Generator().manual_seed(5)))
    assert torch.allclose(got, want)
    assert not torch.allclose(got, adaface_input(x))
    off = _trainer(tmp_path / "off", x, y, augment=False)
    got, _ = off._prepare(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(got, adaface_input(x))


def test_adaface_input_is_bgr_in_minus_one_one():
    """Catches adaface_input dropping the RGB -> BGR channel flip."""
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    out = adaface_input(red)
    # (x - 0.5) / 0.5 maps 1 -> +1 and 0 -> -1; red (RGB channel 0) lands in BGR channel 2
    assert torch.equal(out[:, 2], torch.ones(1, 4, 4))
    assert torch.equal(out[:, 0], -torch.ones(1, 4, 4))
    assert torch.equal(out[:, 1], -torch.ones(1, 4, 4))


def test_uint8_batches_are_scaled_to_unit_range_before_augmenting(tmp_path):
    """Catches uint8 batches not divided by 255 (or divided only after augmentation)."""
    x, y = _separable()
    x8 = torch.full((len(x), 3, 8, 8), 255, dtype=torch.uint8)
    got, _ = _trainer(tmp_path / "off", x, y, augment=False)._prepare(
        x8, y, torch.Generator().manual_seed(0))
    assert torch.equal(got, torch.ones_like(got))
    got, _ = _trainer(tmp_path / "on", x, y, augment=True)._prepare(
        x8, y, torch.Generator().manual_seed(3))
    want = adaface_input(face_augment(torch.ones(len(x), 3, 8, 8),
                                      torch.Generator().manual_seed(3)))
    assert torch.allclose(got, want)


def test_color_jitter_factors_span_half_to_one_and_a_half(monkeypatch):
    """Catches ColorJitter(0.5) factors drawn from a range narrower than [0.5, 1.5)."""
    seen = []
    real = augment.color_jitter

    def spy(img, order, factors):
        seen.extend(factors)
        return real(img, order, factors)

    monkeypatch.setattr(augment, "color_jitter", spy)
    face_augment(torch.rand(300, 3, 4, 4), torch.Generator().manual_seed(0), p=(0, 0, 1),
                 flip=False)
    assert len(seen) == 900
    assert 0.5 <= min(seen) < 0.6 and 1.4 < max(seen) < 1.5


def test_low_resolution_side_spans_a_fifth_to_all_of_the_height(monkeypatch):
    """Catches the low-resolution side drawn from a narrower range than 0.2 h .. h."""
    h = 40
    sides = []
    real = F.interpolate

    def spy(img, size, mode):
        if tuple(size) != (h, h):
            sides.append(size[0])
        return real(img, size=size, mode=mode)

    monkeypatch.setattr(augment.F, "interpolate", spy)
    face_augment(torch.rand(300, 3, h, h), torch.Generator().manual_seed(0), p=(0, 1, 0),
                 flip=False)
    assert len(sides) >= 250  # (a draw of exactly h skips nothing: it is filtered out here)
    assert min(sides) >= int(0.2 * h) and max(sides) < h
    assert min(sides) <= 0.25 * h and max(sides) >= 0.95 * h


def _initial_loss_and_accuracy(tr, x, y):
    """Cross-entropy (margin logits) and plain-cosine accuracy of the trainer's current
    weights on the whole set."""
    with torch.no_grad():
        emb, norms = tr.backbone(adaface_input(x))
        return (F.cross_entropy(tr.head(emb, norms, y), y).item(),
                (tr.head.cosine(emb).argmax(1) == y).double().mean().item())


def test_logged_loss_and_accuracy_are_the_epoch_means(tmp_path):
    """Catches a logged loss not weighted by batch size, and a wrong train_acc."""
    x, y = _separable(4)
    # a learning rate too small to move anything: the epoch's two batches of 8 see the
    # initial weights, whose loss and accuracy over the 16 samples are the epoch's means
    tr = _trainer(tmp_path, x, y, augment=False, lr=1e-7, batch_size=8)
    loss, acc = _initial_loss_and_accuracy(tr, x, y)
    assert 0 < acc < 1
    row = tr.train_epoch()
    assert row["loss"] == pytest.approx(loss, rel=1e-4)
    assert row["train_acc"] == pytest.approx(acc)


def test_train_acc_reaches_one_on_a_separable_set(tmp_path):
    """Catches a train_acc that is not the share of right predictions."""
    x, y = _separable()
    tr = _trainer(tmp_path, x, y, augment=False)
    accs = [tr.train_epoch()["train_acc"] for _ in range(40)]
    assert all(a * len(x) == round(a * len(x)) and 0 <= a <= 1 for a in accs)
    assert accs[-1] == 1.0


def test_train_acc_is_that_of_the_weights_that_gave_the_loss(tmp_path):
    """The logged accuracy belongs to the same weights as the logged loss (it used the class
    centres after the optimizer step: 1.0 logged where those weights scored 0.5)."""
    x, y = _separable()
    tr = _trainer(tmp_path, x, y, augment=False)  # one batch: one step per epoch
    loss, acc = _initial_loss_and_accuracy(tr, x, y)
    row = tr.train_epoch()
    assert row["loss"] == pytest.approx(loss, rel=1e-5)
    assert row["train_acc"] == pytest.approx(acc)


# --- evaluate.py ------------------------------------------------------------------------------
class _NormNet(nn.Module):
    """Unit features and a norm that depends on the image's left half (so a mirror's
    differs): AdaFace's (features, norms) output."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(3 * 4 * 4, 5, generator=torch.Generator()
                                              .manual_seed(0)))

    def forward(self, x):
        f = x.flatten(1) @ self.w
        return F.normalize(f, dim=1), 1 + 5 * x[..., :2].mean((1, 2, 3))[:, None]


def test_embed_fuses_unnormalised_features_of_image_and_mirror():
    """Catches embed dropping the AdaFace fusion feats * norms."""
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    x[..., :2] *= 0.2  # a dark left half: image and mirror have different norms
    net = _NormNet()
    f, n = net(x)
    fm, nm = net(x.flip(-1))
    want = F.normalize(f * n + fm * nm, dim=1).numpy()
    np.testing.assert_allclose(embed(net, x, device="cpu"), want, atol=1e-6)


def _pairs_at(dist):
    """Embeddings whose pair i has squared distance dist[i] (first of each pair at 0)."""
    a = np.zeros((len(dist), 2))
    b = np.stack([np.sqrt(dist), np.zeros(len(dist))], 1)
    return np.stack([a, b], 1).reshape(2 * len(dist), 2)


def test_a_distance_equal_to_the_threshold_means_different():
    """Catches `dist < threshold` turned into `<=`."""
    emb = _pairs_at(np.array([0.0, 1.0, 2.0, 0.0]))  # all exact in floats
    r = verification_accuracy(emb, [True, False, False, True], folds=[0, 0, 1, 1],
                              thresholds=np.array([1.0]))
    assert r["accuracy"] == 1.0  # the pair at exactly 1.0 is called different: right


def test_fold_std_is_the_population_std():
    """Catches the fold std taken with ddof=1."""
    # one threshold 0.5: a same pair at 0 is right, a same pair at 1 is wrong
    emb = _pairs_at(np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
    r = verification_accuracy(emb, [True] * 6, folds=[0, 0, 1, 1, 2, 2],
                              thresholds=np.array([0.5]))
    accs = [1.0, 0.5, 0.0]
    assert r["accuracy"] == pytest.approx(np.mean(accs))
    assert r["std"] == pytest.approx(np.std(accs))


def test_group_verification_uses_the_given_folds():
    """Catches per-group verification ignoring the folds passed in."""
    # group 0: distances 0.05 .. 0.95; the 5 closest are same pairs except pair 4, and the
    # 6th (pair 5) is a same pair. Two folds (pairs 0-4, 5-9):
    # test fold 0, threshold from fold 1 (first best: 0.56): pairs 0-3 right, 4 wrong -> 4/5
    # test fold 1, threshold from fold 0 (first best: 0.36): pair 5 wrong, 6-9 right -> 4/5
    dist = 0.05 + np.arange(10) / 10
    issame = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0], bool)
    emb = np.concatenate([_pairs_at(dist), _pairs_at(dist)])
    groups = np.repeat([0, 1], 10)
    folds = np.tile(np.repeat([0, 1], 5), 2)
    r = group_verification(emb, np.concatenate([issame, issame]), groups, ["a", "b"],
                           folds=folds)
    assert r["a"] == pytest.approx(0.8) and r["b"] == pytest.approx(0.8)


def test_group_accuracy_refuses_mismatched_lengths():
    """Catches the length check of group_accuracy removed."""
    with pytest.raises(ValueError, match="same length"):
        group_accuracy(np.array([0, 1, 1]), np.array([0, 1, 0]), np.array([0, 1]))


# --- recognition.py ---------------------------------------------------------------------------
class _AngleNet(nn.Module):
    """The unit vector at angle = the image's mean value."""

    input_size = 8

    def forward(self, x):
        theta = x.mean(dim=(1, 2, 3))
        return torch.stack([theta.cos(), theta.sin()], 1)


def test_pooled_threshold_is_the_pooled_protocols_own():
    """Catches a hard-coded (or per-group) `threshold all`."""
    # angle gaps (same, different) per group: each group separable on its own distance scale
    # (squared distance 2 - 2 cos(gap)); "mid" has twice the pairs, so the pooled protocol's
    # best single threshold is mid's, strictly between near's and far's
    rows, groups, issame = [], [], []
    for g, (same, diff, n) in enumerate(((0.05, 0.2, 50), (0.32, 0.45, 100), (0.6, 1.2, 50))):
        for is_same, gap in ((True, same), (False, diff)):
            for i in range(n):
                rows += [0.001 * i, 0.001 * i + gap]
                groups.append(g)
                issame.append(is_same)
    v = torch.tensor(rows)  # image value v -> embedding angle v (AdaFace normalisation)
    images = ((v / 2 + 0.5)[:, None, None, None]).expand(-1, 3, 8, 8).contiguous()
    folds = np.arange(len(issame)) % 10
    bench = PairSet("three scales", images, np.array(issame), np.array(groups),
                    ["near", "mid", "far"], folds)
    res = recognition.evaluate_recognizer(_AngleNet(), bench, device="cpu")
    emb = embed(_AngleNet(), images, device="cpu", transform=adaface_input)
    pooled = verification_accuracy(emb, bench.issame, folds=folds)["threshold"]
    assert res["threshold all"] == pytest.approx(pooled)
    assert res["threshold near"] < res["threshold all"] < res["threshold far"]


def test_paper_layout_average_is_nan_when_a_benchmark_is_missing():
    """Catches the paper-layout average skipping NaN (a partial average)."""
    rows = [{"pretraining": "qdgs", "seed": 0, "benchmark": "lfw", "all": 0.9},
            {"pretraining": "qdgs", "seed": 0, "benchmark": "cplfw", "all": 0.8},
            {"pretraining": "random", "seed": 0, "benchmark": "lfw", "all": 0.85}]
    t = recognition.paper_layout_table(pd.DataFrame(rows))
    assert t.loc["qdgs", "average"] == pytest.approx((0.9 + 0.8) / 2)
    assert np.isnan(t.loc["random", "average"])


def test_training_logs_split_on_the_last_seed(tmp_path):
    """Catches run folder names split on their first `_seed`."""
    d = tmp_path / "train" / "my_seed_set_seed0_real"
    d.mkdir(parents=True)
    pd.DataFrame({"epoch": [1], "loss": [1.0]}).to_csv(d / "log.csv", index=False)
    logs = recognition.training_logs(tmp_path)
    assert list(logs.pretraining) == ["my_seed_set"]
    assert list(logs.seed) == [0] and list(logs.stage) == ["real"]


# --- claims.py --------------------------------------------------------------------------------
CLEAR_DOWN, UNCLEAR, CLEAR_UP = (-0.05, -0.04, -0.06), (0.03, -0.02, 0.0), (0.05, 0.04, 0.06)


def _paired(std_diffs, worst_diffs, benchmark="toy"):
    """Three seeds; QDGS - none differences of fair_std and of the worst group ("old")."""
    rows = []
    for seed, (ds, dw) in enumerate(zip(std_diffs, worst_diffs, strict=True)):
        base = {"young": 0.9, "old": 0.7, "fair_mean": 0.8, "fair_std": 0.1}
        qd = {"young": 0.9, "old": 0.7 + dw, "fair_mean": 0.8 + dw / 2, "fair_std": 0.1 + ds}
        for name, v in (("none", base), ("qdgs", qd)):
            rows.append({"pretraining": name, "seed": seed, "benchmark": benchmark, **v})
    return pd.DataFrame(rows)


def _fair(res):
    return claims.fairness_verdicts(res, "toy", ["young", "old"]).iloc[0]


@pytest.mark.parametrize("std, worst, verdict", [
    (CLEAR_DOWN, CLEAR_UP, "fairer"),
    (CLEAR_UP, CLEAR_DOWN, "less fair"),
    (CLEAR_DOWN, UNCLEAR, "no clear difference"),
    (UNCLEAR, CLEAR_UP, "no clear difference"),
    (CLEAR_UP, UNCLEAR, "no clear difference"),
    (UNCLEAR, CLEAR_DOWN, "no clear difference"),
    (CLEAR_DOWN, CLEAR_DOWN, "no clear difference"),
    (CLEAR_UP, CLEAR_UP, "no clear difference"),
])
def test_fairness_verdict_needs_both_spread_and_worst_group(std, worst, verdict):
    """Catches "fairer" / "less fair" decided by the spread (or the worst group) alone."""
    r = _fair(_paired(std, worst))
    assert r["worst group"] == "old"
    assert r["verdict"].split(" (")[0] == verdict


def test_fairer_flag_needs_a_narrower_spread_and_a_better_worst_group():
    """Catches the means' `fairer` flag ignoring the spread (or the worst group)."""
    assert _fair(_paired(CLEAR_DOWN, CLEAR_UP))["fairer"]
    assert not _fair(_paired(CLEAR_UP, CLEAR_UP))["fairer"]  # worst up, spread wider
    assert not _fair(_paired(CLEAR_DOWN, CLEAR_DOWN))["fairer"]


def test_fairness_verdicts_read_only_their_benchmark():
    """Catches the benchmark filter removed: other benchmarks' rows change nothing."""
    res = _paired(CLEAR_DOWN, UNCLEAR)
    other = _paired(CLEAR_UP, CLEAR_DOWN, benchmark="other")
    other[["young", "old"]] = 0.1
    both = claims.fairness_verdicts(pd.concat([res, other], ignore_index=True), "toy",
                                    ["young", "old"])
    pd.testing.assert_frame_equal(both, claims.fairness_verdicts(res, "toy", ["young", "old"]))


def test_label_audit_pairs_only_shared_seeds():
    """Catches label_audit_verdicts not intersecting the QDGS and random seeds."""
    cols = claims.label_audit_verdicts.__defaults__[0]
    qd = {0: 0.5, 1: 0.90, 2: 0.92}
    rnd = {1: 0.80, 2: 0.83, 3: 0.1}
    per_seed = pd.DataFrame({**{f"qdgs seed {s}": dict.fromkeys(cols, v) for s, v in qd.items()},
                             **{f"random seed {s}": dict.fromkeys(cols, v)
                                for s, v in rnd.items()}}).T
    r = claims.label_audit_verdicts(per_seed).loc["blue triangle"]
    assert r["seeds"] == 2
    assert r["qdgs"] == pytest.approx((0.90 + 0.92) / 2)
    assert r["random"] == pytest.approx((0.80 + 0.83) / 2)
    assert r["qdgs - random"] == pytest.approx(((0.90 - 0.80) + (0.92 - 0.83)) / 2)


# --- sampling.py ------------------------------------------------------------------------------
def _identity_inputs():
    gen = ToyGenerator(latent_dim=4)
    z = gen.sample_prior(5, seed=1).numpy()
    offsets = np.zeros((3, 4), dtype=np.float32)
    offsets[1:] = 0.5 * np.random.default_rng(0).normal(size=(2, 4))
    return gen, z, offsets


def test_every_manifest_image_is_its_solution_plus_its_offset(tmp_path):
    """Catches offsets subtracted, offset-major order, or tile instead of repeat."""
    gen, z, offsets = _identity_inputs()
    root = write_identity_dataset(tmp_path / "ds", gen.decode, z, np.array([0, 0, 1, 1, 1]),
                                  offsets, progress=False)
    x, _, df = read_identity_dataset(root)
    assert len(df) == 5 * 3
    with torch.no_grad():
        want = gen.decode(torch.as_tensor(z[df.solution.to_numpy()]
                                          + offsets[df.offset.to_numpy()]))
        # the test has power: another offset or the opposite offset gives another image
        other = gen.decode(torch.as_tensor(z[df.solution.to_numpy()]
                                           - offsets[(df.offset.to_numpy() + 1) % 3]))
    assert (want - other).abs().flatten(1).amax(1).min() > 3 / 255
    assert (x - want).abs().max() <= 0.5 / 255 + 1e-6


def test_identity_count_is_the_ceiling():
    """Catches ceil(n / per_identity) turned into a floor."""
    z = np.random.default_rng(0).normal(size=(11, 4))
    ids = cluster_identities(z, np.zeros(11, dtype=int), per_identity=2, seed=0)
    assert len(np.unique(ids)) == math.ceil(11 / 2)


def test_dataset_digest_covers_the_identities(tmp_path):
    """Catches identities left out of the dataset digest (a folder reused for other ids)."""
    gen, z, offsets = _identity_inputs()
    write_identity_dataset(tmp_path / "ds", gen.decode, z, np.array([0, 0, 1, 1, 2]), offsets,
                           progress=False)
    with pytest.raises(ValueError, match="other inputs"):
        write_identity_dataset(tmp_path / "ds", gen.decode, z, np.array([0, 1, 1, 2, 2]),
                               offsets, progress=False)


def test_jpeg_datasets_are_the_released_codes_jpegs(tmp_path):
    """image_format "jpg": JPEG files at PIL's default quality (what the released code's
    save("...jpg") wrote), read back as they are; a PNG folder is not reused as a JPEG one, and
    a PNG folder's record is the one earlier versions wrote (finished folders stay usable)."""
    import io
    import json

    from PIL import Image

    gen, z, offsets = _identity_inputs()
    ids = np.array([0, 0, 1, 1, 1])

    def decode(z):  # the toy's 8 px noise, smoothed to 32 px (JPEG's kind of image)
        return torch.nn.functional.interpolate(gen.decode(z), size=32, mode="bilinear")
    png = write_identity_dataset(tmp_path / "png", decode, z, ids, offsets, progress=False)
    jpg = write_identity_dataset(tmp_path / "jpg", decode, z, ids, offsets, progress=False,
                                 image_format="jpg")
    x_png, _, df_png = read_identity_dataset(png)
    x_jpg, _, df = read_identity_dataset(jpg)
    assert all(f.endswith(".jpg") for f in df.file) and all(f.endswith(".png")
                                                           for f in df_png.file)
    first = jpg / df.file[0]
    assert Image.open(first).format == "JPEG"
    again = io.BytesIO()
    Image.open(png / df_png.file[0]).save(again, "JPEG")  # PIL's defaults
    assert first.read_bytes() == again.getvalue()
    err = (x_jpg - x_png).abs().mean()  # lossy, yet far nearer than another image
    assert 0 < err < (x_png - x_png.roll(1, 0)).abs().mean() / 2
    assert "image_format" not in json.loads((png / "dataset.json").read_text())
    assert json.loads((jpg / "dataset.json").read_text())["image_format"] == "jpg"
    with pytest.raises(ValueError, match="other inputs"):
        write_identity_dataset(png, decode, z, ids, offsets, progress=False,
                               image_format="jpg")
    with pytest.raises(ValueError, match="image_format must be one of"):
        write_identity_dataset(tmp_path / "gif", decode, z, ids, offsets, progress=False,
                               image_format="gif")


def test_identity_labels_read_back_contiguous(tmp_path):
    """Catches read_identity_dataset returning raw identity ids as labels."""
    gen, z, offsets = _identity_inputs()
    root = write_identity_dataset(tmp_path / "ds", gen.decode, z, np.array([0, 0, 5, 9, 9]),
                                  offsets[:1], progress=False)
    _, labels, df = read_identity_dataset(root)
    rank = {0: 0, 5: 1, 9: 2}
    assert labels.tolist() == [rank[i] for i in df.identity]


# --- measures.py ------------------------------------------------------------------------------
def test_ranges_from_samples_are_the_rounded_q_quantiles():
    """Catches the lower quantile taken at 2q, and a lost q range check."""
    x = np.arange(1000) / 100.0  # 1% and 2% quantiles: 0.0999 and 0.1998
    samples = np.stack([x, x[::-1] * 2], 1)
    got = ranges_from_samples(samples, q=0.01, step=0.05)
    for col, (lo, hi) in zip(samples.T, got, strict=True):
        assert lo == pytest.approx(math.floor(np.quantile(col, 0.01) * 20) / 20)
        assert hi == pytest.approx(math.ceil(np.quantile(col, 0.99) * 20) / 20)
    assert got[0][0] != pytest.approx(math.floor(np.quantile(x, 0.02) * 20) / 20)
    for q in (0.5, 0.7, -0.1):
        with pytest.raises(ValueError, match="q must lie"):
            ranges_from_samples(samples, q=q)


def test_measure_range_must_be_increasing():
    """Catches lo <= hi accepted as a measure range."""
    with pytest.raises(ValueError, match="low < high"):
        Measure("m", "a", "b", "m", (0, 0), 3)


# --- face_synthesis.py ------------------------------------------------------------------------
class _FakeScorer:
    """Toy-face generator; measures: tanh of the first four latents (no CLIP)."""

    def __init__(self):
        self.generator = toy_faces.ToyFaces(image_size=16)

    def measures_of(self, z, batch_size=None):
        return np.tanh(np.asarray(z, dtype=np.float64)[:, :4])

    def weights_sha256(self):
        return "fake"


def _faces_profile(**kw):
    return get_profile("smoke", "faces", **{"dataset_solutions": 6, "offsets": 2,
                                            "image_size": 16, **kw})


def _archive(scorer, n=12):
    z = scorer.generator.sample_prior(n, seed=3).numpy()
    m = scorer.measures_of(z)
    return pd.DataFrame({**{f"measures_{k}": m[:, k] for k in range(4)},
                         **{f"solution_{k}": z[:, k] for k in range(z.shape[1])}})


@pytest.fixture(scope="module")
def face_sets(tmp_path_factory):
    scorer, p = _FakeScorer(), _faces_profile()
    qd = _archive(scorer)
    sets = face_synthesis.build_datasets(scorer, qd, p, tmp_path_factory.mktemp("faces"),
                                         progress=False)
    mans = {k: pd.read_csv(v / "manifest.csv") for k, v in sets.items()}
    return scorer, p, qd, sets, mans


def _latents(man):
    return solutions(man.drop_duplicates("solution").sort_values("solution"))


def test_archive_cap_keeps_a_spread_subsample_of_the_archive(face_sets):
    """Catches the cap keeping the archive's first rows instead of a uniform sample."""
    _, p, qd, _, mans = face_sets
    kept, archive = _latents(mans["qdgs"]), solutions(qd)
    assert len(kept) == p["dataset_solutions"]
    rows = [int(np.flatnonzero(np.abs(archive - k).max(1) < 1e-5)[0]) for k in kept]
    assert rows == sorted(set(rows))  # distinct archive rows, in archive order
    assert max(rows) >= p["dataset_solutions"]  # not just the first rows


def test_random_dataset_is_prior_samples_of_equal_size(face_sets):
    """Catches the random-sampling dataset built from the QDGS solutions."""
    scorer, _, qd, _, mans = face_sets
    rand, qdgs = _latents(mans["random"]), _latents(mans["qdgs"])
    assert len(rand) == len(qdgs)
    archive = solutions(qd)
    assert min(np.abs(archive - r).max(1).min() for r in rand) > 1e-3
    per_solution = mans["random"].drop_duplicates("solution").sort_values("solution")
    m = per_solution[[f"measures_{k}" for k in range(4)]].to_numpy()
    np.testing.assert_allclose(m, scorer.measures_of(rand), atol=1e-5)


def test_a_solution_short_of_images_shows_in_the_summary(face_sets, tmp_path):
    """Notebook 02's last check reads "images per solution": one number only when every
    solution has as many (an average would hide a short one)."""
    import shutil

    _, p, _, sets, _ = face_sets
    copy = tmp_path / "dataset_qdgs"
    shutil.copytree(sets["qdgs"], copy)
    man = pd.read_csv(copy / "manifest.csv")
    man.drop(index=man.index[man.solution == man.solution.iloc[0]][-1:]).to_csv(
        copy / "manifest.csv", index=False)
    s = face_synthesis.dataset_summary({"qdgs": copy}, p)
    assert s.loc["qdgs", "images per solution"] == f"{p['offsets'] - 1}-{p['offsets']}"


def test_dataset_summary_counts_solutions_not_images(face_sets):
    """Catches the summary's `solutions` (and per-bin counts) counting images."""
    _, p, _, sets, mans = face_sets
    s = face_synthesis.dataset_summary(sets, p)
    for name, man in mans.items():
        n = man.solution.nunique()
        assert s.loc[name, "images"] == len(man) == n * p["offsets"]
        assert s.loc[name, "solutions"] == n
        assert s.loc[name, "identities"] == man.identity.nunique()
        assert sum(s.loc[name, c] for c in s.columns if c.startswith("bin ")) == n
        assert s.loc[name, "images per solution"] == p["offsets"]


def test_latent_offsets_start_with_the_solution_itself():
    """Catches offset 0 not being zero (StyleGAN world)."""
    p = {"world": "ffhq", "offsets": 4, "offset_scale": 0.1}
    off = face_synthesis.latent_offsets(p, ToyGenerator(latent_dim=5))
    assert off.shape == (4, 5)
    assert (off[0] == 0).all() and (np.abs(off[1:]).max(1) > 0).all()
    assert np.abs(off).max() < 1.0  # offset_scale * N(0, 1)


def test_measure_shares_count_dark_skin_and_the_50s():
    """Catches the "50s" share (CLIP age < 0) inverted."""
    p = _faces_profile()
    m = np.zeros((4, 4))
    m[:, 0] = [0.5, 0.05, -0.2, -0.3]  # skin: one above the bin edge 0.1
    m[:, 3] = [-0.5, 0.2, 0.3, 0.4]  # age: one below 0 (the negative prompt: the 50s)
    shares = face_synthesis.measure_shares(m, p)
    assert shares == {"dark (CLIP skin > bin edge)": 0.25, "50s (CLIP age < 0)": 0.25}


def test_true_attribute_shares_count_the_old():
    """Catches the true "old" share (age attribute > 0.5) inverted."""
    z = np.zeros((4, 16), dtype=np.float32)
    z[:, 0] = [2.0, 0, 0, 0]  # skin attribute sigmoid(2.5 (z - 1.2)) > 0.5 iff z > 1.2
    z[:, 1] = [1.0, 0, 0, 0]  # age: > 0.5 iff z > 0.43
    z[:, 2] = [1.0, 1.0, 1.0, -1.0]  # hair: > 0.5 iff z > 0
    z[:, 3] = [-1.0, -1.0, 1.0, -1.0]  # masc: > 0.5 iff z > 0
    shares = face_synthesis.true_attribute_shares(z)
    assert shares == {"dark skin": 0.25, "old (50s)": 0.25, "long hair": 0.75,
                      "masculine": 0.25}


def test_measure_correlations_keep_the_sign():
    """Catches abs() on the Spearman rho."""
    p = _faces_profile()
    v = np.array([0.1, 0.4, 0.2, 0.9, 0.5])
    df = pd.DataFrame({"measures_0": v, "skin": v ** 3, "measures_3": v, "age": -v})
    rho = face_synthesis.measure_correlations(df, p)
    assert rho == {"skin": pytest.approx(1.0), "age": pytest.approx(-1.0)}


# --- utils.py ---------------------------------------------------------------------------------
def test_atomic_dir_restores_the_old_folder_when_the_final_rename_fails(tmp_path, monkeypatch):
    """Catches atomic_dir losing the old folder when the new one cannot take its name."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "old.txt").write_text("old")
    real = Path.rename

    def rename(self, target):
        if Path(target) == d and ".old." not in self.name:  # the new folder's final rename
            raise OSError("disk full")
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(d) as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in d.iterdir()) == ["old.txt"]
    assert (d / "old.txt").read_text() == "old"


def test_tensor_digest_is_the_data_not_its_layout_nor_its_chunking():
    """Catches a digest that misses a changed value, dtype or shape, or that depends on the
    memory layout (images read from HWC files are channels_last) or on the chunk size."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(5, 3, 4, 4, generator=g), torch.arange(5)
    d = tensor_digest(x, y)
    assert d == tensor_digest(x.contiguous(memory_format=torch.channels_last), y)
    assert d == tensor_digest(x, y, chunk=2) == tensor_digest(x, y.tolist())
    changed = x.clone()
    changed[4, 2, 3, 3] += 1e-6
    others = [tensor_digest(changed, y), tensor_digest(x.double(), y),
              tensor_digest(x.reshape(5, 3, 16), y), tensor_digest(x, y.flip(0)),
              tensor_digest(x[:4], y[:4]), tensor_digest(x.bfloat16(), y)]
    assert len({d, *others}) == 1 + len(others)


def test_pooled_accuracy_uses_the_benchmarks_own_folds():
    """Two groups stored one after the other (angle gaps same/different: 0.15/0.5, then
    0.6/1.0), folds given that mix both groups. On them the pooled protocol's first best
    threshold separates the first group (75%); contiguous folds would each hold one group,
    fit the other group's threshold on the rest, and score 50%."""
    rows, issame = [], []
    for same_gap, diff_gap in ((0.15, 0.5), (0.6, 1.0)):
        for i in range(100):
            rows += [0.001 * i, 0.001 * i + (same_gap if i % 2 == 0 else diff_gap)]
            issame.append(i % 2 == 0)
    v = torch.tensor(rows)  # image value v -> embedding angle v (AdaFace normalisation)
    images = ((v / 2 + 0.5)[:, None, None, None]).expand(-1, 3, 8, 8).contiguous()
    folds = np.arange(len(issame)) // 2 % 10  # each fold: same and different, both groups
    bench = PairSet("two scales", images, np.array(issame), folds=folds)
    res = recognition.evaluate_recognizer(_AngleNet(), bench, device="cpu")
    assert res["all"] == pytest.approx(0.75)
