"""Recognition helpers: benchmark discovery, training logs."""

import numpy as np
import pandas as pd
import pytest
import torch

from qdgs_lib import recognition
from qdgs_lib.data.benchmarks import write_bin
from qdgs_lib.profiles import get_profile


def test_available_benchmarks_finds_supplied_bins_and_lists_the_rest(tmp_path):
    write_bin(tmp_path / "lfw.bin", torch.rand(40, 3, 32, 32), [True, False] * 10)
    p = get_profile("smoke", "recognition", benchmark_size=32)
    found = recognition.available_benchmarks(p, root=tmp_path, include_toy=False)
    assert list(found["sets"]) == ["lfw"]
    assert len(found["sets"]["lfw"].issame) == 20
    assert str(tmp_path / "agedb_30.bin") in found["missing"]
    assert str(tmp_path / "rfw") in found["missing"]


def test_training_logs_parse_run_folders(tmp_path):
    for name, stage in (("qdgs", "pre"), ("qdgs", "real"), ("none", "real")):
        d = tmp_path / "train" / f"{name}_seed1_{stage}"
        d.mkdir(parents=True)
        pd.DataFrame({"epoch": [1, 2], "loss": [2.0, 1.0]}).to_csv(d / "log.csv", index=False)
    logs = recognition.training_logs(tmp_path)
    assert len(logs) == 6
    pairs = set(zip(logs.pretraining, logs.stage, strict=True))
    assert pairs == {("qdgs", "pre"), ("qdgs", "real"), ("none", "real")}
    assert (logs.seed == 1).all()


def test_group_table_means_over_seeds_with_errors():
    rows = [{"pretraining": name, "seed": s, "benchmark": "toy", "a": acc + 0.01 * s,
             "b": 0.5, "fair_mean": 0.6, "fair_std": 0.1, "fair_ser": 1.2, "all": 0.55}
            for name, acc in (("qdgs", 0.9), ("none", 0.7)) for s in (0, 2)]
    rows.append({**rows[0], "benchmark": "other", "a": 0.0})
    t = recognition.group_table(pd.DataFrame(rows), "toy", ["a", "b"])
    assert list(t.index) == ["none", "qdgs"]  # the paper's order, absent ones left out
    assert t.loc["qdgs", "a"] == pytest.approx(0.91)
    # the std over seeds (0.70, 0.72)
    assert t.attrs["err"].loc["none", "a"] == pytest.approx(np.std([0.70, 0.72], ddof=1))


class _AngleNet(torch.nn.Module):
    """Embeds an image as the unit vector at angle = its mean value (after AdaFace's input
    normalisation): pair distances are set exactly by the images."""

    input_size = 8

    def forward(self, x):
        theta = x.mean(dim=(1, 2, 3))
        return torch.stack([theta.cos(), theta.sin()], 1)


def test_pooled_accuracy_uses_the_benchmark_folds_and_reports_thresholds():
    """Two groups whose distances live on different scales: each group is separable, no single
    threshold separates both (so "all" < every group: a single threshold, not a bug), and the
    pairs are stored group after group with same-pairs first, as in RFW."""
    from qdgs_lib.data.benchmarks import PairSet

    rows, groups, issame = [], [], []
    for g, (same, diff) in enumerate(((0.05, 0.2), (0.4, 1.2))):
        for is_same, gap in ((True, same), (False, diff)):
            for i in range(50):
                base = 0.01 * i
                rows += [base, base + gap]
                groups.append(g)
                issame.append(is_same)
    v = torch.tensor(rows)  # image value v -> embedding angle 2v - 1 (AdaFace normalisation)
    images = ((v / 2 + 0.5)[:, None, None, None]).expand(-1, 3, 8, 8).contiguous()
    folds = np.tile(np.repeat(np.arange(10), 5), 4)  # every fold: both groups, both kinds
    bench = PairSet("two scales", images, np.array(issame), np.array(groups), ["near", "far"],
                    folds)
    res = recognition.evaluate_recognizer(_AngleNet(), bench, device="cpu")
    assert res["near"] == 1.0 and res["far"] == 1.0
    assert 0.6 < res["all"] < 0.9
    assert res["threshold near"] < 0.04 < 0.15 < res["threshold far"]
