"""Measure records: one edit per measure; profiles, overrides and bins read from them."""

import json

import numpy as np
import pytest

from qdgs_lib import measures
from qdgs_lib.measures import Measure, placed
from qdgs_lib.profiles import FACES_MEASURES, get_profile, parse_overrides
from qdgs_lib.sampling import assign_bins
from qdgs_lib.search import SearchConfig


def test_records_drive_search_config_labels_and_prompts():
    p = get_profile("default", "faces")
    cfg = SearchConfig.from_profile(p, "cma_maega")
    assert cfg.dims == tuple(m.bins for m in p["measures"]) == (20, 10, 5, 10)
    assert cfg.ranges == tuple(m.range for m in p["measures"])
    assert measures.prompts(p)[3] == ("A person in their 20s.", "A person in their 50s.")
    assert measures.labels(p)[0] == "dark skin (+) vs light"
    assert measures.index(p, "age") == 3
    with pytest.raises(KeyError, match="no measure 'beard'.*skin"):
        measures.index(p, "beard")


def test_reordering_is_one_edit():
    p = get_profile("default", "faces", measures=FACES_MEASURES[::-1])
    assert measures.index(p, "age") == 0 and measures.grid(p) == (10, 5, 10, 20)
    assert measures.prompts(p)[0] == FACES_MEASURES[3].prompts


def test_ranges_and_grid_overrides_set_the_records():
    p = get_profile("smoke", "faces", ranges=[[-1, 1]] * 4, grid=[3, 3, 3, 3])
    assert measures.ranges(p) == ((-1.0, 1.0),) * 4 and measures.grid(p) == (3, 3, 3, 3)
    assert [m.key for m in p["measures"]] == ["skin", "gender", "hair", "age"]  # rest kept
    with pytest.raises(ValueError, match="3 bins values for 4 measures"):
        get_profile("smoke", "faces", grid=[3, 3, 3])
    with pytest.raises(ValueError, match="low < high"):
        get_profile("smoke", "faces", ranges=[[1, -1]] * 4)


def test_measures_override_as_json_dicts():
    text = json.dumps({"measures": [
        {"key": "color", "positive": "red", "negative": "blue", "label": "red vs blue",
         "range": [-0.5, 0.5], "bins": 7}]})
    p = get_profile("smoke", "shapes", **parse_overrides(text))
    assert p["measures"] == (Measure("color", "red", "blue", "red vs blue", (-0.5, 0.5), 7),)
    with pytest.raises(ValueError, match="unknown measure field.*colour"):
        get_profile("smoke", "shapes", measures=[{"colour": 1}])
    with pytest.raises(ValueError, match="unique"):
        get_profile("smoke", "shapes", measures=[FACES_MEASURES[0]] * 2)


def test_record_validation_and_orientation():
    with pytest.raises(ValueError, match="bins must be a positive int"):
        Measure("x", "a", "b", "x", (0, 1), 0)
    with pytest.raises(ValueError, match="sign must be"):
        Measure("x", "a", "b", "x", (0, 1), 2, sign=0)
    age = FACES_MEASURES[3]
    assert age.sign == -1 and age.oriented(np.array([0.2]))[0] == pytest.approx(0.8)
    assert placed(FACES_MEASURES, bins=[1, 2, 3, 4])[2].bins == 3


def test_dataset_bins_balance_skin_and_gender():
    """The paper's 3 x 3 skin x gender bins (hair and age unsplit), as before the records."""
    p = get_profile("default", "faces")
    e = p["bin_edge"]
    three = [(-np.inf, -e), (-e, e), (e, np.inf)]
    assert measures.dataset_bins(p) == [three, three, [(-np.inf, np.inf)], [(-np.inf, np.inf)]]
    m = np.array([[-1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.5, -0.5], [1.0, -1.0, 0.0, 0.0]])
    assert list(assign_bins(m, measures.dataset_bins(p))) == [2, 4, 6]


def test_run_record_holds_the_measures_as_dicts(tmp_path):
    from qdgs_lib.utils import write_run_info

    p = get_profile("smoke", "shapes")
    record = json.loads(write_run_info(tmp_path, p).read_text())
    assert record["config"]["measures"][1]["key"] == "shape"
    assert record["config"]["measures"][1]["range"] == [-0.9, 0.9]


def test_ranges_from_samples_round_outwards():
    from qdgs_lib.measures import ranges_from_samples

    rng = np.random.default_rng(0)
    m = np.stack([rng.uniform(-0.33, 0.41, 5000), np.full(5000, 0.2)], 1)
    (lo, hi), (lo2, hi2) = ranges_from_samples(m)
    assert (lo, hi) == (-0.35, 0.45)  # 1% / 99% quantiles -0.32 / 0.40, rounded outwards
    assert (lo2, hi2) == (0.2, 0.25)  # a measure that never varied still gets one step
    assert ranges_from_samples(m, q=0.0, step=0.1)[0] == (-0.4, 0.5)
    assert ranges_from_samples(np.array([[-0.87], [0.5]]), q=0, step=0.3) == ((-0.9, 0.6),)
    with pytest.raises(ValueError, match="step must be > 0"):
        ranges_from_samples(m, step=0)
    # small spreads (a weakly prompted CLIP): steps of a tenth of the spread or less, not
    # 0.05 (which made (0.0, 0.05) of [0.002, 0.013]: most of a grid out of reach)
    small = np.stack([rng.uniform(0.002, 0.013, 5000), rng.uniform(-0.004, 0.003, 5000),
                      rng.uniform(-0.1, 0.1, 5000)], 1)
    got = ranges_from_samples(small, q=0.0)
    assert got == ((0.002, 0.013), (-0.004, 0.003), (-0.1, 0.1))  # steps 1e-3, 5e-4, 0.02
    for (a, b), col in zip(got, small.T, strict=True):
        assert a <= col.min() and b >= col.max() and b - a <= 1.3 * np.ptp(col)
    # spreads down to float32 noise: still low < high, covering the samples
    for centre, spread in ((0.0, 1e-13), (5e-7, 3e-13), (-0.3, 1e-9)):
        col = centre + np.linspace(-spread / 2, spread / 2, 50)[:, None]
        ((a, b),) = ranges_from_samples(col, q=0.0)
        assert a < b and a <= col.min() and b >= col.max(), (centre, spread, a, b)
    with pytest.raises(ValueError, match="NaN"):
        ranges_from_samples(np.array([[0.1], [np.nan]]))
    with pytest.raises(ValueError, match=r"\(N >= 2"):
        ranges_from_samples(np.zeros(5))
