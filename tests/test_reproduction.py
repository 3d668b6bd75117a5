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
    # the same columns in another order are compared by name
    assert reproduction.column_drift(ref, new[["n", "x", "name"]]).equals(d)


def test_a_number_that_became_nan_or_inf_is_unbounded_drift():
    ref = pd.DataFrame({"x": [5000.0, 3.0, 1.0, np.nan]})
    new = pd.DataFrame({"x": [np.nan, np.inf, 1.0, np.nan]})
    d = reproduction.column_drift(ref, new)
    assert d.loc["x", "cells differ"] == 2 and d.loc["x", "max |diff|"] == np.inf
    ref2 = pd.DataFrame({"x": [np.inf, 2.0]})  # the scale is of the finite values
    d2 = reproduction.column_drift(ref2, pd.DataFrame({"x": [np.inf, 3.0]}))
    assert d2.loc["x", "max |diff|"] == 1 and d2.loc["x", "max |diff| / scale"] == 0.5


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


@pytest.mark.parametrize("side", ["new", "ref"])
def test_a_table_missing_on_either_side_is_named_and_fails(two_copies, side, capsys):
    ref, new = two_copies
    folder = {"new": new, "ref": ref}[side]
    (folder / "02_faces_qd_metrics.csv").unlink()  # no verdict reads it: only drift sees it
    assert reproduction.main([str(new), "--ref-dir", str(ref)]) == 1
    out = capsys.readouterr().out
    where = {"new": "reproduction", "ref": "reference"}[side]
    assert f"02_faces_qd_metrics.csv (missing in the {where})" in out
    assert "1 table(s) missing or not comparable" in out

    (folder / "04_results.csv").unlink()  # a verdict table: its verdicts show "(no table)"
    assert reproduction.main([str(new), "--ref-dir", str(ref)]) == 1
    out = capsys.readouterr().out
    assert "(no table)" in out and "-> nan" not in out and "nan ->" not in out


def test_a_table_of_another_layout_is_counted_and_the_rest_compared(two_copies, capsys):
    ref, new = two_copies
    qd = pd.read_csv(new / "02_faces_qd_metrics.csv")
    qd.iloc[:1].to_csv(new / "02_faces_qd_metrics.csv", index=False)  # a row fewer
    drift, _ = reproduction.compare(reproduction.folder_reader(new),
                                    reproduction.folder_reader(ref),
                                    ["02_faces_qd_metrics.csv", "02_faces_shares.csv"])
    assert drift.column.str.startswith("(not comparable: the tables differ in shape").iloc[0]
    assert drift.column.iloc[1] == "(identical)"
    assert reproduction.main([str(new), "--ref-dir", str(ref)]) == 1
    out = capsys.readouterr().out
    assert "1 table(s) missing or not comparable" in out and "; 0 changed" in out

    # verdict tables that cannot be read as such: their claims say why, the others stand
    (new / "01_shapes_results.csv").write_text("")
    results = pd.read_csv(new / "04_results.csv")
    results.drop(columns="fair_mean").to_csv(new / "04_results.csv", index=False)
    v = reproduction.verdicts(reproduction.folder_reader(new))
    assert v["01 shapes (all)"].startswith("(cannot compute: ValueError: 01_shapes_results")
    assert v["04 fairness (all)"].startswith("(cannot compute:")
    assert v.filter(like="02 share").notna().all() and len(v.filter(like="02 share")) > 0
    assert reproduction.main([str(new), "--ref-dir", str(ref)]) == 1


def test_bad_references_are_usage_errors(two_copies, tmp_path, capsys):
    ref, new = two_copies
    with pytest.raises(ValueError, match="not a git checkout.*--ref-dir"):
        reproduction.git_reader("HEAD", repo=tmp_path)
    for argv, match in (([str(new), "--ref-dir", str(tmp_path / "none")], "no figures folder"),
                        ([str(tmp_path / "none")], "no figures folder")):
        with pytest.raises(SystemExit) as e:
            reproduction.main(argv)
        assert e.value.code == 2 and match in capsys.readouterr().err


def test_the_git_reference_is_the_committed_tables():
    if subprocess.run(["git", "-C", str(project_root()), "rev-parse", "HEAD"],
                      capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    read = reproduction.git_reader("HEAD")
    committed = subprocess.run(["git", "-C", str(project_root()), "show",
                                "HEAD:figures/02_faces_shares.csv"], capture_output=True).stdout
    assert read("02_faces_shares.csv") == committed and committed
    assert read("no_such_table.csv") is None
    assert "02_faces_shares.csv" in read.names() and "no_such_table.csv" not in read.names()
    with pytest.raises(ValueError, match="no revision 'no-such-rev'"):
        reproduction.git_reader("no-such-rev")
