"""Shapes ground truth for label checks: color read off the pixels, the oracle's agreement."""

import numpy as np
import torch

from qdgs_lib.data.shapes import ShapesDataset, render, sample_params
from qdgs_lib.shapes_poc import pixel_color


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
