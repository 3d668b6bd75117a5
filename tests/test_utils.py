"""Atomic writes and checkpoint fallbacks: nothing is lost when a write fails or a run is
killed between two renames."""

import os
import stat

import pytest

from qdgs_lib.utils import (
    BadFileError,
    atomic_path,
    load_checkpoint_with_fallback,
    previous_path,
    write_checkpoint,
)


def _read(path):
    text = path.read_text()
    if not text.startswith("ok"):
        raise BadFileError(f"{path}: damaged")
    return text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "results.csv"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["results.csv"]
    with atomic_path(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and os.listdir(tmp_path) == ["results.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_a_failed_checkpoint_write_keeps_the_latest_and_the_previous(tmp_path):
    ckpt = tmp_path / "checkpoint.pkl"
    write_checkpoint(ckpt, lambda tmp: tmp.write_text("ok 1"))
    write_checkpoint(ckpt, lambda tmp: tmp.write_text("ok 2"))
    assert (ckpt.read_text(), previous_path(ckpt).read_text()) == ("ok 2", "ok 1")

    def fail(tmp):
        tmp.write_text("ok 3, half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_checkpoint(ckpt, fail)
    assert (ckpt.read_text(), previous_path(ckpt).read_text()) == ("ok 2", "ok 1")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pkl", "checkpoint.prev.pkl"]


def test_a_kill_between_the_renames_resumes_from_the_previous_checkpoint(tmp_path):
    """write_checkpoint moves the latest aside before the new one takes its name: a kill in
    between leaves only the previous checkpoint, which a resume then reads."""
    ckpt = tmp_path / "checkpoint.pkl"
    previous_path(ckpt).write_text("ok 1")
    assert load_checkpoint_with_fallback(ckpt, _read, "search") == "ok 1"
    assert load_checkpoint_with_fallback(tmp_path / "none.pkl", _read, "search") is None


def test_a_damaged_latest_checkpoint_is_left_in_place_when_asked(tmp_path):
    """rename=False (every DDP rank but the first): the fallback reads the previous one and
    leaves the damaged file for rank 0 to set aside."""
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_text("garbage")
    previous_path(ckpt).write_text("ok 1")
    with pytest.warns(UserWarning, match="left in place"):
        assert load_checkpoint_with_fallback(ckpt, _read, "training", rename=False) == "ok 1"
    assert ckpt.read_text() == "garbage"
    with pytest.warns(UserWarning, match="kept as checkpoint.pt.unreadable"):
        assert load_checkpoint_with_fallback(ckpt, _read, "training") == "ok 1"
    assert not ckpt.exists() and (tmp_path / "checkpoint.pt.unreadable").exists()
