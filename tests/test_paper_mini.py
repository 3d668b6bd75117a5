"""The paper path end to end: all four notebooks under the ``paper-mini`` profile, on
random-weight assets written in the real formats (StyleGAN2-256 network pickle, ViT-B/32
open_clip weights, IR-101, five InsightFace .bin files, RFW layout, RecordIO training set).
A plumbing check: outputs land under runs/, labelled, never in figures/."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from qdgs_lib import assets, recognition
from qdgs_lib.adaface_format import save_adaface_checkpoint
from qdgs_lib.paths import REPO_ROOT, figures_dir, runs_dir
from qdgs_lib.plumbing import write_paper_mini_assets
from qdgs_lib.profiles import get_profile

NOTEBOOKS = ("01_shapes_poc", "02_face_synthesis", "03_pretraining", "04_benchmark_evaluation")


@pytest.fixture(scope="module")
def data_root():
    return write_paper_mini_assets(progress=False)


def test_assets_are_in_the_real_formats(data_root, monkeypatch):
    from qdgs_lib.clip import create_clip
    from qdgs_lib.data.benchmarks import read_bin, read_rfw
    from qdgs_lib.data.identities import open_training_set
    from qdgs_lib.generators.stylegan2_legacy import load_stylegan2

    monkeypatch.setenv("QDGS_DATA_DIR", str(data_root))
    assert assets.missing_assets("paper-mini") == []
    assert assets.missing_assets("paper") == []  # the same paths as the real paper run
    net = load_stylegan2(device="cpu")  # the default path, through the restricted unpickler
    assert (net.num_ws, net.img_resolution, net.z_dim) == (14, 256, 512)
    clip = create_clip("ViT-B-32-quickgelu", device="cpu")
    assert clip.image_size == 224 and clip.encode_text(["a face"]).shape == (1, 512)
    bench = read_bin(data_root / "benchmarks" / "lfw.bin")
    assert bench.images.shape[1:] == (3, 112, 112) and len(bench.issame) >= 10
    assert len(read_rfw(data_root / "benchmarks" / "rfw").group_names) == 4
    train = open_training_set(data_root / "benchmarks" / "train")
    assert type(train).__name__ == "RecordIOFaces" and train.num_classes >= 2


def test_every_file_loads_with_the_notebooks_loaders(data_root, monkeypatch, capsys, tmp_path):
    """``python -m qdgs_lib.assets paper-mini --load``: each file through the loader its
    notebook uses, what it holds, whether it is the released code's file (by sha256)."""
    from qdgs_lib import paths
    from qdgs_lib.utils import sha256_file

    monkeypatch.setenv("QDGS_DATA_DIR", str(data_root))
    vae = data_root / "pretrained" / "vae-shapes.pt"
    monkeypatch.setitem(paths.RELEASED_SHA256, "vae-shapes.pt", sha256_file(vae))
    assert assets.main(["paper-mini", "--load"]) == 0
    out = capsys.readouterr().out
    assert out.count("[loaded]") == 13 and "all 13 loaded" in out and "[FAILED]" not in out
    lines = out.splitlines()
    said = {lines[i][21:].split(":")[0]: lines[i + 1].strip()  # what: its description
            for i in range(len(lines) - 1) if lines[i].startswith("[loaded]")}
    assert said["StyleGAN2"] == "StyleGAN2Generator(w+): latent 7168, 256 px images"
    assert said["CLIP"].startswith("ViT-B-32-quickgelu: 224 px images, 512-d embeddings")
    assert said["shapes VAE"].endswith("the released code's file")  # (sha256 set to this file's)
    assert "NOT the released code's augmentations.pt" in said["latent offsets"]  # random weights
    assert said["lfw"].startswith("10 pairs (5 same), (3, 112, 112) images")
    # a wrong file is named with the loader's error, and the command fails
    torch.save(torch.zeros(9, 512), tmp_path / "w_offsets.pt")
    assert assets.main(["paper-mini", "--load", "--overrides",
                        f'{{"offsets_file": "{tmp_path / "w_offsets.pt"}"}}']) == 1
    out = capsys.readouterr().out
    assert "[FAILED] faces       latent offsets" in out and "(k, 7168) is needed" in out
    assert "1 of 13 failed" in out


def test_four_notebooks_run_on_the_paper_architectures(data_root, monkeypatch):
    import papermill

    monkeypatch.setenv("QDGS_DATA_DIR", str(data_root))
    figures_before = {f: f.stat().st_mtime_ns for f in figures_dir().rglob("*") if f.is_file()}
    out_dir = runs_dir() / "executed" / "paper-mini"
    out_dir.mkdir(parents=True, exist_ok=True)
    for nb in NOTEBOOKS:  # fresh runs: a folder left by older code never blocks a resume
        shutil.rmtree(runs_dir() / nb / "paper-mini", ignore_errors=True)
    exported = data_root / "adaface" / "none.ckpt"
    for nb in NOTEBOOKS:
        params = {"profile": "paper-mini"}
        if nb == "04_benchmark_evaluation":
            # notebook 03's baseline in AdaFace's format, evaluated again as a checkpoint
            # (a relative path: under the data folder)
            models = recognition.read_models_table(runs_dir() / "03_pretraining" / "paper-mini"
                                                   / "models.csv")
            none = models.model[models.pretraining == "none"].iloc[0]
            save_adaface_checkpoint(recognition.load_backbone(
                get_profile("paper-mini", "recognition"), none), exported)
            params["checkpoints"] = {"none, as AdaFace's": "adaface/none.ckpt"}
        papermill.execute_notebook(str(REPO_ROOT / "notebooks" / f"{nb}.ipynb"),
                                   str(out_dir / f"{nb}.ipynb"), parameters=params,
                                   kernel_name="python3", cwd=str(REPO_ROOT / "notebooks"),
                                   progress_bar=False)

    figures_after = {f: f.stat().st_mtime_ns for f in figures_dir().rglob("*") if f.is_file()}
    assert figures_after == figures_before, "a plumbing check wrote into figures/"
    for nb in NOTEBOOKS:
        run = runs_dir() / nb / "paper-mini"
        assert "plumbing check" in (run / "RANDOM_WEIGHTS.txt").read_text()
        cfg = json.loads((run / "config.json").read_text())["config"]
        assert cfg["plumbing_check"] and cfg["device"] == ("cuda" if torch.cuda.is_available()
                                                           else "cpu")
    assert list((runs_dir() / "02_face_synthesis" / "paper-mini" / "figures").glob("*.png"))
    faces_cfg = json.loads((runs_dir() / "02_face_synthesis" / "paper-mini" / "config.json")
                           .read_text())["config"]
    assert faces_cfg["world"] == "ffhq" and faces_cfg["clip"] == "ViT-B-32-quickgelu"

    models = recognition.read_models_table(runs_dir() / "03_pretraining" / "paper-mini"
                                           / "models.csv")
    assert sorted(models.pretraining) == ["none", "qdgs", "random"]
    from safetensors import safe_open

    from qdgs_lib.models.iresnet import build_iresnet
    with safe_open(models.model.iloc[0], "pt") as f:
        assert set(f.keys()) == set(build_iresnet("ir101").state_dict())

    results = pd.read_csv(runs_dir() / "04_benchmark_evaluation" / "paper-mini" / "figures"
                          / "04_results.csv")
    assert set(results.benchmark) == {"lfw", "cfp_fp", "cplfw", "calfw", "agedb_30", "rfw"}
    assert len(results) == 3 * 6 and results["all"].between(0, 1).all()
    table = pd.read_csv(runs_dir() / "04_benchmark_evaluation" / "paper-mini" / "figures"
                        / "04_real_benchmarks.csv", index_col=0)
    assert list(table.columns[:6]) == ["lfw", "cfp_fp", "cplfw", "calfw", "agedb_30", "average"]
    assert [c for c in table.columns if c.startswith("rfw_")] == [
        "rfw_african", "rfw_asian", "rfw_caucasian", "rfw_indian"]
    # the same network read back from AdaFace's format: the same numbers on every benchmark
    again = pd.read_csv(runs_dir() / "04_benchmark_evaluation" / "paper-mini" / "figures"
                        / "04_checkpoints.csv")
    assert set(again.checkpoint) == {"none, as AdaFace's"} and set(again.architecture) == {
        "ir101"}
    base = results[results.pretraining == "none"].set_index("benchmark").sort_index()
    again = again.set_index("benchmark").sort_index()
    numbers = [c for c in base.columns if c not in ("pretraining", "seed")]
    pd.testing.assert_frame_equal(again[numbers], base[numbers])


def test_figures_of_plumbing_runs_are_labelled(tmp_path):
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from qdgs_lib import plots
    from qdgs_lib.notebook import PLUMBING_LABEL

    def render(label):
        plots.set_watermark(label)
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [0, 1])
        path = plots.savefig(fig, tmp_path / f"f{label is None}", pdf=False)[0]
        plt.close(fig)
        return np.asarray(Image.open(path).convert("RGB")).astype(int)

    try:
        plain, stamped = render(None), render(PLUMBING_LABEL)
    finally:
        plots.set_watermark(None)
    red = (stamped[..., 0] - stamped[..., 1:].max(-1)) > 60
    assert red.sum() > 100 and ((plain[..., 0] - plain[..., 1:].max(-1)) > 60).sum() == 0
    assert Path(tmp_path / "fTrue.png").is_file()


def test_saved_figures_are_byte_identical_when_unchanged(tmp_path):
    import hashlib
    import time

    import matplotlib.pyplot as plt

    from qdgs_lib import plots

    digests = []
    for k in range(2):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [1, 0])
        paths = plots.savefig(fig, tmp_path / f"f{k}")
        plt.close(fig)
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in paths])
        time.sleep(1.1)  # a creation date would now differ
    assert digests[0] == digests[1] and [p.suffix for p in paths] == [".png", ".pdf"]
