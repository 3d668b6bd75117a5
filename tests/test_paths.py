"""Where files go: the clone when the package runs from one, never site-packages otherwise."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qdgs_lib import paths

PROBE = """
import json, sys
from qdgs_lib import paths
from qdgs_lib.generators.shapes_vae import load_shapes_vae
try:
    load_shapes_vae(device="cpu")
    error = None
except FileNotFoundError as e:
    error = str(e)
print(json.dumps({"package": paths.REPO_ROOT.as_posix(), "source": paths.in_source_tree(),
                  "data": paths.data_dir().as_posix(), "runs": paths.runs_dir().as_posix(),
                  "figures": paths.figures_dir().as_posix(), "error": error}))
"""


def _probe(site: Path, cwd: Path, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QDGS_")}
    environ.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", **env)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=environ, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_clone_is_the_root():
    assert paths.in_source_tree()
    assert paths.REPO_ROOT == Path(paths.__file__).resolve().parents[1]
    if "QDGS_ROOT" not in os.environ:
        assert paths.project_root() == paths.REPO_ROOT


def test_an_installed_package_works_in_the_working_directory(tmp_path):
    """A pip-installed copy (site-packages: the package folder alone) keeps data/, runs/ and
    figures/ under the working directory or QDGS_ROOT, and says where the project's own
    weights come from, since the wheel does not carry them."""
    site, work = tmp_path / "site-packages", tmp_path / "work"
    shutil.copytree(paths.REPO_ROOT / "qdgs_lib", site / "qdgs_lib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    work.mkdir()
    got = _probe(site, work)
    assert got["package"] == site.resolve().as_posix() and not got["source"]
    assert got["data"] == (work / "data").as_posix()
    assert got["runs"] == (work / "runs").as_posix()
    assert got["figures"] == (work / "figures").as_posix()
    assert "not with the pip package" in got["error"]
    assert str(work / "data" / "weights" / "shapes_vae.safetensors") in got["error"]
    assert not (site / "data").exists() and not (site / "runs").exists()

    root = tmp_path / "elsewhere"
    got = _probe(site, work, QDGS_ROOT=str(root))
    assert got["runs"] == (root / "runs").as_posix()
    assert got["data"] == (root / "data").as_posix()
    # the clone's data folder, named explicitly: the shipped weights load
    got = _probe(site, work, QDGS_DATA_DIR=str(paths.REPO_ROOT / "data"))
    assert got["error"] is None, got["error"]


def test_missing_weights_in_a_clone_say_git_checkout(tmp_path, monkeypatch):
    from qdgs_lib.generators.shapes_vae import load_shapes_vae

    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="git checkout data/weights/shapes_vae"):
        load_shapes_vae(device="cpu")
