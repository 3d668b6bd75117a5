"""CLIP loading: clear errors for missing weights; the project's CLIPs load from git."""

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from qdgs_lib.clip import create_clip, resolve_weights


def test_missing_vit_weights_name_the_file_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pretrained.*open_clip_model\.safetensors"):
        create_clip("ViT-B-32-quickgelu")
    with pytest.raises(FileNotFoundError, match="not found"):
        create_clip("ViT-B-32-quickgelu", weights=tmp_path / "nope.safetensors")


def test_missing_own_weights_say_how_to_rebuild(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    # the command that trained the shipped file, not the script's defaults (batch 96)
    with pytest.raises(FileNotFoundError, match="train_clip.py --model qdgs-faces-clip "
                                                "--steps 2000 --batch 64"):
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


def _released_cutout_clip(n: int, size: int = 224):
    from qdgs_lib.clip import Clip

    return Clip(torch.nn.Identity(), None, size, num_cutouts=n, cutout_style="released")


def test_released_cutouts_draw_the_released_sizes_and_pool():
    """MakeCutouts(224, n, cut_pow=0.5) of the released code: sides u ** 0.5 between the input
    size and the image's side (float32 arithmetic), x then y offsets, average-pooled. (Against
    the released class itself: scripts/check_against_released.py.)"""
    clip = _released_cutout_clip(3)
    x = torch.rand(2, 3, 256, 256)
    torch.manual_seed(5)
    out = clip._cutouts(x, None)
    assert out.shape == (6, 3, 224, 224)
    torch.manual_seed(5)
    for k in range(3):
        side = int(torch.rand(()) ** 0.5 * 32 + 224)
        ox, oy = int(torch.randint(0, 257 - side, ())), int(torch.randint(0, 257 - side, ()))
        want = F.adaptive_avg_pool2d(x[:, :, oy:oy + side, ox:ox + side], 224)
        torch.testing.assert_close(out[2 * k:2 * k + 2], (want - clip.mean) / clip.std,
                                   rtol=0, atol=0)
    # the law of the side: E[u ** 0.5] = 2/3 of the way from 224 to 256
    g = torch.Generator().manual_seed(0)
    sides = [int(torch.rand((), generator=g) ** 0.5 * 32 + 224) for _ in range(4000)]
    assert 224 <= min(sides) and max(sides) <= 256 and abs(sum(sides) / 4000 - 244.8) < 0.5
    # an image smaller than the input: always whole, pooled up (the released shapes, 128 px)
    small = torch.rand(1, 3, 128, 128)
    whole = (F.adaptive_avg_pool2d(small, 224) - clip.mean) / clip.std
    for seed in range(3):
        torch.testing.assert_close(clip._cutouts(small, torch.Generator().manual_seed(seed))[:1],
                                   whole, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown cutout_style"):
        create_clip("qdgs-shapes-clip", pretrained=False, cutout_style="dall-e")


def test_released_style_without_cutouts_pools_the_whole_image():
    """cutouts 0 under cutout_style "released": the whole image average-pooled, no draw; for
    images no larger than the input, exactly what the released one crop gives."""
    pooled = _released_cutout_clip(0)
    small = torch.rand(2, 3, 128, 128)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    got = pooled.preprocess(small)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
    assert torch.equal(got, _released_cutout_clip(1)._cutouts(small, None))
    large = torch.rand(2, 3, 256, 256)
    assert torch.equal(pooled.preprocess(large),
                       (F.adaptive_avg_pool2d(large, 224) - pooled.mean) / pooled.std)
    project = create_clip("qdgs-shapes-clip", pretrained=False)
    released = create_clip("qdgs-shapes-clip", pretrained=False, cutout_style="released")
    x = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(project.preprocess(x), released.preprocess(x))  # 128 -> 64 px
    emb, jac = _embedding_and_jacobian(released, x)  # both jacobian modes through the pool
    assert torch.isfinite(jac).all() and jac.abs().sum() > 0


def test_float16_weights_are_converted_as_openai_clip_load_converts_them():
    """precision "float16": convolutions, linear layers, attention and projections in half
    precision, layer norms and embeddings tables not (OpenAI's convert_weights); images enter
    in half precision; "released" is float16 on CUDA only, as clip.load chose."""
    import open_clip

    half = create_clip("qdgs-faces-clip", precision="float16")
    full = create_clip("qdgs-faces-clip")
    assert half.weights_dtype == torch.float16 and full.weights_dtype == torch.float32
    for name, t in half.model.named_parameters():
        module = half.model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else half.model
        lowered = isinstance(module, (torch.nn.Conv2d, torch.nn.Linear,
                                      torch.nn.MultiheadAttention)) or \
            name.endswith(("proj", "text_projection"))
        assert t.dtype == (torch.float16 if lowered else torch.float32), name
    assert isinstance(half.model.visual.ln_pre, torch.nn.LayerNorm)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = half.encode_image(x), full.encode_image(x)
    assert a.dtype == torch.float16 and b.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a.float(), b).min() > 0.999
    assert not torch.equal(a.float(), b)
    text = half.encode_text(["a red shape"])
    assert text.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(text, full.encode_text(["a red shape"])) > 0.999
    released = create_clip("qdgs-faces-clip", precision="released", device="cpu")
    assert released.weights_dtype == torch.float32  # (float16 on CUDA: tests/test_devices.py)
    with pytest.raises(ValueError, match="precision must be one of"):
        create_clip("qdgs-faces-clip", precision="fp16")
    assert open_clip.model.convert_weights_to_lp  # the conversion used (open_clip's copy)


def test_a_float16_clip_scores_and_differentiates_like_float32():
    from qdgs_lib.generators.toy_faces import ToyFaces
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.scoring import scorer_for_profile

    gen = ToyFaces()
    cpu = torch.device("cpu")
    p = get_profile("default", "faces")
    full = scorer_for_profile(gen, p, cpu)
    half = scorer_for_profile(gen, {**p, "clip_precision": "float16"}, cpu)
    assert half.settings()["clip_precision"] == "float16"
    assert full.settings()["clip_precision"] == "float32"
    assert half.weights_sha256() != full.weights_sha256()
    z = gen.sample_prior(3, seed=0).numpy()
    want = full.evaluate(z, jacobian=True, update_memory=False)
    for mode in ("batched", "func"):
        half.jacobian_mode = mode
        got = half.evaluate(z, jacobian=True, update_memory=False)
        assert np.isfinite(got.jacobian).all()
        np.testing.assert_allclose(got.measures, want.measures, atol=2e-3)
        cos = (got.jacobian * want.jacobian).sum(-1) / np.linalg.norm(got.jacobian, axis=-1) \
            / np.linalg.norm(want.jacobian, axis=-1)
        assert cos.min() > 0.9999, (mode, cos.min())


@pytest.mark.parametrize("shape", [(2, 3, 256, 256), (1, 3, 128, 128), (2, 3, 300, 240),
                                   (1, 3, 224, 224), (1, 3, 231, 250)])
def test_pooling_as_matmuls_is_adaptive_average_pooling(shape):
    """What the released crops pool with under deterministic algorithms on CUDA."""
    from qdgs_lib.utils import adaptive_avg_pool_matmul

    x = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
    want = F.adaptive_avg_pool2d(x, 224)
    got = adaptive_avg_pool_matmul(x, 224)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    g = torch.rand_like(want)
    (gx,) = torch.autograd.grad(got, x, g)
    (wx,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(gx, wx, rtol=0, atol=1e-12)


def test_the_cutout_style_is_part_of_a_search_s_settings():
    from qdgs_lib.generators.shapes_vae import load_shapes_vae
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.scoring import scorer_for_profile

    p = get_profile("smoke", "shapes", cutouts=1, cutout_style="released")
    scorer = scorer_for_profile(load_shapes_vae(), p, torch.device("cpu"))
    assert scorer.clip.cutout_style == "released" and scorer.clip.num_cutouts == 1
    assert scorer.settings()["cutout_style"] == "released"


def _embedding_and_jacobian(clip, x: torch.Tensor, k: int = 5):
    """Embeddings and the vmapped backward of k embedding dimensions, both ways the scorer
    runs it (``batched``: autograd's is_grads_batched; ``func``: torch.func vjp + vmap)."""
    x = x.clone().requires_grad_(True)
    emb = clip.encode_image(x, check=False)
    cot = torch.eye(emb.shape[1], device=x.device)[:k, None, :].expand(k, *emb.shape)
    (jac,) = torch.autograd.grad(emb, x, cot.contiguous(), is_grads_batched=True)
    _, vjp = torch.func.vjp(lambda z: clip.encode_image(z, check=False), x.detach())
    (jac_func,) = torch.func.vmap(vjp)(cot.contiguous())
    torch.testing.assert_close(jac_func, jac, rtol=1e-4, atol=1e-6)
    return emb.detach(), jac


def test_packed_attention_is_the_stock_attention(monkeypatch):
    """PackedSelfAttention: open_clip's parameters, state_dict keys and numbers (embeddings and
    vmapped backward passes); "auto" keeps the stock code off CUDA; text (masked) stays stock."""
    from qdgs_lib.clip import PackedSelfAttention

    stock = create_clip("qdgs-shapes-clip", packed_attention=False)
    packed = create_clip("qdgs-shapes-clip", packed_attention=True)
    auto = create_clip("qdgs-shapes-clip")
    assert stock.model.state_dict().keys() == packed.model.state_dict().keys()
    for a, b in zip(stock.model.state_dict().values(), packed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    layers = sum(isinstance(m, PackedSelfAttention) for m in packed.modules())
    assert layers == 4 and not any(isinstance(m, PackedSelfAttention) for m in stock.modules())

    calls = []
    run = PackedSelfAttention._packed
    monkeypatch.setattr(PackedSelfAttention, "_packed",
                        lambda self, x: calls.append(1) or run(self, x))
    for batch in (1, 4, 32):
        x = torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        emb, jac = _embedding_and_jacobian(stock, x)
        n = len(calls)
        emb_p, jac_p = _embedding_and_jacobian(packed, x)
        assert len(calls) == n + 2 * layers  # the packed path ran (in both jacobian modes)
        torch.testing.assert_close(emb_p, emb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(jac_p, jac, rtol=1e-4, atol=1e-6)
        n = len(calls)
        emb_a, jac_a = _embedding_and_jacobian(auto, x)
        assert len(calls) == n and torch.equal(emb_a, emb) and torch.equal(jac_a, jac)
    text = ["a red circle", "a blue triangle"]
    assert torch.equal(packed.encode_text(text), stock.encode_text(text))
    assert len(calls) == 3 * 2 * layers  # the causal text tower never takes the packed path


def test_packed_attention_shares_the_parameters_and_trains():
    """The swap keeps the very parameter tensors (no copy), and a training step through the
    packed modules gives the stock module's gradients."""
    import copy

    import open_clip

    from qdgs_lib.clip import pack_self_attention, register_configs

    register_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("qdgs-shapes-clip")
    stock = copy.deepcopy(model.visual)
    before = {n: p for n, p in model.visual.named_parameters()}
    assert pack_self_attention(model.visual) == 4
    after = dict(model.visual.named_parameters())
    assert before.keys() == after.keys() and all(before[n] is after[n] for n in before)
    x = torch.rand(3, 3, 64, 64)
    stock(x).square().sum().backward()
    model.visual(x).square().sum().backward()
    # equal to float rounding, relative to each gradient's largest entry: the packed and stock
    # attention sum in other orders (torch 2.6's CPU kernels: within 6e-7 of it)
    for (name, p), q in zip(model.visual.named_parameters(), stock.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=2e-6 * q.grad.abs().max().item(),
                                   msg=lambda m, name=name: f"{name}: {m}")


TINY_OPENAI = {  # an OpenAI-layout CLIP small enough for a test (ViT, QuickGELU)
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                 "layers": 1},
}


def _torchscript_like_openai(state: dict, path):
    """A TorchScript archive holding ``state`` under its keys, as OpenAI's ``ViT-B-32.pt``."""
    from torch import nn

    class Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, Holder())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone())
    torch.jit.save(torch.jit.script(root), str(path))


def test_openai_torchscript_file_loads(tmp_path):
    """OpenAI's original release format (a TorchScript archive, fp16 weights) loads through
    open_clip's rebuild; a file of another architecture is refused with the model name."""
    import json

    import open_clip

    (tmp_path / "tiny-openai-test.json").write_text(json.dumps(TINY_OPENAI))
    open_clip.add_model_config(tmp_path / "tiny-openai-test.json")
    torch.manual_seed(0)
    ref = open_clip.create_model("tiny-openai-test")
    state = {k: v.half() if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    _torchscript_like_openai(state, tmp_path / "tiny.pt")
    ref.load_state_dict({k: v.float() for k, v in state.items()})  # OpenAI ships fp16 weights

    clip = create_clip("tiny-openai-test", weights=tmp_path / "tiny.pt", device="cpu")
    x = torch.rand(3, 3, 64, 64)
    want = torch.nn.functional.normalize(ref.eval().encode_image(clip.preprocess(x)), dim=-1)
    torch.testing.assert_close(clip.encode_image(x), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="holds a ViT of width 64, 2 layers and patch 32"):
        create_clip("ViT-B-32-quickgelu", weights=tmp_path / "tiny.pt", device="cpu")


def test_weights_of_another_model_or_a_broken_record_are_refused(tmp_path):
    import shutil

    from qdgs_lib.paths import weights_dir
    from qdgs_lib.utils import BadFileError

    for suffix in ("", ".json"):
        shutil.copy(weights_dir() / f"qdgs-faces-clip.safetensors{suffix}",
                    tmp_path / f"faces.safetensors{suffix}")
    # same architecture, so open_clip would load it silently; the record says what it is
    with pytest.raises(ValueError, match="trained as 'qdgs-faces-clip'.*not 'qdgs-shapes-clip'"):
        create_clip("qdgs-shapes-clip", weights=tmp_path / "faces.safetensors")
    create_clip("qdgs-faces-clip", weights=tmp_path / "faces.safetensors")  # its own name: fine
    (tmp_path / "faces.safetensors.json").write_text("{not json")
    with pytest.raises(BadFileError, match="not a readable weights record"):
        create_clip("qdgs-faces-clip", weights=tmp_path / "faces.safetensors")
    (tmp_path / "faces.safetensors.json").write_text("[1, 2]")
    with pytest.raises(BadFileError, match="not a weights record"):
        create_clip("qdgs-faces-clip", weights=tmp_path / "faces.safetensors")


def test_openai_weights_in_a_gelu_model_warn(tmp_path):
    import shutil

    from qdgs_lib.paths import weights_dir

    # a file named like OpenAI's download, loaded into a non-QuickGELU architecture
    shutil.copy(weights_dir() / "qdgs-shapes-clip.safetensors",
                tmp_path / "open_clip_model.safetensors")
    with pytest.warns(UserWarning, match="QuickGELU"):
        create_clip("qdgs-shapes-clip", weights=tmp_path / "open_clip_model.safetensors")


def test_packed_attention_keeps_the_stock_call_and_freezing():
    """The stock signature (positional key_padding_mask / need_weights) and the stock path for
    what the packed one does not do; a frozen tower stays frozen; hooked modules stay stock."""
    from torch import nn

    from qdgs_lib.clip import PackedSelfAttention, pack_self_attention

    torch.manual_seed(0)
    tower = nn.Sequential(nn.MultiheadAttention(16, 2, batch_first=True)).requires_grad_(False)
    stock = nn.MultiheadAttention(16, 2, batch_first=True)
    stock.load_state_dict(tower[0].state_dict())
    assert pack_self_attention(tower) == 1 and isinstance(tower[0], PackedSelfAttention)
    assert not any(p.requires_grad for p in tower.parameters())
    x = torch.randn(3, 5, 16)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[:, -1] = True
    for args in ((pad, False), (None, False), (None, True)):  # positional, as the stock takes
        got, want = tower[0](x, x, x, *args), stock(x, x, x, *args)
        torch.testing.assert_close(got[0], want[0])
        assert (got[1] is None) == (want[1] is None)
    torch.testing.assert_close(tower[0](x, x, x, is_causal=True, need_weights=False,
                                        attn_mask=nn.Transformer.generate_square_subsequent_mask(5))[0],
                               stock(x, x, x, is_causal=True, need_weights=False,
                                     attn_mask=nn.Transformer.generate_square_subsequent_mask(5))[0])
    hooked = nn.Sequential(nn.MultiheadAttention(16, 2, batch_first=True))
    hooked[0].register_forward_hook(lambda *a: None)
    assert pack_self_attention(hooked) == 0


def test_layer_norms_take_float32_inputs_and_keep_the_numbers(monkeypatch):
    """create_clip makes open_clip's layer norms cast half-precision inputs to float32
    themselves (under autocast a vmapped backward fails on the stock form's mixed dtypes):
    the same parameters, and the same float32 embeddings as with the stock layer norms; a
    float64 model keeps float64 (and so does a plain nn.LayerNorm, also without affine)."""
    import open_clip

    import qdgs_lib.clip
    from qdgs_lib.clip import PromotingLayerNorm, _layer_norms_take_fp32

    clip = create_clip("qdgs-shapes-clip", packed_attention=False)
    norms = [m for m in clip.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(type(m) is PromotingLayerNorm for m in norms)
    monkeypatch.setattr(qdgs_lib.clip, "_layer_norms_take_fp32", lambda model: None)
    stock = create_clip("qdgs-shapes-clip", packed_attention=False)
    assert all(type(m) is open_clip.transformer.LayerNorm for m in stock.modules()
               if isinstance(m, torch.nn.LayerNorm))
    assert clip.state_dict().keys() == stock.state_dict().keys()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    text = ["a red circle", "a blue square"]
    with torch.no_grad():
        assert torch.equal(clip.encode_image(x), stock.encode_image(x))
        assert torch.equal(clip.encode_text(text), stock.encode_text(text))
        half = clip.model.visual.ln_post(torch.randn(2, 128).bfloat16())
        assert half.dtype == torch.bfloat16
        emb = clip.double().encode_image(x.double())
        assert emb.dtype == torch.float64
        for affine in (True, False):
            plain = torch.nn.Sequential(torch.nn.LayerNorm(8, elementwise_affine=affine))
            ref = plain(x[:, 0, 0, :8])
            _layer_norms_take_fp32(plain)
            assert type(plain[0]) is PromotingLayerNorm and torch.equal(plain(x[:, 0, 0, :8]),
                                                                        ref)


class _WritesAFile(torch.nn.Module):
    """TorchScript whose __setstate__ (run by torch.jit.load) creates a file."""

    def __init__(self, target: str):
        super().__init__()
        self.w = torch.zeros(1)
        self.target = target

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.w, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.w, self.target, self.training = state[0], state[1], state[2]
        t = torch.from_file(self.target, True, 8, dtype=torch.uint8)
        self.w = state[0] + t[:1].float() * 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w


def test_torchscript_weights_are_read_as_data_not_run(tmp_path):
    """OpenAI's ViT-B-32.pt format is TorchScript: loading it with torch.jit.load runs its
    code. The weights are read as data, so a file-writing archive writes nothing."""
    from qdgs_lib.clip import read_torchscript_tensors
    from qdgs_lib.utils import BadFileError

    target = tmp_path / "written_by_the_archive"
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(_WritesAFile(str(target))), str(path))
    with pytest.raises(BadFileError):
        create_clip("ViT-B-32-quickgelu", weights=path, device="cpu")
    assert not target.exists()
    # a plain scripted module: its tensors by attribute path, dtype kept
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)).half()
    torch.jit.save(torch.jit.script(net), str(tmp_path / "plain.pt"))
    got = read_torchscript_tensors(tmp_path / "plain.pt")
    assert got.keys() == net.state_dict().keys()
    for k, v in net.state_dict().items():
        assert got[k].dtype == torch.float16 and torch.equal(got[k], v)


def test_torchscript_tensors_cannot_outgrow_their_storage(tmp_path):
    """A 4-byte storage asked to back 64M floats used to grow (256 MiB of uninitialised
    memory from a 423-byte archive); the storage is fixed-size now, so the file is refused."""
    import collections
    import io
    import pickle
    import zipfile

    from qdgs_lib.clip import read_torchscript_tensors
    from qdgs_lib.utils import BadFileError

    class Ref:
        pass

    class Big:
        def __init__(self, ref):
            self.ref = ref

        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2,
                    (self.ref, 0, (64 * 2**20,), (1,), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 1) if isinstance(obj, Ref) \
                else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"w": Big(Ref())})
    with zipfile.ZipFile(tmp_path / "big.pt", "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", b"\0" * 4)
    with pytest.raises(BadFileError, match="big.pt"):
        read_torchscript_tensors(tmp_path / "big.pt")


def test_openai_torchscript_weights_run_with_quickgelu_whatever_the_name(tmp_path):
    """OpenAI's weights were trained with QuickGELU; open_clip's loader forced it, and a name
    without -quickgelu ("ViT-B-32") must not turn it into GELU."""
    import json

    import open_clip
    from open_clip.transformer import QuickGELU

    cfg = {**TINY_OPENAI, "quick_gelu": False}
    (tmp_path / "tiny-gelu-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "tiny-gelu-test.json")
    torch.manual_seed(0)
    _torchscript_like_openai(open_clip.create_model("tiny-gelu-test").state_dict(),
                             tmp_path / "tiny.pt")
    clip = create_clip("tiny-gelu-test", weights=tmp_path / "tiny.pt", device="cpu")
    assert any(isinstance(m, QuickGELU) for m in clip.modules())


def test_the_matmul_resize_is_the_antialiased_interpolation():
    """CLIP's resize as two matrix products (its backward is matmuls: deterministic on CUDA,
    where the interpolation's backward adds with atomics) gives torch's antialiased bilinear
    resize, values and gradients, shrinking and growing, square or not (float64: to
    rounding; float32: as the float32 interpolation); under autocast it stays float32, and
    it vmaps."""
    import torch.nn.functional as F

    from qdgs_lib.utils import resize_square_matmul

    g = torch.Generator().manual_seed(0)
    for h, w, size in [(256, 256, 224), (64, 64, 224), (32, 48, 64), (37, 53, 20), (255, 257, 7),
                       (1, 5, 3), (1024, 16, 112)]:
        x = torch.rand(2, 3, h, w, dtype=torch.float64, generator=g, requires_grad=True)
        want = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)
        got = resize_square_matmul(x, size)
        want_values = want.detach()
        cot = torch.randn(want.shape, dtype=torch.float64, generator=g)
        (gw,) = torch.autograd.grad(want, x, cot)
        (gg,) = torch.autograd.grad(got, x, cot)
        assert got.shape == (2, 3, size, size)
        assert (got - want).abs().max() < 1e-12, (h, w, size)
        assert (gg - gw).abs().max() < 1e-12 * max(1.0, gw.abs().max()), (h, w, size)
        # float32: as close as the float32 interpolation (both 1.9e-5 off at 256 -> 224)
        x32 = x.detach().float()
        err32 = F.interpolate(x32, size=(size, size), mode="bilinear", antialias=True) - \
            want_values
        assert (resize_square_matmul(x32, size) - want_values).abs().max() <= \
            max(1e-6, 1.5 * float(err32.abs().max()))
    x = torch.rand(1, 3, 32, 32, generator=g)
    assert resize_square_matmul(x, 32) is x  # nothing to do
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = resize_square_matmul(x, 20)
    assert y.dtype == torch.float32
    assert torch.allclose(y, resize_square_matmul(x, 20), atol=0, rtol=0)

    def corner(x):
        return resize_square_matmul(x, 20)[:, 0, :2, :2].flatten(1)

    out, vjp = torch.func.vjp(corner, x)
    (jac,) = torch.func.vmap(vjp)(torch.eye(4)[:, None, :])
    ref = torch.autograd.functional.jacobian(corner, x)  # (1, 4, 1, 3, 32, 32)
    assert torch.allclose(jac[:, 0], ref[0][:, 0], atol=1e-7)


HF_TINY = Path(__file__).parent / "data" / "hf_clip_tiny"


def hf_folder(tmp_path, name="hf", state=None, config=None):
    """A transformers checkpoint folder: the fixture's files, or other tensors / config."""
    folder = tmp_path / name
    folder.mkdir()
    cfg = json.loads((HF_TINY / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    if state is None:
        shutil.copy(HF_TINY / "model.safetensors", folder)
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_transformers_clip_checkpoints_embed_as_transformers_does(tmp_path):
    """A tiny CLIPModel written by transformers' save_pretrained, and its own embeddings
    (scripts/check_against_transformers.py --write-fixture; ViT-B/32 is checked there): the
    folder, its safetensors file and a pytorch_model.bin of older transformers (position_ids
    buffers included) load into the open_clip architecture and embed alike."""
    open_clip.add_model_config(HF_TINY.parent / "hf-clip-tiny.json")
    ref = np.load(HF_TINY / "reference.npz")
    state = load_file(HF_TINY / "model.safetensors")
    assert sorted(state) == sorted(ref["keys"])  # transformers' names, as it wrote them
    old = {**state, "text_model.embeddings.position_ids": torch.arange(16)[None],
           "vision_model.embeddings.position_ids": torch.arange(17)[None]}
    images, tokens = torch.from_numpy(ref["images"]), torch.from_numpy(ref["tokens"])
    for weights in (hf_folder(tmp_path), HF_TINY / "model.safetensors",
                    hf_folder(tmp_path, "bin", state=old) / "pytorch_model.bin"):
        clip = create_clip("hf-clip-tiny", weights=weights, device="cpu")
        with torch.no_grad():
            img = clip.encode_image(images, normalize=False)
            txt = clip.model.encode_text(tokens)
        for got, want in ((img, ref["image_features"]), (txt, ref["text_features"])):
            err = (got - torch.from_numpy(want)).norm(dim=1) / torch.from_numpy(want).norm(dim=1)
            assert float(err.max()) < 1e-5, (weights, float(err.max()))


def test_transformers_clip_checkpoints_that_do_not_fit_are_refused(tmp_path, monkeypatch):
    open_clip.add_model_config(HF_TINY.parent / "hf-clip-tiny.json")
    with pytest.raises(ValueError, match=r"does not fit.*architecture: lacks.*other shapes"):
        create_clip("qdgs-shapes-clip", weights=hf_folder(tmp_path), device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"folder without model.safetensors or "
                                                r"pytorch_model.bin.*openai/clip-vit"):
        create_clip("hf-clip-tiny", weights=empty)
    state = load_file(HF_TINY / "model.safetensors")
    with pytest.raises(ValueError, match=r"1 tensors.*not a CLIPModel's.*text_model.pooler"):
        create_clip("hf-clip-tiny", weights=hf_folder(
            tmp_path, "extra", state={**state, "text_model.pooler.weight": torch.zeros(2)}))
    del state["vision_model.encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(ValueError, match=r"lacks \['k'\] projections"):
        create_clip("hf-clip-tiny", weights=hf_folder(tmp_path, "less", state=state))
    gelu = {k: {"hidden_act": "gelu"} for k in ("text_config", "vision_config")}
    with pytest.warns(UserWarning, match=r"another activation than QuickGELU.*builds QuickGELU"):
        create_clip("hf-clip-tiny", weights=hf_folder(tmp_path, "gelu", config=gelu))
    # the paper's CLIP finds the transformers copy in its default folder
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data" / "pretrained" / "clip-vit-base-patch32").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"clip-vit-base-patch32"):
        create_clip("ViT-B-32-quickgelu")
    shutil.copy(HF_TINY / "model.safetensors",
                tmp_path / "data" / "pretrained" / "clip-vit-base-patch32")
    assert resolve_weights("ViT-B-32-quickgelu", None) == \
        tmp_path / "data" / "pretrained" / "clip-vit-base-patch32" / "model.safetensors"


def test_sharded_transformers_checkpoints_load_and_bad_indexes_are_named(tmp_path):
    """Large checkpoints come as shards and an index (model.safetensors.index.json): the
    shards are read together; an index naming a missing shard, or one outside its folder,
    is refused."""
    from safetensors.torch import save_file

    open_clip.add_model_config(HF_TINY.parent / "hf-clip-tiny.json")
    ref = np.load(HF_TINY / "reference.npz")
    state = load_file(HF_TINY / "model.safetensors")
    folder = hf_folder(tmp_path, "sharded", state={})
    (folder / "pytorch_model.bin").unlink()
    shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
    for i, (k, t) in enumerate(sorted(state.items())):  # text and vision in both shards
        shards[sorted(shards)[i % 2]][k] = t.contiguous()
    for name, part in shards.items():
        save_file(part, folder / name)
    index = {"metadata": {"total_size": 0},
             "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    clip = create_clip("hf-clip-tiny", weights=folder, device="cpu")
    with torch.no_grad():
        img = clip.encode_image(torch.from_numpy(ref["images"]), normalize=False)
    torch.testing.assert_close(img, torch.from_numpy(ref["image_features"]), rtol=1e-5,
                               atol=1e-6)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"names shards that are not beside it.*00002"):
        create_clip("hf-clip-tiny", weights=folder)
    index["weight_map"] = {k: "../elsewhere.safetensors" for k in index["weight_map"]}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="names shards outside its folder"):
        create_clip("hf-clip-tiny", weights=folder)
