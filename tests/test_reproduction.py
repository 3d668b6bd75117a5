"""Comparing a reproduction's tables and verdicts with the committed ones."""

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from qdgs_lib import reproduction
from qdgs_lib.paths import project_root

COMMITTED = project_root() / "figures"


def test_column_drift_counts_cells_and_measures_numbers():
    ref = pd.DataFrame({"x": [1.0, 2.0, np.nan], "name": ["a", "b", "c"], "n": [1, 2, 3]})
    new = pd.DataFrame({"x": [1.0, 2.5, np.nan], "name": ["a", "B", "c"], "n": [1, 2, 3]})
    d = reproduction.column_drift(ref, new)
    assert d.loc["x", "cells differ"] == 1 and d.loc["x", "max |diff|"] == 0.5
    assert d.loc["x", "max |diff| / scale"] == 0.25  # of the column's largest value, 2
    assert d.loc["name", "cells differ"] == 1 and np.isnan(d.loc["name", "max |diff|"])
    assert d.loc["n", "cells differ"] == 0 and d.loc["n", "max |diff|"] == 0
    with pytest.raises(ValueError, match=r"columns only in one: \['x', 'y'\]"):
        reproduction.column_drift(ref, new.rename(columns={"x": "y"}))


@pytest.fixture
def two_copies(tmp_path):
    """The committed result CSVs twice: a reference folder and a 'reproduction'."""
    for side in ("ref", "new"):
        (tmp_path / side).mkdir()
        for csv in COMMITTED.glob("*.csv"):
            shutil.copy(csv, tmp_path / side)
    return tmp_path / "ref", tmp_path / "new"


def test_identical_tables_keep_every_verdict(two_copies, capsys):
    ref, new = two_copies
    assert reproduction.main([str(new), "--ref-dir", str(ref)]) == 0
    out = capsys.readouterr().out
    verdicts = reproduction.verdicts(reproduction.folder_reader(ref))
    # the four notebooks' claims: shapes per bias, label audit, shares, fairness
    assert {k.split(" ")[0] for k in verdicts.index} == {"01", "02", "04"}
    assert f"{len(verdicts)} of {len(verdicts)} verdicts the same; 0 changed" in out


def test_a_moved_number_shows_as_drift_and_a_changed_verdict(two_copies, capsys):
    ref, new = two_copies
    shares = pd.read_csv(new / "02_faces_shares.csv", index_col=0)
    before = shares.loc["QDGS archive", "true masculine"]
    shares.loc["QDGS archive", "true masculine"] = 0.5  # balanced: now "closer to balance"
    shares.to_csv(new / "02_faces_shares.csv")
    drift, table = reproduction.compare(reproduction.folder_reader(new),
                                        reproduction.folder_reader(ref),
                                        ["02_faces_shares.csv", "04_results.csv"])
    row = drift[(drift.file == "02_faces_shares.csv") & (drift.column == "true masculine")]
    assert row["cells differ"].item() == 1
    assert row["max |diff|"].item() == pytest.approx(abs(before - 0.5))
    assert drift[drift.file == "04_results.csv"].column.item() == "(identical)"
    changed = table[~table.same]
    assert list(changed.index) == ["02 share: true masculine"]
    assert changed.iloc[0].tolist()[:2] == ["NOT closer to balance", "closer to balance"]
    assert reproduction.main([str(new), "--ref-dir", str(ref)]) == 1
    assert "CHANGED  02 share: true masculine: NOT closer to balance -> closer to balance" \
        in capsys.readouterr().out


def test_missing_tables_and_references_are_named(two_copies, tmp_path, capsys):
    ref, new = two_copies
    (new / "04_results.csv").unlink()
    (ref / "01_shapes_results.csv").unlink()
    assert reproduction.main([str(new), "--ref-dir", str(ref)]) == 1
    out = capsys.readouterr().out
    assert "(missing in the reference)" in out and "verdicts the same" in out
    qd = pd.read_csv(new / "02_faces_qd_metrics.csv")
    qd.iloc[:1].to_csv(new / "02_faces_qd_metrics.csv", index=False)  # a row fewer
    drift, _ = reproduction.compare(reproduction.folder_reader(new),
                                    reproduction.folder_reader(ref),
                                    ["02_faces_qd_metrics.csv", "02_faces_shares.csv"])
    assert drift.column.str.startswith("(not comparable: the tables differ in shape").iloc[0]
    assert drift.column.iloc[1] == "(identical)"
    assert reproduction.main([str(new), "--ref-dir", str(ref)]) == 1
    with pytest.raises(ValueError, match="--ref-dir"):
        reproduction.git_reader("HEAD", repo=tmp_path)


def test_the_git_reference_is_the_committed_tables():
    if subprocess.run(["git", "-C", str(project_root()), "rev-parse", "HEAD"],
                      capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    read = reproduction.git_reader("HEAD")
    committed = subprocess.run(["git", "-C", str(project_root()), "show",
                                "HEAD:figures/02_faces_shares.csv"], capture_output=True).stdout
    assert read("02_faces_shares.csv") == committed and committed
    assert read("no_such_table.csv") is None
