import os
import pickle

import numpy as np
import pytest
import torch

from qdgs_lib.generators.stylegan2 import (
    SQRT2,
    StyleGAN2,
    StyleGAN2Generator,
    _filter,
    _SplitModulatedLayer,
    bias_act,
    modulated_conv2d,
    split_modulated_layer,
    upsample2d,
)
from qdgs_lib.generators.stylegan2_legacy import load_stylegan2, read_network_pickle, save_stylegan2
from qdgs_lib.nvidia_format import write_network_pickle


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


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_split_modulated_layer_matches_fused_form_and_its_gradients(up, demodulate):
    """The hand-written backward of the split form: same values as the grouped-conv form,
    gradients checked against finite differences, and vmappable (batched jacobians)."""
    torch.manual_seed(0)
    dt = torch.float64
    x = torch.randn(2, 3, 5, 5, dtype=dt, requires_grad=True)
    s = torch.randn(2, 3, dtype=dt, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=dt)
    noise = 0.1 * torch.randn(5 * up, 5 * up, dtype=dt)
    b = torch.randn(4, dtype=dt)
    f, pad = _filter().to(dt), (1 if up == 1 else 0)

    def fused(x, s):
        y = modulated_conv2d(x, w, s, demodulate, up, pad, f) + noise
        return bias_act(y, b, "lrelu", SQRT2, 1.5)  # clamp 1.5: some outputs are clamped

    def split(x, s):
        return split_modulated_layer(x, w, s, noise, b, up, pad, f, demodulate, 0.2, SQRT2, 1.5)

    out = split(x, s)
    assert (out.abs() == 1.5).any() and (out.abs() < 1.5).any()
    torch.testing.assert_close(out, fused(x, s), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(split, (x, s))
    cot = torch.randn(3, *out.shape, dtype=dt)
    ref = [torch.autograd.grad(fused(x, s), (x, s), c) for c in cot]
    batched = torch.autograd.grad(out, (x, s), cot, is_grads_batched=True)  # PromptScorer's
    _, vjp = torch.func.vjp(split, x, s)
    for gx, gs in (batched, torch.func.vmap(vjp)(cot)):
        for i in range(3):
            torch.testing.assert_close(gx[i], ref[i][0])
            torch.testing.assert_close(gs[i], ref[i][1])


@pytest.mark.parametrize("up", [1, 2])
def test_split_layer_forward_changes_no_tensor_in_place(up):
    """torch 2.11's torch.compile sends the gradient of a tensor changed in place inside a
    Function's forward to the wrong output (pytorch#180642): compiled StyleGAN2 jacobians
    came out zero on an H200. The split layer's forward stays free of in-place ops (every
    aten op it dispatches, recorded here, is functional), whatever torch version runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Mutations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.is_mutable:
                self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    x, s = torch.randn(2, 3, 5, 5), torch.randn(2, 3)
    w, b, noise = torch.randn(4, 3, 3, 3), torch.randn(4), torch.randn(5 * up, 5 * up)
    for demodulate in (True, False):
        with Mutations() as seen:  # a clamp that bites, as in test_split_modulated_layer_...
            out = _SplitModulatedLayer.forward(x, s, w, noise, b, up, 1 if up == 1 else 0,
                                               _filter(), demodulate, 0.2, SQRT2, 1.5)[0]
        assert (out.abs() == 1.5).any()
        assert seen.ops == [], seen.ops


def test_compiled_generator_gives_the_eager_gradients():
    """torch.compile'd decode (the scorer's compile_static) through the split layers: the
    same images and latent gradients as eager. On torch 2.11 with the old in-place forward
    the compiled gradient was exactly zero, on a CPU too."""
    from qdgs_lib.utils import compile_available

    if (why := compile_available(torch.device("cpu"))) is not None:
        pytest.skip(why)
    gen = StyleGAN2Generator(small_net(), num_std_samples=500)
    gen.modconv = "split"
    z, probe = gen.sample_prior(2, seed=1), torch.randn(2, 3, 16, 16)

    def image_and_grad(decode):
        q = z.clone().requires_grad_(True)
        img = decode(q)
        return img.detach(), torch.autograd.grad((img * probe).sum(), q)[0]

    (img, grad), (cimg, cgrad) = image_and_grad(gen.decode), \
        image_and_grad(torch.compile(gen.decode, dynamic=False))
    assert grad.norm() > 0
    torch.testing.assert_close(cimg, img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cgrad, grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item())


def test_generator_split_and_fused_modconv_agree_in_images_and_jacobians():
    gen = StyleGAN2Generator(small_net(), num_std_samples=500)
    q0 = gen.sample_prior(3, seed=2)
    probe = torch.randn(3, 3, 16, 16)
    results = {}
    for mode in ("fused", "split"):
        gen.modconv = mode
        q = q0.clone().requires_grad_(True)
        img = gen.decode(q)
        (grad,) = torch.autograd.grad((img * probe).sum(), q)
        results[mode] = img.detach(), grad
    torch.testing.assert_close(results["split"][0], results["fused"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results["split"][1], results["fused"][1], rtol=1e-4, atol=1e-5)
    gen.modconv = "auto"  # fused for values, split when a gradient is taken
    with torch.no_grad():
        torch.testing.assert_close(gen.decode(q0), results["fused"][0], rtol=0, atol=0)


def test_scorer_jacobian_modes_agree_on_stylegan2():
    from toys import ToyClip

    from qdgs_lib.scoring import PromptScorer

    gen = StyleGAN2Generator(small_net(), num_std_samples=500)
    sc = PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")],
                      weights=(1.0, 0.5, 0.0))
    sc.clip.encode_image = lambda im, **kw: ToyClip.encode_image(
        sc.clip, torch.nn.functional.interpolate(im, size=8, mode="area"))
    z = gen.sample_prior(3, seed=3).numpy()
    gen.modconv = "fused"
    ref = sc.evaluate_per_output(z)  # the released scheme
    gen.modconv = "auto"
    for mode in ("batched", "func", "loop", "auto"):
        sc.jacobian_mode = mode
        s = sc.evaluate(z, jacobian=True, update_memory=False)
        np.testing.assert_allclose(s.measures, ref.measures, atol=1e-5)
        np.testing.assert_allclose(s.jacobian, ref.jacobian, rtol=1e-3, atol=1e-4)
        assert np.abs(s.jacobian).max() > 0
    assert sc.jacobian_mode == "auto"  # func ran without falling back to loop


def test_trainable_generator_never_takes_the_frozen_weight_backward():
    net = small_net().train()  # parameters require grad
    ws = net.mapping(torch.randn(2, 32)).detach().requires_grad_(True)
    net.synthesis(ws).sum().backward()  # auto: the grouped form, weight gradients flow
    assert net.synthesis.b16.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="frozen weights"):
        net.synthesis(ws, fused_modconv=False)


def _split_layer_inputs(scale: float = 1.0, up: int = 1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 16, 16, generator=g) * 20
    weight = torch.randn(64, 64, 3, 3, generator=g)
    styles = (1 + torch.rand(2, 64, generator=g)) * scale
    bias = torch.randn(64, generator=g)
    return x, weight, styles, bias, dict(up=up, padding=1, f=_filter(), clamp=256.0)


@pytest.mark.parametrize("up", [1, 2])
def test_split_layer_in_float16_stays_in_range(up):
    """Under float16 autocast the split layer's convolution runs before the demodulation, on
    raw weights and styles: with large styles it overflowed (inf, clamped to +-256 or NaN,
    and no error). Pre-normalised (NVIDIA's way), it gives float32's output and gradient."""
    x, weight, styles, bias, kw = _split_layer_inputs(scale=300.0, up=up)
    ref_in = styles.clone().requires_grad_(True)
    ref = split_modulated_layer(x, weight, ref_in, None, bias, **kw)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), ref_in)
    half_in = styles.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.float16, cache_enabled=False):
        out = split_modulated_layer(x, weight, half_in, None, bias, **kw)
        (grad,) = torch.autograd.grad(out.float().square().sum(), half_in)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()
    assert (grad - ref_grad).norm() < 0.05 * ref_grad.norm()


def test_split_layer_backward_keeps_the_forward_autocast(monkeypatch):
    """A backward run outside autocast (as torch recommends) still runs the split layer's
    convolution under the forward pass's autocast, as torch's own ops' backward does."""
    import qdgs_lib.generators.stylegan2 as sg

    adjoint, seen = sg._shared_conv_adjoint, []
    monkeypatch.setattr(sg, "_shared_conv_adjoint", lambda *a: seen.append(
        torch.is_autocast_enabled("cpu")) or adjoint(*a))
    x, weight, styles, bias, kw = _split_layer_inputs()
    for autocast in (False, True):
        s = styles.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = split_modulated_layer(x, weight, s, None, bias, **kw)
        torch.autograd.grad(out.float().sum(), s)  # outside the autocast block
        assert seen == [autocast]
        seen.clear()


def test_network_pickle_written_from_a_gpu_loads_on_a_cpu(tmp_path, monkeypatch):
    """Storages pickled from a GPU carry a "cuda:0" tag; they are read to the CPU (torch
    refused them on a machine without CUDA, reported as a bad file)."""
    net = small_net()
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    write_network_pickle(net, tmp_path / "gpu.pkl")
    monkeypatch.undo()
    loaded = load_stylegan2(tmp_path / "gpu.pkl", device="cpu")
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(loaded(z), net(z), atol=1e-6)
