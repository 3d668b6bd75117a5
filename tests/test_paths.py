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


def test_missing_weights_in_a_clone_say_git_checkout(monkeypatch):
    from qdgs_lib.generators import shapes_vae

    monkeypatch.delenv("QDGS_DATA_DIR", raising=False)
    monkeypatch.delenv("QDGS_ROOT", raising=False)
    monkeypatch.setattr(shapes_vae, "WEIGHTS_FILE", "gone.safetensors")
    with pytest.raises(FileNotFoundError, match="git checkout data/weights/gone.safetensors"):
        shapes_vae.load_shapes_vae(device="cpu")


def test_a_moved_data_folder_is_told_to_link_the_clones_weights(tmp_path, monkeypatch):
    """QDGS_DATA_DIR moves data/weights too; `git checkout` would not bring them there."""
    from qdgs_lib.generators.shapes_vae import load_shapes_vae

    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        load_shapes_vae(device="cpu")
    assert f"ln -s {paths.REPO_ROOT / 'data' / 'weights'} {tmp_path / 'weights'}" in str(e.value)
    assert "git checkout" not in str(e.value)
    (tmp_path / "weights").symlink_to(paths.REPO_ROOT / "data" / "weights")
    load_shapes_vae(device="cpu")  # linked as told: it loads


def test_paths_a_profile_names_are_under_the_data_folder_wherever_the_notebook_runs(
        tmp_path, monkeypatch):
    """papermill and JupyterLab run notebooks in notebooks/: a relative stylegan_weights,
    clip_weights or real_dataset must not depend on that."""
    from qdgs_lib.assets import required_assets

    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert paths.in_data_dir(None) is None
    assert paths.in_data_dir("pretrained/g.pkl") == tmp_path / "data" / "pretrained" / "g.pkl"
    assert paths.in_data_dir(tmp_path / "abs.pkl") == tmp_path / "abs.pkl"
    got = {a.what: a.path for a in required_assets(
        "paper", "faces", stylegan_weights="pretrained/mine.safetensors",
        clip_weights="pretrained/clip.safetensors")}
    assert got["StyleGAN2-FFHQ-256"] == tmp_path / "data" / "pretrained" / "mine.safetensors"
    assert got["CLIP ViT-B-32-quickgelu weights"] == (tmp_path / "data" / "pretrained" /
                                                      "clip.safetensors")
