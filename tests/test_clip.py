"""CLIP loading: clear errors for missing weights; the project's CLIPs load from git."""

import pytest
import torch

from qdgs_lib.clip import create_clip


def test_missing_vit_weights_name_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pretrained.*open_clip_model\.safetensors"):
        create_clip("ViT-B-32-quickgelu")
    with pytest.raises(FileNotFoundError, match="not found"):
        create_clip("ViT-B-32-quickgelu", weights=tmp_path / "nope.safetensors")


def test_missing_own_weights_say_how_to_rebuild(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train_clip.py --model qdgs-faces-clip"):
        create_clip("qdgs-faces-clip")


def test_unknown_model_and_bad_images():
    with pytest.raises(ValueError, match="unknown CLIP model"):
        create_clip("ViT-Z-99")
    clip = create_clip("qdgs-shapes-clip", pretrained=False)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clip.encode_image(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match="NaN"):
        clip.encode_image(torch.full((1, 3, 64, 64), float("nan")))


def test_preprocessing_is_differentiable_and_cutouts_average():
    clip = create_clip("qdgs-shapes-clip", num_cutouts=3)
    x = torch.rand(2, 3, 96, 96, requires_grad=True)
    emb = clip.encode_image(x, generator=torch.Generator().manual_seed(0))
    assert emb.shape[0] == 2 and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    emb.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
