"""Face alignment: the similarity fit, the warp, the fixed crop."""

import numpy as np
import pytest
import torch

from qdgs_lib.align import (
    ARCFACE_TEMPLATE,
    FFHQ_CROP,
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
    with pytest.raises(ValueError, match="matching"):
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


def test_the_template_scales_about_the_image_edge_not_the_first_pixel_centre():
    """At another output size the template is scaled in pixel-centre coordinates: at 56 px
    from a 112 px face (landmarks on the template), output pixel j samples input 2j + 0.5
    (between the two pixels it covers), not 2j (a quarter-pixel shift of the whole face)."""
    ramp = torch.arange(112.0).expand(3, 112, 112) / 111  # value = x / 111
    out = warp_to_template(ramp, ARCFACE_TEMPLATE, size=56)
    want = (2 * torch.arange(56.0) + 0.5) / 111
    torch.testing.assert_close(out[0, 28], want, atol=1e-5, rtol=0)
    torch.testing.assert_close(warp_to_template(ramp, ARCFACE_TEMPLATE, size=112), ramp,
                               atol=1e-5, rtol=0)  # at 112 the identity


def test_fixed_crop_and_aligner_errors():
    assert ffhq_crop(torch.rand(2, 3, 256, 256), 112).shape == (2, 3, 112, 112)
    assert aligner("crop", 64)(torch.rand(1, 3, 128, 128)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="unknown alignment"):
        aligner("dlib")


def ffhq_aligned_positions(points: np.ndarray) -> np.ndarray:
    """Where FFHQ's alignment recipe (eyes, mouth corners -> oriented square) puts the five
    points, as fractions of the aligned image's side."""
    eye_l, eye_r, _, mouth_l, mouth_r = points
    eye_avg, eye_to_eye = (eye_l + eye_r) / 2, eye_r - eye_l
    eye_to_mouth = (mouth_l + mouth_r) / 2 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) / np.hypot(*x)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([0.5 + (points - c) @ x / (2 * x @ x), 0.5 + (points - c) @ y / (2 * y @ y)],
                    axis=1)


def test_the_ffhq_crop_puts_an_ffhq_aligned_face_on_the_arcface_template():
    """A face with the template's proportions, aligned as FFHQ is, lands on the template: the
    box was 1.27x too tight before (eyes 44.9 px apart instead of 35.2, mouth 6.7 px low)."""
    u = ffhq_aligned_positions(ARCFACE_TEMPLATE)
    x0, y0, x1, y1 = FFHQ_CROP
    landed = np.stack([(u[:, 0] - x0) / (x1 - x0), (u[:, 1] - y0) / (y1 - y0)], 1) * 112
    assert np.abs(landed - ARCFACE_TEMPLATE).max() < 0.5
    # and the pixels follow: a dot at FFHQ's left-eye position comes out at the template's
    img = torch.zeros(1, 3, 256, 256)
    ex, ey = (u[0] * 256).astype(int)
    img[..., ey - 2:ey + 3, ex - 2:ex + 3] = 1
    out = ffhq_crop(img, 112)[0, 0]
    ys, xs = torch.nonzero(out > 0.3, as_tuple=True)
    assert abs(xs.float().mean() - ARCFACE_TEMPLATE[0, 0]) < 1.5
    assert abs(ys.float().mean() - ARCFACE_TEMPLATE[0, 1]) < 1.5
