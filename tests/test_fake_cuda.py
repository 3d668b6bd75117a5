"""The paper path's forward passes on *fake* CUDA tensors, without a GPU.

torch's ``FakeTensorMode`` runs ops on tensors that have a shape, a dtype and a device but no
data, and checks devices as CUDA would: a CPU tensor created inside a forward pass (an
``arange`` without ``device=``, a mask, a host-side constant) that meets a CUDA tensor fails
here as it fails on a GPU. Autograd's backward, autocast and CUDA graphs need a real device
(tests/test_devices.py); data-dependent host checks cannot run on tensors without data, so the
tests pretend a CUDA graph is being captured, where the library skips them anyway. Where
host-side values steer a pass (the training augmentations' draws), the ``meta`` device stands
in for CUDA: its backward runs too.
"""

import pytest
import torch
import torch.nn.functional as F

fake_tensor = pytest.importorskip("torch._subclasses.fake_tensor")


# how torch words a device mismatch: "... on the same device" (2.14), "... found two different
# devices" (fake tensors in 2.6)
SAME_DEVICE = "same device|different devices"


@pytest.fixture
def fake_cuda(monkeypatch):
    """A fake-tensor mode in which ``device="cuda"`` works without a GPU."""
    mode = fake_tensor.FakeTensorMode(allow_non_fake_inputs=True)
    try:
        with mode:
            torch.empty(1, device="cuda")
    except Exception as e:  # noqa: BLE001 - a torch without fake CUDA support
        pytest.skip(f"this torch cannot make fake CUDA tensors ({type(e).__name__}: {e})")
    # host-side data checks are skipped while a CUDA graph is captured (see check_latents)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    return mode


def test_the_fake_mode_catches_a_cpu_tensor_in_a_cuda_pass(fake_cuda):
    """The check these tests rely on: it fails where CUDA fails, and passes where CUDA does."""
    with fake_cuda:
        x = torch.ones(3, 4, device="cuda")
        with pytest.raises(RuntimeError, match=SAME_DEVICE):
            torch.cat([x, torch.zeros(3, 4)])
        with pytest.raises(RuntimeError, match=SAME_DEVICE):
            x + torch.arange(4.0)
        assert (x * torch.tensor(2.0)).device.type == "cuda"  # a 0-d CPU tensor is allowed


def test_paper_scoring_forward_stays_on_cuda(fake_cuda, monkeypatch):
    """The paper faces settings (StyleGAN2 in w+, unclamped images, CLIP in float16 with the
    released pooling, a full uniqueness memory, the released objective): a values pass on
    CUDA meets no CPU tensor and returns float32 scores."""
    from qdgs_lib import scoring
    from qdgs_lib.clip import create_clip
    from qdgs_lib.generators.stylegan2 import StyleGAN2, StyleGAN2Generator
    from qdgs_lib.measures import prompts
    from qdgs_lib.profiles import get_profile

    torch.manual_seed(0)
    gen = StyleGAN2Generator(StyleGAN2(img_resolution=32, channel_base=1024).eval(),
                             num_std_samples=200, latent_space="w+")
    # (random cutouts draw their crops on the host, from values fake tensors do not have)
    clip = create_clip("qdgs-faces-clip", precision="float16", cutout_style="released")
    p = get_profile("paper", "faces")
    # the constructor's [0, 1] check reads pixel values, which fake tensors do not have
    monkeypatch.setattr(scoring, "check_unit_images", lambda images, what: None)
    with fake_cuda:
        try:
            gen, clip = gen.to("cuda"), clip.to("cuda")
        except RuntimeError as e:  # torch 2.6 runs .to on parameters for real
            if "driver" not in str(e):  # anything but a real CUDA call is a failure
                raise
            pytest.skip(f"this torch moves parameters to CUDA for real in fake mode ({e})")
        sc = scoring.PromptScorer(gen, clip, p["objective"], prompts(p),
                                  weights=p["objective_weights"], latent_norm_scale=0.5,
                                  objective_floor=False, uniqueness_fill_scale=True,
                                  clamp_images=False, memory_size=4)
        assert clip.weights_dtype == torch.float16 and sc.memory.device.type == "cuda"
        sc.memory = torch.randn(4, sc.memory.shape[1], device="cuda")
        z = torch.randn(3, gen.latent_dim, device="cuda")
        with torch.no_grad():
            loss, out, emb = sc._outputs(z)
            assert out.shape == (3, 5) and out.dtype == torch.float32
            assert {t.device.type for t in (loss, out, emb)} == {"cuda"}
            assert clip.encode_text(["A photo of a face."]).device.type == "cuda"


def test_stylegan3_forward_stays_on_cuda(fake_cuda):
    """StyleGAN3's synthesis (the input's grid and transforms, filters, identity filters made
    on the fly) meets no CPU tensor on CUDA, for z, w and w+ latents."""
    import copy

    from qdgs_lib.generators.stylegan2 import StyleGAN2Generator
    from qdgs_lib.generators.stylegan3 import StyleGAN3

    torch.manual_seed(0)
    net = StyleGAN3(z_dim=16, w_dim=16, img_resolution=16, channel_base=256, channel_max=8,
                    num_layers=3, use_radial_filters=True).eval()
    gens = [StyleGAN2Generator(copy.deepcopy(net), num_std_samples=50, latent_space=s)
            for s in ("w", "w+")]
    with fake_cuda:
        try:
            net, gens = net.to("cuda"), [g.to("cuda") for g in gens]
        except RuntimeError as e:  # torch 2.6 runs .to on parameters for real
            if "driver" not in str(e):
                raise
            pytest.skip(f"this torch moves parameters to CUDA for real in fake mode ({e})")
        with torch.no_grad():
            assert net(torch.randn(2, 16, device="cuda")).device.type == "cuda"
            for g in gens:
                img = g.decode(torch.randn(2, g.latent_dim, device="cuda"))
                assert img.shape == (2, 3, 16, 16) and img.device.type == "cuda"


def test_recognition_training_step_stays_on_the_device(tmp_path):
    """A training batch of uint8 images from the (CPU) loader: moved, scaled, augmented
    (AdaFace's crop, low resolution, photometric, flip: every one drawn), channels_last,
    through IR + AdaFace to the loss and back, on the ``meta`` device. (Not fake CUDA: the
    augmentations' draws are host-side tensors whose values steer the pass, which fake
    tensors do not have. ``meta`` tensors have no data either, but host tensors stay real,
    and an elementwise op of a CPU and a meta tensor fails as it would with CUDA.)"""
    from qdgs_lib.augment import face_augment
    from qdgs_lib.data.identities import TensorFaces
    from qdgs_lib.models.heads import AdaFace
    from qdgs_lib.models.iresnet import build_iresnet
    from qdgs_lib.train import RecognitionTrainer
    from qdgs_lib.utils import unit_range

    with pytest.raises(RuntimeError, match="device"):  # the check relied on
        torch.ones(2, device="meta") + torch.ones(2)
    x = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    y = torch.arange(8) % 4
    tr = RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), TensorFaces(x, y),
                            tmp_path, batch_size=8, progress=False, channels_last=True)
    g = torch.Generator().manual_seed(0)
    tr.device = torch.device("meta")
    tr.model.to("meta")
    xb, yb = tr._prepare(x, y, g)  # as the training loop does
    assert xb.is_contiguous(memory_format=torch.channels_last)
    emb, logits = tr.model(xb, yb)
    loss = F.cross_entropy(logits, yb)
    loss.backward()
    assert {t.device.type for t in (xb, yb, emb, logits, loss)} == {"meta"}
    assert all(q.grad.device.type == "meta" for q in tr.model.parameters())
    for style in ("project", "released"):  # no step reads the images back to the host
        augmented = face_augment(unit_range(x.to("meta")), g, p=1.0, style=style)
        assert augmented.device.type == "meta" and augmented.shape == x.shape

