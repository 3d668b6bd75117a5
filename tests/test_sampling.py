"""Archive -> dataset: bins, identity clusters, manifests, atomic writes and resumption."""

import numpy as np
import pandas as pd
import pytest
import torch
from toys import ToyGenerator

from qdgs_lib.sampling import (
    assign_bins,
    balanced_indices,
    bin_names,
    cluster_identities,
    read_identity_dataset,
    read_image_dataset,
    write_identity_dataset,
    write_image_dataset,
)

INF = np.inf


def test_assign_bins_row_major_and_outside():
    m = np.array([[-0.5, 0.2], [0.0, -0.2], [0.5, 0.05], [2.0, 0.0]])
    three = [(-1, -0.1), (-0.1, 0.1), (0.1, 1)]
    two = [(-INF, 0.0), (0.0, INF)]
    np.testing.assert_array_equal(assign_bins(m, [three, two]), [1, 2, 5, -1])
    # half-open: 0.0 falls in the upper interval
    np.testing.assert_array_equal(assign_bins(np.array([[0.0]]), [two], warn_empty=False), [1])
    # the open ends take the infinities alike; NaN falls in no bin
    np.testing.assert_array_equal(assign_bins(np.array([[-INF], [INF], [np.nan]]), [two],
                                              warn_empty=False), [0, 1, -1])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        assign_bins(m[:, :1], [three, two])


def test_a_split_outside_the_values_is_named_before_balancing_fails():
    """An archive whose range lies above 0 cannot fill the bin below 0: assign_bins says so
    (balanced_indices then fails), unless told that empty bins are expected."""
    import warnings

    m = np.column_stack([np.linspace(0.01, 0.06, 20), np.linspace(-0.1, 0.1, 20)])
    split = [[(-np.inf, 0), (0, np.inf)]] * 2
    with pytest.warns(UserWarning, match=r"bins\[0\]: 1 interval\(s\) \[\(-inf, 0\)\] hold "
                                         r"none of the 20 values of measure 0.*\[0.01, 0.06\]"):
        groups = assign_bins(m, split)
    with pytest.raises(ValueError, match="cannot balance"):
        balanced_indices(groups, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assign_bins(m, split, warn_empty=False)
        assign_bins(m, [[(-np.inf, 0.03), (0.03, np.inf)], split[1]])  # inside: quiet
        # -inf is a value of the open lower interval (as assign_bins files it)
        assert assign_bins(np.array([[-np.inf], [0.01], [0.02]]), split[:1]).tolist() == [0, 1, 1]


def test_bin_names_follow_assign_bins_order():
    two = [(-INF, 0.0), (0.0, INF)]
    names = bin_names([two, two], [["blue", "red"], ["square", "triangle"]])
    assert names == ["blue-square", "blue-triangle", "red-square", "red-triangle"]
    m = np.array([[0.3, -0.2]])  # red, square
    assert names[assign_bins(m, [two, two])[0]] == "red-square"
    assert bin_names([two, [(-INF, INF)]]) == ["0-0", "1-0"]
    with pytest.raises(ValueError, match="one entry per interval"):
        bin_names([two, two], [["blue", "red"], ["square"]])


def test_balanced_indices_give_every_bin_the_same_count():
    rng = np.random.default_rng(0)
    b = np.array([0] * 30 + [1] * 7 + [2] * 12 + [-1] * 5)
    rng.shuffle(b)
    keep = balanced_indices(b, 3, seed=1)
    assert np.bincount(b[keep], minlength=3).tolist() == [7, 7, 7]  # the smallest bin's count
    assert (np.diff(keep) > 0).all() and (b[keep] >= 0).all()  # sorted, unique, no bin -1
    np.testing.assert_array_equal(keep, balanced_indices(b, 3, seed=1))  # seeded
    assert not np.array_equal(keep, balanced_indices(b, 3, seed=2))
    assert np.bincount(b[balanced_indices(b, 3, per_bin=5)]).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match=r"bins \{1: 7\} hold fewer.*\[30, 7, 12\]"):
        balanced_indices(b, 3, per_bin=10)
    with pytest.raises(ValueError, match=r"bins \{3: 0\} hold fewer"):  # an empty bin
        balanced_indices(b, 4)
    with pytest.raises(ValueError, match="lie in"):
        balanced_indices(b, 2)
    with pytest.raises(ValueError, match="per_bin must be a positive int"):
        balanced_indices(b, 3, per_bin=0)
    with pytest.raises(ValueError, match="num_bins must be a positive int"):
        balanced_indices(b, 0)
    with pytest.raises(ValueError, match=r"search longer\)?$"):  # empty: lowering can't help
        balanced_indices(b, 4, per_bin=2)
    with pytest.raises(ValueError, match="integer"):
        balanced_indices(b.astype(float), 3)


def test_cluster_identities_sizes_stay_within_bins():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 4))
    bins = np.repeat([0, 1, 2, -1], 10)
    ids = cluster_identities(z, bins, per_identity=2, seed=0)
    assert (ids[bins == -1] == -1).all()
    for b in (0, 1, 2):
        members = ids[bins == b]
        assert len(np.unique(members)) == 5  # ceil(10 / 2) identities per bin
        # identities never span two bins
        assert not set(members) & set(ids[(bins != b) & (bins >= 0)])
    # deterministic under the seed
    np.testing.assert_array_equal(ids, cluster_identities(z, bins, 2, seed=0))
    with pytest.raises(ValueError, match="per_identity must be >= 1"):
        cluster_identities(z, bins, 0)


def _setup(n=6, k=3):
    gen = ToyGenerator(latent_dim=4)
    z = gen.sample_prior(n, seed=1).numpy()
    ids = np.array([0, 0, 1, 1, 2, -1])[:n]
    offsets = np.zeros((k, 4), dtype=np.float32)
    offsets[1:] = 0.3 * np.random.default_rng(0).normal(size=(k - 1, 4))
    extra = pd.DataFrame({"bin": [0, 0, 1, 1, 2, -1][:n], "measure_0": np.arange(n) / n})
    return gen, z, ids, offsets, extra


def test_identity_dataset_manifest_integrity(tmp_path):
    gen, z, ids, offsets, extra = _setup()
    root = write_identity_dataset(tmp_path / "ds", gen.decode, z, ids, offsets, extra,
                                  progress=False)
    x, labels, df = read_identity_dataset(root)
    assert len(df) == 5 * 3 and x.shape == (15, 3, 8, 8)
    assert set(df["identity"]) == {0, 1, 2} and (df["solution"] != 5).all()
    assert df.groupby("identity").size().tolist() == [6, 6, 3]
    assert np.allclose(np.load(root / "offsets.npy"), offsets)
    # the image of (solution, offset 0) is the decoded solution itself
    row = df[(df.solution == 2) & (df.offset == 0)].index[0]
    expect = gen.decode(torch.as_tensor(z[2:3]))
    assert (x[row] - expect[0]).abs().max() <= 1 / 255 + 1e-6
    assert not (root / ".parts").exists()
    assert labels.max() == 2
    assert df["bin"].dtype.kind == "i"  # an int column of extra stays int
    # uint8: the files' values, same layout; scaled, exactly the float read
    x8, labels8, _ = read_identity_dataset(root, torch.uint8)
    assert x8.dtype == torch.uint8 and x8.stride() == x.stride()
    assert torch.equal(x8.float() / 255, x) and torch.equal(labels8, labels)
    with pytest.raises(ValueError, match="float32 or torch.uint8"):
        read_identity_dataset(root, torch.float16)


def test_identity_dataset_resumes_after_interruption(tmp_path):
    gen, z, ids, offsets, extra = _setup()
    calls = []

    def flaky(latents):
        calls.append(len(latents))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while writing the second identity
        return gen.decode(latents)

    with pytest.raises(KeyboardInterrupt):
        write_identity_dataset(tmp_path / "ds", flaky, z, ids, offsets, extra, progress=False)
    assert not (tmp_path / "ds" / "manifest.csv").exists()
    with pytest.raises(FileNotFoundError, match="unfinished"):
        read_identity_dataset(tmp_path / "ds")
    calls.clear()

    def counting(latents):
        calls.append(len(latents))
        return gen.decode(latents)

    root = write_identity_dataset(tmp_path / "ds", counting, z, ids, offsets, extra,
                                  progress=False)
    assert calls == [6, 3]  # identity 0 was not written again
    _, _, df = read_identity_dataset(root)
    fresh = write_identity_dataset(tmp_path / "fresh", gen.decode, z, ids, offsets, extra,
                                   progress=False)
    pd.testing.assert_frame_equal(df, pd.read_csv(fresh / "manifest.csv"))
    # another set of offsets in the same folder is refused
    (root / "manifest.csv").unlink()
    with pytest.raises(ValueError, match="other inputs"):
        write_identity_dataset(root, gen.decode, z, ids, offsets + 1, extra, progress=False)


def test_a_resume_skips_only_identities_written_whole(tmp_path):
    """An identity counts as written when its part file exists, and part files appear
    atomically: a kill mid-identity leaves nothing of it (it once left some rows in an
    appended CSV, and the resume then skipped the rest: a dataset short of images)."""
    gen, z, ids, offsets, extra = _setup()
    root = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        def dies_in_the_writer(latents):
            if len(list((root / ".parts").glob("*.csv"))) == 1:
                raise KeyboardInterrupt
            return gen.decode(latents)
        write_identity_dataset(root, dies_in_the_writer, z, ids, offsets, extra,
                               progress=False)
    assert [p.name for p in (root / ".parts").iterdir()] == ["0.csv"]
    write_identity_dataset(root, gen.decode, z, ids, offsets, extra, progress=False)
    _, _, df = read_identity_dataset(root)
    assert df.groupby("identity").size().tolist() == [6, 6, 3]


def test_image_dataset_atomic_and_round_trip(tmp_path):
    imgs = torch.rand(4, 3, 8, 8)
    root = write_image_dataset(tmp_path / "d", imgs, ["a", "b", "a", "b"])
    x, y = read_image_dataset(root, ["a", "b"])
    assert y.tolist() == [0, 1, 0, 1] and (x - imgs).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(FileExistsError):
        write_image_dataset(root, imgs, ["a"] * 4)
    with pytest.raises(ValueError, match="empty"):
        write_image_dataset(tmp_path / "e", imgs[:0], [])
    with pytest.raises(ValueError, match=r"columns \['class'\] are written by"):
        write_image_dataset(tmp_path / "m", imgs, ["a"] * 4, pd.DataFrame({"class": [0] * 4}))
    with pytest.raises(ValueError, match="not in"):
        read_image_dataset(root, ["a"])
    # class names that look like numbers or missing values are read as written
    names = ["01", "NA", "2", "1.0"]
    odd = write_image_dataset(tmp_path / "odd", imgs, names)
    assert read_image_dataset(odd, names)[1].tolist() == [0, 1, 2, 3]
    assert not list(tmp_path.glob(".d.*"))  # no temp folder left behind


def test_identity_dataset_refuses_a_folder_of_other_inputs(tmp_path):
    gen, z, ids, offsets, extra = _setup()
    root = write_identity_dataset(tmp_path / "ds", gen.decode, z, ids, offsets, extra,
                                  progress=False)
    # the same inputs: the finished dataset is reused as is
    assert write_identity_dataset(root, gen.decode, z, ids, offsets, extra,
                                  progress=False) == root
    with pytest.raises(ValueError, match="other inputs"):
        write_identity_dataset(root, gen.decode, z[::-1].copy(), ids, offsets, extra,
                               progress=False)
    # the same identities in another integer type are the same dataset
    assert write_identity_dataset(root, gen.decode, z, ids.astype(np.int32), offsets, extra,
                                  progress=False) == root
    # other image size, other generator/alignment settings, other extra columns: refused
    for kw in ({"size": 16}, {"settings": {"align": "mtcnn"}},
               {"extra": extra.assign(bin=extra["bin"] + 1)}):
        args = {"extra": extra, **kw}
        with pytest.raises(ValueError, match="other inputs"):
            write_identity_dataset(root, gen.decode, z, ids, offsets, progress=False, **args)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        write_identity_dataset(tmp_path / "junk", gen.decode, z, ids, offsets, extra,
                               progress=False)
