"""Face alignment: the similarity fit, the warp, the fixed crop."""

import numpy as np
import pytest
import torch

from qdgs_lib.align import (
    ARCFACE_TEMPLATE,
    aligner,
    ffhq_crop,
    similarity_transform,
    warp_to_template,
)


def test_similarity_transform_recovers_a_known_transform():
    a, s, t = 0.3, 1.7, np.array([5.0, -3.0])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    src = np.random.default_rng(0).normal(size=(5, 2)) * 20
    dst = (s * rot @ src.T).T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], s * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)
    with pytest.raises(ValueError):
        similarity_transform(src, dst[:3])


def test_warp_moves_landmarks_onto_the_template():
    # a bright dot at each landmark of a shifted, scaled template in a 160x160 image
    pts = ARCFACE_TEMPLATE * 1.2 + np.array([10.0, 6.0])
    img = torch.zeros(3, 160, 160)
    for x, y in pts:
        img[:, int(round(y)), int(round(x))] = 1.0
    out = warp_to_template(img, pts, size=112)
    assert out.shape == (3, 112, 112)
    for x, y in ARCFACE_TEMPLATE:
        patch = out[0, int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3]
        assert patch.max() > 0.2  # the dot landed at the template point


def test_fixed_crop_and_aligner_errors():
    assert ffhq_crop(torch.rand(2, 3, 256, 256), 112).shape == (2, 3, 112, 112)
    assert aligner("crop", 64)(torch.rand(1, 3, 128, 128)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="unknown alignment"):
        aligner("dlib")
