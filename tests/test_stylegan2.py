import os
import pickle

import pytest
import torch
from nvidia_format import write_network_pickle

from qdgs_lib.generators.stylegan2 import (
    StyleGAN2,
    StyleGAN2Generator,
    load_stylegan2,
    read_network_pickle,
    save_stylegan2,
    upsample2d,
)


def small_net(seed=0):
    torch.manual_seed(seed)
    net = StyleGAN2(z_dim=32, w_dim=32, img_resolution=16, channel_base=256, channel_max=32)
    with torch.no_grad():  # non-trivial noise strengths and w_avg, so they are tested too
        for name, p in net.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
        net.mapping.w_avg.copy_(net.mapping(torch.randn(2000, 32))[:, 0].mean(0))
    return net.eval()


def test_architecture_matches_paper256_layout():
    net = StyleGAN2()  # the paper's stylegan2-ffhq-256 configuration
    assert net.num_ws == 14
    ch = [getattr(net.synthesis, f"b{r}").conv1.weight.shape[0] for r in
          (4, 8, 16, 32, 64, 128, 256)]
    assert ch == [512, 512, 512, 512, 256, 128, 64]
    sd = net.state_dict()
    assert sd["synthesis.b4.const"].shape == (512, 4, 4)
    assert sd["synthesis.b8.conv0.affine.weight"].shape == (512, 512)
    assert sd["synthesis.b256.torgb.weight"].shape == (3, 64, 1, 1)
    assert sd["synthesis.b8.conv0.noise_const"].shape == (8, 8)
    assert "mapping.fc7.weight" in sd and "mapping.w_avg" in sd


def test_upsample_keeps_constant_images_constant():
    x = torch.full((1, 2, 4, 4), 3.0)
    y = upsample2d(x, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    assert y.shape == (1, 2, 8, 8)
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 3.0))


def test_network_pickle_loads_round_trips_and_renders_deterministically(tmp_path):
    net = small_net()
    path = tmp_path / "net.pkl"
    write_network_pickle(net, path)
    loaded = load_stylegan2(path)
    z = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(z, truncation_psi=0.7)
        a, b = loaded(z, truncation_psi=0.7), loaded(z, truncation_psi=0.7)
    assert a.shape == (3, 3, 16, 16)
    assert torch.equal(a, b)
    assert torch.allclose(a, ref, atol=1e-6)
    # our safetensors format round-trips too
    save_stylegan2(loaded, tmp_path / "net.safetensors")
    again = load_stylegan2(tmp_path / "net.safetensors")
    with torch.no_grad():
        assert torch.allclose(again(z, truncation_psi=0.7), ref, atol=1e-6)


def test_malicious_pickle_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="allow-list"):
        read_network_pickle(path)
    assert not marker.exists()


def test_pickle_without_generator_is_refused(tmp_path):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"something": [1, 2, 3]}))
    with pytest.raises(ValueError, match="G_ema"):
        load_stylegan2(path)


def test_missing_weights_error_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pretrained.*stylegan2-ffhq-256x256.pkl"):
        load_stylegan2()


def test_normalized_w_space_generator_gradients_flow():
    gen = StyleGAN2Generator(small_net(), num_std_samples=500)
    q = gen.sample_prior(400, seed=1)
    assert q.shape == (400, 32)
    # normalized space: per-dimension unit scale around zero (w_avg is the mapped mean)
    assert torch.allclose(q.std(0), torch.ones(32), atol=0.25)
    assert q.mean(0).abs().max() < 0.3
    q = q[:2].clone().requires_grad_(True)
    img = gen.decode(q)
    assert img.shape == (2, 3, 16, 16) and img.min() >= 0 and img.max() <= 1
    img.mean().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="latents"):
        gen.decode(torch.zeros(2, 5))
