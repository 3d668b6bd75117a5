"""Archive explorer: the data layer (cell -> elite -> image + facts) and the widget."""

import base64

import numpy as np
import pytest
import torch
from ribs.archives import GridArchive

from qdgs_lib import explorer
from qdgs_lib.measures import Measure
from qdgs_lib.search import archive_frame

MEASURES = (Measure("a", "p", "n", "a (+)", (-1, 1), 4, attribute="t0"),
            Measure("b", "p", "n", "b (+)", (-1, 1), 3),
            Measure("c", "p", "n", "c (+)", (0, 1), 2, attribute="t1", sign=-1))


def _frame():
    """Four elites in a 4 x 3 x 2 archive; two share the (a, b) cell (1, 2)."""
    archive = GridArchive(solution_dim=2, dims=(4, 3, 2), ranges=[m.range for m in MEASURES])
    sols = np.array([[3.0, 4.0], [0.1, 0.0], [0.2, 0.1], [-1.0, 0.5]])
    meas = np.array([[-0.4, 0.9, 0.2],   # cells (1, 2, 0)
                     [-0.3, 0.8, 0.9],   # (1, 2, 1): same (a, b) cell, better objective
                     [0.9, -0.9, 0.1],   # (3, 0, 0)
                     [0.1, 0.0, 0.6]])   # (2, 1, 1)
    archive.add(sols, np.array([1.0, 2.0, 0.5, 0.7]), meas)
    return archive_frame(archive)


def _data(truth=None):
    decode = lambda z: torch.sigmoid(z[:, :1, None, None].expand(-1, 3, 8, 8))  # noqa: E731
    return explorer.ArchiveData(_frame(), MEASURES, decode, prior_norms=np.linspace(0, 2, 101),
                                truth=truth)


def test_plane_keeps_the_best_objective_over_the_other_measures():
    plane = _data().plane((0, 1))
    assert plane.shape == (3, 4)
    assert plane[2, 1] == 2.0 and plane[0, 3] == 0.5 and plane[1, 2] == 0.7
    assert np.isnan(plane).sum() == 12 - 3
    assert _data().plane((2, 0)).shape == (4, 2)


def test_cell_to_elite_to_facts():
    data = _data(truth=lambda z: {"t0": np.array([0.9]), "t1": np.array([0.2])})
    row = data.elite_at((0, 1), (1, 2))
    f = data.facts(row)
    assert f["objective"] == 2.0 and f["cell"] == (1, 2, 1)
    assert f["measures"] == pytest.approx({"a": -0.3, "b": 0.8, "c": 0.9})
    assert f["latent norm"] == pytest.approx(0.1)
    assert f["prior samples with a smaller norm"] == pytest.approx(5 / 101)
    # a: CLIP says negative, truth 0.9 says positive; c (sign -1): 1 - 0.2 > 0.5 and 0.9 > 0
    assert f["CLIP agrees"] == {"a": False, "c": True}
    assert data.elite_at((0, 1), (0, 0)) is None
    img = data.image(row)
    assert img.shape == (3, 8, 8) and torch.allclose(img, torch.sigmoid(torch.tensor(0.1)))
    far = data.facts(int(np.flatnonzero(data.frame["solution_0"] == 3.0)[0]))
    assert far["latent norm"] == 5.0 and far["prior samples with a smaller norm"] == 1.0
    text = "\n".join(explorer.format_facts(f, MEASURES))
    assert "a (+): -0.300  (CLIP DISAGREES with truth)" in text and "objective 2.000" in text


def test_bad_requests_are_refused_clearly():
    data = _data()
    with pytest.raises(ValueError, match="two different measures"):
        data.plane((1, 1))
    with pytest.raises(ValueError, match="bin 4 of measure 'a' is outside 0..3"):
        data.elite_at((0, 1), (4, 0))
    with pytest.raises(ValueError, match="do not fit the measures' grid"):
        explorer.ArchiveData(_frame(), MEASURES[:2], lambda z: z, np.ones(3))
    nan = explorer.ArchiveData(_frame(), MEASURES, lambda z: z[:, :1, None, None] * np.nan,
                               np.ones(3))
    with pytest.raises(ValueError, match="non-finite"):
        nan.image(0)


def test_widget_follows_the_controls_and_renders_statically():
    data = _data(truth=lambda z: {"t0": np.full(len(z), 0.9), "t1": np.full(len(z), 0.2)})
    empty = explorer.ArchiveData(_frame().iloc[:0], MEASURES, data.decode, np.ones(3))
    view = explorer.explorer({"QDGS": data, "random": empty})
    assert view.dims == (0, 1) and view.cell == (1, 2)  # starts on the best elite
    plane, img, facts = view.panels["QDGS"]
    assert bytes(img.value).startswith(b"\x89PNG") and "objective 2.000" in facts.value
    assert "no elite" in view.panels["random"][2].value
    view.bin_x.value, view.bin_y.value = 3, 0  # as a user moving the sliders
    assert "objective 0.500" in facts.value
    view.y.value = 2  # another measure pair: sliders follow that measure's bins
    assert view.dims == (0, 2) and view.bin_y.max == 1
    view.x.value = 2  # the same measure twice: the two swap
    assert view.dims == (2, 0) and view.bin_x.max == 1 and view.bin_y.max == 3
    view.select(dims=(0, 2), cell=(2, 1))
    assert "objective 0.700" in facts.value
    bundle = view._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")


def test_static_view_of_random_weights_is_labelled():
    import io

    from PIL import Image

    from qdgs_lib import plots
    from qdgs_lib.notebook import PLUMBING_LABEL

    def red_pixels():
        png = base64.b64decode(explorer.explorer({"QDGS": _data()})._repr_mimebundle_()
                               ["image/png"])
        x = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        return int(((x[..., 0] - x[..., 1:].max(-1)) > 60).sum())

    plain = red_pixels()   # the outlined cell is red too
    plots.set_watermark(PLUMBING_LABEL)
    assert red_pixels() > plain + 500
