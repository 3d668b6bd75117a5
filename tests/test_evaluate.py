import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from qdgs_lib.data.benchmarks import read_bin, read_reference_numbers, read_rfw, write_bin
from qdgs_lib.evaluate import (
    contiguous_folds,
    embed,
    fairness,
    group_accuracy,
    group_verification,
    verification_accuracy,
)


def pairs(n, separable, rng):
    """Unit embeddings for n pairs; same pairs identical, different pairs orthogonal-ish."""
    issame = np.arange(n) % 2 == 0
    a = rng.normal(size=(n, 32))
    b = np.where(issame[:, None], a + 0.01 * rng.normal(size=(n, 32)), rng.normal(size=(n, 32)))
    if not separable:
        b = rng.normal(size=(n, 32))
    emb = np.stack([a, b], 1).reshape(2 * n, 32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), issame


def test_ten_fold_protocol_on_separable_and_random_pairs():
    rng = np.random.default_rng(0)
    emb, issame = pairs(600, True, rng)
    r = verification_accuracy(emb, issame)
    assert r["accuracy"] == 1.0 and r["std"] == 0.0 and r["folds"] == 10
    emb, issame = pairs(6000, False, rng)
    assert abs(verification_accuracy(emb, issame)["accuracy"] - 0.5) < 0.03


def test_ten_fold_protocol_hand_checked_case():
    # 10 pairs: distances 0.0..0.9; same pairs are the 5 closest except pair 4 (a mistake)
    dist = np.arange(10) / 10
    issame = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0], bool)
    e1 = np.tile([1.0, 0.0], (10, 1))
    # |e1 - e2|^2 = 2 - 2 cos(theta) = dist -> cos = 1 - dist / 2
    cos = 1 - dist / 2
    e2 = np.stack([cos, np.sqrt(1 - cos**2)], 1)
    emb = np.stack([e1, e2], 1).reshape(20, 2)
    r = verification_accuracy(emb, issame, n_folds=10)
    # By hand (one pair per fold, first best threshold on the other nine):
    # pairs 0-2, 6-9 -> t=0.31, right; pair 3 -> t=0.21 ties first, wrong; pair 4 (different,
    # d=0.4) -> t=0.51, wrong; pair 5 (same, d=0.5) -> t=0.31, wrong. 7/10.
    assert r["accuracy"] == pytest.approx(0.7)


def test_folds_are_contiguous():
    f = contiguous_folds(25, 10)
    assert list(f[:3]) == [0, 0, 0] and f[-1] == 9 and np.all(np.diff(f) >= 0)
    with pytest.raises(ValueError, match="need at least 10 pairs"):
        contiguous_folds(5, 10)


def test_fairness_metrics_on_known_numbers():
    r = fairness({"a": 0.9, "b": 0.8, "c": 0.95, "d": 0.85})
    assert r["mean"] == pytest.approx(0.875)
    assert r["std"] == pytest.approx(np.std([0.9, 0.8, 0.95, 0.85]))
    assert r["ser"] == pytest.approx(0.2 / 0.05)
    assert fairness({"a": 1.0, "b": 0.9})["ser"] == float("inf")
    assert fairness({"a": 1.0, "b": 1.0})["ser"] == 1.0  # no errors anywhere: all equal


def test_one_fold_is_refused_not_scored_at_threshold_zero():
    rng = np.random.default_rng(0)
    emb, same = pairs(8, True, rng)
    with pytest.raises(ValueError, match="one fold"):
        verification_accuracy(emb, same, folds=np.zeros(len(same)))


def test_group_table_draws_no_error_bar_for_an_infinite_mean():
    from qdgs_lib.recognition import group_table

    rows = [{"benchmark": "b", "pretraining": "qdgs", "x": 1.0, "y": 0.9, "fair_mean": 0.95,
             "fair_std": 0.05, "fair_ser": ser, "all": 0.95} for ser in (float("inf"), 2.0)]
    t = group_table(pd.DataFrame(rows), "b", ["x", "y"])
    assert t.loc["qdgs", "fair_ser"] == float("inf")
    assert np.isnan(t.attrs["err"].loc["qdgs", "fair_ser"])
    assert t.attrs["err"].loc["qdgs", "x"] == 0.0


def test_group_verification_reports_each_group():
    rng = np.random.default_rng(1)
    e1, s1 = pairs(200, True, rng)
    e2, s2 = pairs(200, False, rng)
    emb = np.concatenate([e1, e2])
    r = group_verification(emb, np.concatenate([s1, s2]), np.repeat([0, 1], 200), ["easy", "hard"])
    assert r["easy"] == 1.0 and r["hard"] < 0.7 and r["fair_ser"] > 1


def test_group_accuracy_is_unweighted_mean():
    r = group_accuracy(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 1]),
                       np.array([0, 0, 1, 1, 1]))
    assert r["0"] == 0.5 and r["1"] == 1.0 and r["mean"] == 0.75


def test_flip_fused_embeddings_are_unit_and_flip_invariant():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16))
    x = torch.rand(6, 3, 8, 8)
    e = embed(model, x)
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert np.allclose(embed(model, x.flip(-1)), e, atol=1e-5)


def test_bin_round_trip(tmp_path):
    imgs = torch.rand(8, 3, 112, 112)
    imgs[::2] = imgs[::2].round()  # some structure that survives PNG exactly
    write_bin(tmp_path / "toy.bin", imgs, [True, False, True, False], fmt="PNG")
    ps = read_bin(tmp_path / "toy.bin")
    assert ps.images.shape == (8, 3, 112, 112) and list(ps.issame) == [True, False, True, False]
    assert ps.images.dtype == torch.uint8  # as stored: a quarter of float32's memory
    assert torch.allclose(ps.images / 255, (imgs * 255).round() / 255, atol=1e-6)
    # read at another size: resized in float
    small = read_bin(tmp_path / "toy.bin", image_size=56).images
    assert small.dtype == torch.float32 and small.shape == (8, 3, 56, 56)
    from qdgs_lib.utils import resize_square
    assert 0 <= small.min() and small.max() <= 1  # resized in [0, 1], not 0..255
    assert torch.allclose(small, resize_square(ps.images / 255, 56), atol=1e-6)


def test_uint8_images_embed_exactly_as_their_float_copies():
    """Benchmarks stay uint8 in memory; embed scales each batch, which must give the
    embeddings of the float set bit for bit (batches of 4 over 10 images: a short last one)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16))
    x8 = torch.randint(0, 256, (10, 8, 8, 3), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(0)).permute(0, 3, 1, 2)
    assert np.array_equal(embed(model, x8, batch_size=4), embed(model, x8 / 255, batch_size=4))


def test_bin_with_numpy_items_and_bytes_encoding(tmp_path):
    # old files: items are uint8 numpy arrays of JPEG bytes, pickled by python 2 (bytes)
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (112, 112), (200, 10, 10)).save(buf, format="JPEG")
    item = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    (tmp_path / "old.bin").write_bytes(pickle.dumps(([item, item], [True]), protocol=2))
    ps = read_bin(tmp_path / "old.bin")
    assert ps.images.shape == (2, 3, 112, 112) and ps.images[0, 0].float().mean() > 0.7 * 255


def test_bad_bin_files_give_clear_errors(tmp_path):
    write_bin(tmp_path / "ok.bin", torch.rand(4, 3, 112, 112), [True, False])
    data = (tmp_path / "ok.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        read_bin(tmp_path / "cut.bin")
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([b"x"] * 3, [True])))
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        read_bin(tmp_path / "odd.bin")
    with pytest.raises(FileNotFoundError, match="lfw.bin"):
        read_bin(tmp_path / "missing.bin")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([Evil(), Evil()], [True])))
    with pytest.raises(pickle.UnpicklingError, match="allow-list"):
        read_bin(tmp_path / "evil.bin")


def test_rfw_layout(tmp_path):
    from PIL import Image
    for race in ["African", "Asian"]:
        for ident in ["m.01", "m.02"]:
            d = tmp_path / "test" / "data" / race / ident
            d.mkdir(parents=True)
            for n in (1, 2):
                Image.new("RGB", (112, 112), (n * 50, 0, 0)).save(d / f"{ident}_{n:04d}.jpg")
        t = tmp_path / "test" / "txts" / race
        t.mkdir(parents=True)
        (t / f"{race}_pairs.txt").write_text("m.01 1 2\nm.01 1 m.02 2\n")
    ps = read_rfw(tmp_path, races=["African", "Asian"])
    assert ps.images.shape == (8, 3, 112, 112)
    assert list(ps.issame) == [True, False, True, False] and list(ps.groups) == [0, 0, 1, 1]
    # the files each line names: "m.01 1 2" -> _0001 (red 50), _0002 (red 100); the negative
    # "m.01 1 m.02 2" -> m.01_0001 (50), m.02_0002 (100)
    red = ps.images[:, 0].float().mean((1, 2))
    assert torch.allclose(red, torch.tensor([50.0, 100.0] * 4), atol=3), red
    (tmp_path / "test/txts/Asian/Asian_pairs.txt").write_text("m.01 1 9\n")
    with pytest.raises(FileNotFoundError, match="m.01_0009"):
        read_rfw(tmp_path, races=["Asian"])


def test_reference_numbers_csv(tmp_path):
    f = tmp_path / "paper_numbers.csv"
    f.write_text("pretraining,benchmark,accuracy\nqdgs,lfw,99.5\nrandom,lfw,99.25\n"
                 "qdgs,rfw_african,90\n")
    t = read_reference_numbers(f)
    assert t.loc["random", "lfw"] == 0.9925 and t.loc["qdgs", "rfw_african"] == 0.9
    assert np.isnan(t.loc["random", "rfw_african"])
    for text, match in [("pretraining,benchmark\nqdgs,lfw\n", "missing column"),
                        ("pretraining,benchmark,accuracy\nqdgs,lfw2,99\n", "unknown benchmark"),
                        ("pretraining,benchmark,accuracy\nqdgs,lfw,0.99x\n", "percentage"),
                        ("pretraining,benchmark,accuracy\nqdgs,lfw,199\n", "percentage"),
                        ("pretraining,benchmark,accuracy\nqdgs,lfw,99\nqdgs,lfw,98\n", "twice")]:
        f.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_reference_numbers(f)


def test_paper_layout_table_with_reference(tmp_path):
    from qdgs_lib.recognition import paper_layout_table

    rows = []
    for pre, base in [("qdgs", 0.9), ("random", 0.8)]:
        for seed in (0, 1):
            rows.append({"pretraining": pre, "seed": seed, "benchmark": "lfw",
                         "all": base + seed / 100})
            rows.append({"pretraining": pre, "seed": seed, "benchmark": "cplfw", "all": base - 0.1})
            rows.append({"pretraining": pre, "seed": seed, "benchmark": "rfw", "all": base,
                         "African": base - 0.2, "Asian": base, "Caucasian": base + 0.05,
                         "Indian": base})
            rows.append({"pretraining": pre, "seed": seed, "benchmark": "toy", "all": 0.5})
    results = pd.DataFrame(rows)
    t = paper_layout_table(results)
    assert list(t.index) == ["random", "qdgs"]
    assert list(t.columns) == ["lfw", "cplfw", "average", "rfw_african", "rfw_asian",
                               "rfw_caucasian", "rfw_indian"]
    assert t.loc["qdgs", "lfw"] == pytest.approx(0.905)
    assert t.loc["qdgs", "average"] == pytest.approx((0.905 + 0.8) / 2)
    assert t.loc["random", "rfw_african"] == pytest.approx(0.6)
    f = tmp_path / "ref.csv"
    f.write_text("pretraining,benchmark,accuracy\nqdgs,lfw,99\nqdgs,cplfw,90\n")
    both = paper_layout_table(results, read_reference_numbers(f))
    assert both.loc[("reference", "qdgs"), "average"] == pytest.approx(0.945)
    assert np.isnan(both.loc[("reference", "qdgs"), "rfw_african"])
    assert both.loc[("ours", "qdgs"), "lfw"] == pytest.approx(0.905)
    assert paper_layout_table(results[results.benchmark == "toy"]).empty


def test_rfw_photos_are_aligned_with_their_landmarks(tmp_path):
    """The RFW release's photos are not aligned: with <Race>_lmk.txt each face is warped to
    the ArcFace 112x112 template (resizing the whole photo would give wrong accuracies
    without any error); landmarks that cannot be the photo's are refused."""
    from PIL import Image

    from qdgs_lib.align import ARCFACE_TEMPLATE
    from qdgs_lib.utils import BadFileError

    yy, xx = np.mgrid[0:112, 0:112] / 111.0
    aligned = np.stack([xx, yy, np.exp(-((xx - 0.5) ** 2 + (yy - 0.6) ** 2) / 0.02)], -1)
    aligned = (aligned * 255).round().astype(np.uint8)
    # the photo: the aligned face at 1.5x, 20 px from the left, 30 px from the top
    photo = Image.new("RGB", (220, 240))
    photo.paste(Image.fromarray(aligned).resize((168, 168), Image.BILINEAR), (20, 30))
    pts = ARCFACE_TEMPLATE * 1.5 + [20.25, 30.25]  # (pixel centres: +0.25 at 1.5x)
    race, ident = "Asian", "m.01"
    d = tmp_path / "test" / "data" / race / ident
    d.mkdir(parents=True)
    for n in (1, 2):
        photo.save(d / f"{ident}_{n:04d}.jpg", quality=98)
    t = tmp_path / "test" / "txts" / race
    t.mkdir(parents=True)
    (t / f"{race}_pairs.txt").write_text("m.01 1 2\n")
    want = torch.from_numpy(aligned).permute(2, 0, 1).float() / 255
    with pytest.raises(BadFileError, match=r"220x240 and .*Asian_lmk.txt is missing"):
        read_rfw(tmp_path, races=[race])  # a photo without landmarks: not resized whole
    lines = [f"/test/data/{race}/{ident}/{ident}_{n:04d}.jpg 5 " + " ".join(
        f"{v:.3f}" for v in pts.ravel()) for n in (1, 2)]
    (t / f"{race}_lmk.txt").write_text("\n".join(lines) + "\n")
    got = read_rfw(tmp_path, races=[race])
    assert got.images.shape == (2, 3, 112, 112)
    err = (got.images[0] / 255 - want).abs().mean()
    shifted = (got.images[0, :, :, 1:] / 255 - want[:, :, :-1]).abs().mean()  # 1 px off
    assert err < 0.005 < shifted, (err, shifted)
    (t / f"{race}_lmk.txt").write_text(lines[0] + "\n")
    with pytest.raises(BadFileError, match="m.01_0002.jpg has no landmarks"):
        read_rfw(tmp_path, races=[race])
    far = pts * 3  # another photo's coordinates (e.g. the photos were already cropped)
    (t / f"{race}_lmk.txt").write_text("\n".join(
        f"/test/data/{race}/{ident}/{ident}_{n:04d}.jpg 5 " + " ".join(map(str, far.ravel()))
        for n in (1, 2)))
    with pytest.raises(BadFileError, match="outside the 220x240 image"):
        read_rfw(tmp_path, races=[race])
    (t / f"{race}_lmk.txt").write_text(f"/test/data/{race}/{ident}/{ident}_0001.jpg 5 1 2\n")
    with pytest.raises(BadFileError, match="x1 y1 ... x5 y5"):
        read_rfw(tmp_path, races=[race])


def test_thresholds_above_two_are_candidates():
    """InsightFace's grid is arange(0, 4, 0.01): squared distances of unit embeddings reach 4,
    and a model whose pairs all lie past 2 must still be separable."""
    issame = np.tile([True, False], 20)
    emb = []
    for same in issame:
        c = 1 - (2.5 if same else 3.5) / 2  # squared distance 2 - 2 cos
        emb += [[1.0, 0.0], [c, np.sqrt(1 - c * c)]]
    r = verification_accuracy(np.asarray(emb), issame)
    assert r["accuracy"] == 1.0 and 2.4 < r["threshold"] < 3.6


def test_rfw_folds_are_contiguous_blocks_per_race(tmp_path):
    """RFW's protocol: fold = line // 600 of each race's 6000 lines (here 20 lines: 2 per fold),
    counted per race."""
    from PIL import Image
    for race in ["African", "Asian"]:
        d = tmp_path / "test" / "data" / race / "m.01"
        d.mkdir(parents=True)
        for n in (1, 2):
            Image.new("RGB", (112, 112), (n * 50, 0, 0)).save(d / f"m.01_{n:04d}.jpg")
        t = tmp_path / "test" / "txts" / race
        t.mkdir(parents=True)
        (t / f"{race}_pairs.txt").write_text("m.01 1 2\n" * 20)
    ps = read_rfw(tmp_path, races=["African", "Asian"])
    assert list(ps.folds) == list(np.repeat(np.arange(10), 2)) * 2
    assert list(ps.groups) == [0] * 20 + [1] * 20


def test_rfw_alignment_rounds_to_the_nearest_level(tmp_path):
    """A flat photo stays flat through the landmark warp: the warp's float values (e.g.
    199.99998) round to the nearest uint8 level, not down to 199."""
    from PIL import Image

    from qdgs_lib.align import ARCFACE_TEMPLATE

    race, ident = "Asian", "m.01"
    d = tmp_path / "test" / "data" / race / ident
    d.mkdir(parents=True)
    for n in (1, 2):
        Image.new("RGB", (220, 240), (200, 100, 50)).save(d / f"{ident}_{n:04d}.jpg",
                                                          quality=98)
    t = tmp_path / "test" / "txts" / race
    t.mkdir(parents=True)
    (t / f"{race}_pairs.txt").write_text("m.01 1 2\n")
    pts = ARCFACE_TEMPLATE * 1.5 + [20.25, 30.25]
    (t / f"{race}_lmk.txt").write_text("".join(
        f"/test/data/{race}/{ident}/{ident}_{n:04d}.jpg 5 "
        + " ".join(f"{v:.3f}" for v in pts.ravel()) + "\n" for n in (1, 2)))
    got = read_rfw(tmp_path, races=[race]).images
    assert [torch.unique(got[:, c]).tolist() for c in range(3)] == [[200], [100], [50]]


def test_group_verification_takes_its_threshold_grid():
    """Distances of 0.004 (same) and 0.012 (different): InsightFace's 0.01 grid separates them
    only at 0.01; a grid without a threshold between them cannot, and says so in accuracy."""
    issame = np.tile([True, False], 20)
    emb = []
    for same in issame:
        c = 1 - (0.004 if same else 0.012) / 2  # squared distance 2 - 2 cos
        emb += [[1.0, 0.0], [c, np.sqrt(1 - c * c)]]
    emb = np.asarray(emb)
    groups = np.repeat([0, 1], 20)
    fine = group_verification(emb, issame, groups, ["a", "b"])
    assert fine["a"] == fine["b"] == 1.0 and fine["threshold a"] == pytest.approx(0.01)
    coarse = group_verification(emb, issame, groups, ["a", "b"],
                                thresholds=np.arange(0, 4, 0.05))
    assert coarse["a"] == 0.5 and coarse["threshold a"] in (0.0, 0.05)
