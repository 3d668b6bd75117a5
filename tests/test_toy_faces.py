"""Toy-face world: determinism, gradients, the FFHQ-like bias, the benchmark, the faces CLIP."""

import numpy as np
import pytest
import torch

from qdgs_lib.data.benchmarks import read_rfw
from qdgs_lib.data.toy_world import GROUPS, real_training_set, write_benchmark
from qdgs_lib.generators.toy_faces import ToyFaces, attributes, render


def test_render_is_deterministic_and_in_range():
    gen = ToyFaces()
    z1, z2 = gen.sample_prior(8, seed=3), gen.sample_prior(8, seed=3)
    assert torch.equal(z1, z2)
    x1, x2 = gen.decode(z1), gen.decode(z2)
    assert x1.shape == (8, 3, 64, 64)
    assert torch.equal(x1, x2)
    assert x1.min() >= 0 and x1.max() <= 1 and torch.isfinite(x1).all()
    assert not torch.equal(gen.decode(gen.sample_prior(8, seed=4)), x1)


def test_gradients_reach_every_latent_coordinate():
    z = ToyFaces().sample_prior(4, seed=0).requires_grad_(True)
    render(z).mean().backward()
    assert torch.isfinite(z.grad).all()
    # every latent coordinate (attributes, identity, nuisance) changes the image
    assert (z.grad.abs().sum(0) > 0).all()


def test_prior_bias_matches_ffhq_ratios():
    a = attributes(ToyFaces().sample_prior(200_000, seed=0))
    dark = float((a["skin"] > 0.5).float().mean())
    old = float((a["age"] > 0.5).float().mean())
    # FFHQ-like: about 7:1 light:dark and 2:1 young:old
    assert 0.105 < dark < 0.125
    assert 6.0 < (1 - dark) / dark < 8.5
    assert 0.31 < old < 0.35
    assert 1.8 < (1 - old) / old < 2.2


def test_features_lose_contrast_on_dark_skin():
    """Moving the inner features (eyes, brows, nose: z[6:12]) changes a dark face less."""
    z = ToyFaces().sample_prior(64, seed=1)
    z[:, 12:16] = 0  # same pose and lighting

    def feature_change(skin_z: float) -> float:
        a = z.clone()
        a[:, 0] = skin_z
        b = a.clone()
        b[:, 6:12] += 1.0
        with torch.no_grad():
            return float((render(a) - render(b))[..., 16:48, 16:48].abs().mean())

    light, dark = feature_change(-1.5), feature_change(3.0)
    assert dark < 0.5 * light, (dark, light)


def test_benchmark_layout_groups_and_disjoint_seeds(tmp_path):
    root = write_benchmark(tmp_path / "bench", pairs_per_group=20, size=32)
    pairs = read_rfw(root, races=GROUPS, image_size=32)
    assert len(pairs.issame) == 80 and pairs.images.shape == (160, 3, 32, 32)
    for g in range(4):
        same = pairs.issame[pairs.groups == g]
        assert same.sum() == 10  # half positive
        assert len(np.unique(pairs.folds[pairs.groups == g])) == 10
    # true groups of the benchmark identities are what the folder says
    with pytest.raises(ValueError, match="multiple of 20"):
        write_benchmark(tmp_path / "other", pairs_per_group=30)
    with pytest.raises(ValueError, match="below the benchmark"):
        real_training_set(4, 2, seed=95_000)


def test_real_training_set_is_biased_and_seeded():
    x1, y1, z1 = real_training_set(50, 3, seed=5, size=32)
    x2, _, _ = real_training_set(50, 3, seed=5, size=32)
    assert torch.equal(x1, x2)
    assert x1.shape == (150, 3, 32, 32) and y1.tolist()[:6] == [0, 0, 0, 1, 1, 1]


def test_benchmark_folder_refuses_other_settings_and_empty_requests(tmp_path):
    root = write_benchmark(tmp_path / "b", pairs_per_group=20, size=16)
    assert write_benchmark(root, pairs_per_group=20, size=16) == root   # same: reused
    with pytest.raises(ValueError, match=r"'size': \(16, 32\)"):
        write_benchmark(root, pairs_per_group=20, size=32)
    with pytest.raises(ValueError, match="positive multiple of 20"):
        write_benchmark(tmp_path / "c", pairs_per_group=0)
    # a folder of an earlier version (no benchmark.json): checked by what its files show
    (root / "benchmark.json").unlink()
    assert write_benchmark(root, pairs_per_group=20, size=16) == root
    with pytest.raises(ValueError, match=r"'size': \(16, 32\)"):
        write_benchmark(root, pairs_per_group=20, size=32)
    with pytest.raises(ValueError, match=r"'pairs_per_group': \(20, 40\)"):
        write_benchmark(root, pairs_per_group=40, size=16)
    for image in (root / "test" / "data" / GROUPS[0]).glob("*/*.jpg"):
        image.unlink()
    with pytest.raises(ValueError, match="incomplete toy benchmark"):
        write_benchmark(root, pairs_per_group=20, size=16)


def test_corrupted_captions_work_at_any_size_divisible_by_4():
    from qdgs_lib.data.captions import corrupt

    g = torch.Generator().manual_seed(0)
    for size in (32, 64, 128):
        x = torch.rand(12, 3, size, size)
        out = corrupt(x, g)
        assert out.shape == x.shape and not torch.equal(out, x)
    with pytest.raises(ValueError, match="divisible by 4"):
        corrupt(torch.rand(2, 3, 30, 30), g)
