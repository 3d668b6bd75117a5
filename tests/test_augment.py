"""AdaFace's augmentations in the released style (qdgs_lib.augment): PIL's arithmetic against
torchvision on PIL images, cv2's resize against outputs of OpenCV itself (tests/data, written
by running this file with opencv-python-headless installed), and the trainer's setting."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF
from toys import TinyNet

from qdgs_lib.augment import (
    CV2_INTERPOLATIONS,
    _cv2_weights,
    cv2_resize,
    draw_augmentation,
    face_augment,
    pil_color_jitter,
)
from qdgs_lib.data.identities import TensorFaces
from qdgs_lib.models.heads import CosFace
from qdgs_lib.train import RecognitionTrainer

CV2_FIXTURE = Path(__file__).parent / "data" / "cv2_resize.npz"
# (input side, output side): down at odd ratios, up; and for the modes that take a floor of
# the sample position, where it lands on an exact integer in one rounding and not in the other
CV2_CASES = ((36, 9), (36, 17), (36, 30), (17, 40))


def cv2_cases(mode: str) -> tuple:
    return CV2_CASES + (((36, 112),) if mode in ("nearest", "area") else ())


def _pil_jitter(img: np.ndarray, order: list[int], factors: list[float]) -> np.ndarray:
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    pil = Image.fromarray(img)
    for k in order:
        pil = fns[k](pil, factors[k])
    return np.asarray(pil)


def _levels(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float()


def test_pil_color_jitter_equals_torchvision_on_pil_images():
    """Catches float math where PIL truncates, a gray level not rounded as PIL's, or contrast
    around an unrounded mean: bitwise on uint8."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        for factors in ([1.4, 0.6, 1.3], [0.5, 1.5, 0.51], [0.93, 1.07, 1.49]):
            want = _pil_jitter(img, order, factors)
            got = pil_color_jitter(_levels(img), order, factors)[0].permute(1, 2, 0).numpy()
            assert np.array_equal(got, want), (order, factors)


def test_released_style_jitters_the_bgr_image_as_the_released_datasets_do():
    """The released datasets hand PIL the BGR array (as if RGB) before augmenting: crop and
    jitter through face_augment equal that, bitwise; the project style (gray of RGB) does
    not."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    rgb[..., 0] = np.maximum(rgb[..., 0], 150)  # reddish: BGR and RGB grays differ
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    got = face_augment(x, g, p=(1.0, 0.0, 1.0), flip=False, style="released")
    g.set_state(state)
    torch.rand(6, 3, generator=g), torch.rand(6, generator=g)  # (which apply; the flips)
    for i in range(6):
        crop, _, (order, factors) = draw_augmentation([True, False, True], 24, 24, g)
        top, left, h, w = crop
        bgr = np.zeros_like(rgb[i])
        bgr[top:top + h, left:left + w] = rgb[i, top:top + h, left:left + w, ::-1]
        want = _pil_jitter(bgr, order, factors)[:, :, ::-1]
        assert np.array_equal((got[i] * 255).round().permute(1, 2, 0).byte().numpy(), want)
    project = face_augment(x, torch.Generator().manual_seed(0), p=(1.0, 0.0, 1.0), flip=False)
    assert (project - got).abs().mean() > 1 / 255


@pytest.mark.parametrize("mode", CV2_INTERPOLATIONS)
def test_cv2_resize_equals_opencvs_within_one_level(mode):
    """Against cv2.resize's own outputs (uint8, fixed point: within one gray level; nearest
    exactly, including where a sample position falls on an exact integer)."""
    ref = np.load(CV2_FIXTURE)
    img = ref["image"]
    for n_in, n_out in cv2_cases(mode):  # (noise: a wrong kernel or offset is far off)
        src = img[:n_in, :n_in]
        got = cv2_resize(_levels(src), (n_out, n_out), mode).round().clamp(0, 255)
        diff = np.abs(got[0].permute(1, 2, 0).numpy() - ref[f"{mode}_{n_in}_{n_out}"])
        assert diff.max() <= (0 if mode == "nearest" else 1), (n_in, n_out)


def test_cv2_weights_agree_with_torchs_where_the_kernels_are_the_same():
    """Linear and cubic (a = -0.75, pixel centres, replicated edges, no antialiasing) are
    torch's bilinear and bicubic; area down by an integer factor is average pooling; every
    row sums to 1; at the same size each mode is the identity."""
    x = torch.rand(1, 3, 30, 30, generator=torch.Generator().manual_seed(0))
    for size in (7, 13, 30, 45):
        for ours, theirs in (("linear", "bilinear"), ("cubic", "bicubic")):
            want = F.interpolate(x, size=(size, size), mode=theirs, align_corners=False)
            assert torch.allclose(cv2_resize(x, (size, size), ours), want, atol=1e-5)
    assert torch.allclose(cv2_resize(x, (10, 10), "area"), F.avg_pool2d(x, 3), atol=1e-6)
    for mode in CV2_INTERPOLATIONS:
        for n_in, n_out in ((30, 7), (7, 30), (17, 40)):
            assert torch.allclose(_cv2_weights(n_in, n_out, mode).sum(1),
                                  torch.ones(n_out, dtype=torch.float64))
        assert torch.allclose(cv2_resize(x, (30, 30), mode), x, atol=1e-6)
    with pytest.raises(ValueError, match="one of"):
        cv2_resize(x, (5, 5), "lanczos3")


def test_released_low_resolution_draws_all_five_interpolations(monkeypatch):
    import qdgs_lib.augment as augment

    seen = []
    real = augment.cv2_resize
    monkeypatch.setattr(augment, "cv2_resize",
                        lambda img, size, mode: seen.append(mode) or real(img, size, mode))
    out = face_augment(torch.rand(100, 3, 16, 16), torch.Generator().manual_seed(0),
                       p=(0, 1, 0), flip=False, style="released")
    assert set(seen) == set(CV2_INTERPOLATIONS)
    assert torch.equal(out, (out * 255).round() / 255)  # uint8 levels, as ToTensor's
    with pytest.raises(ValueError, match="unknown augmentation style"):
        face_augment(out, torch.Generator(), style="pil")


def _trainer(outdir, style):
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return RecognitionTrainer(TinyNet(), CosFace(16, 4), TensorFaces(x, torch.arange(8) % 4),
                              outdir, milestones=(99,), batch_size=4, progress=False,
                              device="cpu", channels_last=False, augment_style=style)


def test_a_checkpoint_resumes_only_with_its_augmentation_style(tmp_path):
    """A run's style is part of its settings; checkpoints written before the setting existed
    were the project's."""
    _trainer(tmp_path, "released").run(1)
    with pytest.raises(ValueError, match="augment_style"):
        _trainer(tmp_path, "project").run(2)
    assert _trainer(tmp_path, "released").run(2)
    path = tmp_path / "checkpoint.pt"
    st = torch.load(path, weights_only=True)
    del st["settings"]["augment_style"]
    torch.save(st, path)
    assert _trainer(tmp_path, "project").run(3)
    with pytest.raises(ValueError, match="augment_style 'pil'"):
        _trainer(tmp_path / "x", "pil")


if __name__ == "__main__":  # writes the fixture (needs opencv-python-headless)
    import cv2

    codes = dict(zip(CV2_INTERPOLATIONS, (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA,
                                          cv2.INTER_CUBIC, cv2.INTER_LANCZOS4), strict=True))
    image = np.random.default_rng(0).integers(0, 256, (36, 36, 1), dtype=np.uint8)
    arrays = {"image": image}
    for mode, code in codes.items():
        for n_in, n_out in cv2_cases(mode):
            out = cv2.resize(image[:n_in, :n_in], (n_out, n_out), interpolation=code)
            arrays[f"{mode}_{n_in}_{n_out}"] = out.reshape(n_out, n_out, 1)
    CV2_FIXTURE.parent.mkdir(exist_ok=True)
    np.savez_compressed(CV2_FIXTURE, **arrays, opencv=np.array(cv2.__version__))
    print(f"wrote {CV2_FIXTURE} (OpenCV {cv2.__version__})")
