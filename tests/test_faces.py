"""Faces pipeline helpers: benchmark discovery, real identity folders, training logs."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

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


def test_read_identity_folders(tmp_path):
    for ident in ("b", "a"):
        (tmp_path / ident).mkdir()
        for k in range(3):
            img = Image.fromarray(np.full((20, 20, 3), 40 * k, np.uint8))
            img.save(tmp_path / ident / f"{k}.jpg")
    x, y = faces.read_identity_folders(tmp_path, size=16, max_per_identity=2)
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="no identity folders"):
        faces.read_identity_folders(tmp_path / "a", size=16)


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
