"""The README's code snippets run as written (with small stand-ins for the user's parts)."""

import re
from pathlib import Path

import torch
from toys import ToyClip

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet(heading: str) -> str:
    """The first python block after ``heading`` in the README."""
    text = README.read_text()
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_the_own_generator_snippet_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes runs/mine
    w = torch.randn(128, 3 * 8 * 8, generator=torch.Generator().manual_seed(0)) / 128**0.5

    def G(z):  # a "GAN" with tanh output, latents of 128
        return torch.tanh(z @ w).view(-1, 3, 8, 8)

    names = {"G": G, "clip": ToyClip(), "objective_prompts": ("good", "bad"),
             "measure_prompts": [("a", "b"), ("c", "d")]}
    exec(snippet("**Your own generator.**"), names)  # noqa: S102
    import numpy as np

    counts = np.unique(names["groups"][names["keep"]], return_counts=True)[1]
    assert len(counts) == 4 and len(set(counts)) == 1  # the same number in each group
    assert (tmp_path / "runs" / "mine" / "archive.parquet").exists()
    import pandas as pd

    manifest = pd.read_csv(tmp_path / "runs" / "mine" / "dataset" / "manifest.csv")
    assert len(manifest) == len(names["keep"]) and manifest["class"].nunique() == 4
    assert all((tmp_path / "runs" / "mine" / "dataset" / f).is_file() for f in manifest.file)


def test_the_minimal_search_snippet_runs_as_written(tmp_path, monkeypatch):
    """On the shipped shapes VAE and CLIP; 3 iterations instead of 2000 (the rest as written)."""
    monkeypatch.chdir(tmp_path)  # it writes runs/my_search
    code = snippet("A minimal search:")
    assert "iterations=2000" in code
    names = {}
    exec(code.replace("iterations=2000", "iterations=3"), names)  # noqa: S102
    assert names["scorer"].weights == (1.0, 2.0, 0.0)
    assert names["archive"].stats.num_elites > 0
    assert (tmp_path / "runs" / "my_search" / "archive.parquet").exists()


def test_the_adaface_checkpoint_snippet_runs_as_written(tmp_path, monkeypatch):
    """On a small AdaFace-format IR-18 at the path the snippet names."""
    from qdgs_lib.adaface_format import save_adaface_checkpoint
    from qdgs_lib.models.iresnet import build_iresnet

    monkeypatch.chdir(tmp_path)
    net = build_iresnet("ir18").eval()
    save_adaface_checkpoint(net, tmp_path / "experiments/real_pretrain_qdgs_0/last.ckpt")
    names: dict = {}
    exec(snippet("### AdaFace checkpoints"), names)  # noqa: S102
    assert (tmp_path / "ours.ckpt").is_file()
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(names["net"](x)[0], net(x)[0])
