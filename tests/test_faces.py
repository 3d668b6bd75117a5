"""Faces pipeline helpers: benchmark discovery, training logs."""

import pandas as pd
import torch

from qdgs_lib import faces
from qdgs_lib.data.benchmarks import write_bin
from qdgs_lib.profiles import get_profile


def test_available_benchmarks_finds_supplied_bins_and_lists_the_rest(tmp_path):
    write_bin(tmp_path / "lfw.bin", torch.rand(40, 3, 32, 32), [True, False] * 10)
    p = get_profile("smoke", "recognition", benchmark_size=32)
    found = faces.available_benchmarks(p, root=tmp_path, include_toy=False)
    assert list(found["sets"]) == ["lfw"]
    assert len(found["sets"]["lfw"].issame) == 20
    assert str(tmp_path / "agedb_30.bin") in found["missing"]
    assert str(tmp_path / "rfw") in found["missing"]


def test_training_logs_parse_run_folders(tmp_path):
    for name, stage in (("qdgs", "pre"), ("qdgs", "real"), ("none", "real")):
        d = tmp_path / "train" / f"{name}_seed1_{stage}"
        d.mkdir(parents=True)
        pd.DataFrame({"epoch": [1, 2], "loss": [2.0, 1.0]}).to_csv(d / "log.csv", index=False)
    logs = faces.training_logs(tmp_path)
    assert len(logs) == 6
    pairs = set(zip(logs.pretraining, logs.stage, strict=True))
    assert pairs == {("qdgs", "pre"), ("qdgs", "real"), ("none", "real")}
    assert (logs.seed == 1).all()
