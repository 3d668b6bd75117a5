"""MTCNN face detection and five-point alignment, as the released code aligns its face datasets.

The released code writes each synthetic face through AdaFace's copy of mtcnn-pytorch
(TropComplique's MIT-licensed port of Zhang et al.'s MTCNN, ``face_alignment/align.py``): find
the face, then warp its five landmarks onto the 112 x 112 ArcFace template. This file is the
same computation in plain torch, numpy and PIL, with the networks' weights (``pnet.npy``,
``rnet.npy``, ``onet.npy`` from the released repository) read as data, never unpickled as code:

* :class:`PNet`, :class:`RNet`, :class:`ONet`: the three networks, parameters named as in the
  weight files;
* :meth:`MTCNN.detect`: the cascade with the copy's settings (faces from 20 px, pyramid factor
  0.85, thresholds 0.6 / 0.7 / 0.9, NMS 0.7) and its quirk: P-Net's softmax runs over the last
  axis (the score map's width), not over its two classes (``PNet.softmax_dim``);
* :func:`cp2tform_similarity`: the similarity that MATLAB's ``cp2tform`` fits (least squares in
  the detected points' coordinates), with the copy's reflection test;
* :func:`warp_affine` / :func:`resize_bilinear`: ``cv2.warpAffine`` and ``cv2.resize``'s
  geometry (bilinear; zeros outside, edges repeated) in float arithmetic, so no OpenCV;
* :meth:`MTCNN.align`: where no face is found (or its boxes or landmarks are degenerate), the
  released fallback: the whole image resized to the output size.

The detector's boxes and landmarks and the similarity are the released code's to the bit, and
the images within one gray level of OpenCV's (``scripts/check_against_released.py``).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .data.benchmarks import BIN_ALLOWED
from .paths import MTCNN_NETS as NETS
from .paths import RELEASED_MTCNN_WHERE
from .unpickling import RestrictedUnpickler
from .utils import BadFileError, reading

# the copy's reference points for a 112 x 112 crop (its 96 x 112 points, moved 8 px right)
REFERENCE_112 = np.array([[30.29459953, 51.69630051], [65.53179932, 51.50139999],
                          [48.02519989, 71.73660278], [33.54930115, 92.3655014],
                          [62.72990036, 92.20410156]]) + [8.0, 0.0]
DETECT_SIZE = 256  # the released code resizes every face to 256 px before aligning it
MAX_WEIGHT_FILE = 64 << 20  # the real files are 41 KB to 2.3 MB
_FIX = f"Use the released files: {RELEASED_MTCNN_WHERE}"
ALIGNMENT_VERSION = 1  # recorded with the datasets: bump when the images it makes change


class NoFace(Exception):
    """No usable face: no box passed the cascade, or its boxes or landmarks are degenerate
    (where the released code raises inside its ``try`` and falls back)."""


def _prelu_conv(cin: int, cout: int, k: int, i: int) -> list[tuple[str, nn.Module]]:
    return [(f"conv{i}", nn.Conv2d(cin, cout, k, 1)), (f"prelu{i}", nn.PReLU(cout))]


class _CaffeFlatten(nn.Module):
    """Flatten in Caffe's (C, W, H) order: the weights were converted from Caffe models."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(3, 2).contiguous().view(x.size(0), -1)


class PNet(nn.Module):
    """Proposal network: a 12 x 12 window every 2 px -> face score, box offsets."""

    softmax_dim = -1  # the released copy's; the original MTCNN normalizes its classes (1)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            *_prelu_conv(3, 10, 3, 1), ("pool1", nn.MaxPool2d(2, 2, ceil_mode=True)),
            *_prelu_conv(10, 16, 3, 2), *_prelu_conv(16, 32, 3, 3)]))
        self.conv4_1 = nn.Conv2d(32, 2, 1, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) scaled to about [-1, 1] -> box offsets (B, 4, h, w) and face
        probabilities (B, 2, h, w), one per 12 x 12 window at a stride of 2 px; the softmax runs
        over ``softmax_dim``."""
        x = self.features(x)
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=self.softmax_dim)


class RNet(nn.Module):
    """Refinement network: 24 x 24 crops -> face score, box offsets."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            *_prelu_conv(3, 28, 3, 1), ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
            *_prelu_conv(28, 48, 3, 2), ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
            *_prelu_conv(48, 64, 2, 3), ("flatten", _CaffeFlatten()),
            ("conv4", nn.Linear(576, 128)), ("prelu4", nn.PReLU(128))]))
        self.conv5_1 = nn.Linear(128, 2)
        self.conv5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops (B, 3, 24, 24) scaled to about [-1, 1] -> box offsets (B, 4) and face probabilities
        (B, 2)."""
        x = self.features(x)
        return self.conv5_2(x), F.softmax(self.conv5_1(x), dim=-1)


class ONet(nn.Module):
    """Output network: 48 x 48 crops -> five landmarks, box offsets, face score."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            *_prelu_conv(3, 32, 3, 1), ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
            *_prelu_conv(32, 64, 3, 2), ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
            *_prelu_conv(64, 64, 3, 3), ("pool3", nn.MaxPool2d(2, 2, ceil_mode=True)),
            *_prelu_conv(64, 128, 2, 4), ("flatten", _CaffeFlatten()),
            ("conv5", nn.Linear(1152, 256)), ("prelu5", nn.PReLU(256))]))  # (dropout: eval)
        self.conv6_1 = nn.Linear(256, 2)
        self.conv6_2 = nn.Linear(256, 4)
        self.conv6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crops (B, 3, 48, 48) scaled to about [-1, 1] -> landmarks (B, 10: five x, then five y, as
        fractions of the box), box offsets (B, 4) and face probabilities (B, 2)."""
        x = self.features(x)
        return self.conv6_3(x), self.conv6_2(x), F.softmax(self.conv6_1(x), dim=-1)


NET_CLASSES = {"pnet": PNet, "rnet": RNet, "onet": ONet}


# -- weights ------------------------------------------------------------------------------------

def read_weight_file(path: str | Path) -> dict[str, np.ndarray]:
    """One of the copy's weight files: a ``.npy`` holding a pickled dict of float arrays
    (``np.save`` of a dict). Read with a restricted unpickler: numpy arrays only."""
    path = Path(path)
    if path.stat().st_size > MAX_WEIGHT_FILE:
        raise BadFileError(f"{path}: {path.stat().st_size} bytes, far more than an MTCNN "
                           f"network's weights (at most 2.3 MB). {_FIX}")
    with reading(path, "MTCNN weights (a .npy file holding a dict of arrays)", _FIX), \
            open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, _, dtype = header(f)
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(f"a {dtype} array of shape {shape}, not a pickled dict")
        obj = RestrictedUnpickler(f, allowed=BIN_ALLOWED, encoding="latin1").load()
        state = obj[()] if isinstance(obj, np.ndarray) and obj.shape == () else obj
        if not isinstance(state, dict):
            raise ValueError(f"it holds a {type(state).__name__}, not a dict of arrays")
        bad = [k for k, v in state.items()
               if not (isinstance(k, str) and isinstance(v, np.ndarray)
                       and v.dtype.kind == "f")]
        if bad:
            raise ValueError(f"entries that are not float arrays named by strings: {bad[:5]}")
    return state


def load_net(name: str, path: str | Path) -> nn.Module:
    """``pnet`` / ``rnet`` / ``onet`` with the weights of ``path``, checked name by name."""
    net = NET_CLASSES[name]()
    state = read_weight_file(path)
    params = dict(net.named_parameters())
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise BadFileError(f"{path}: not the weights of the released {name.upper()} (missing "
                           f"{missing[:5]}, unexpected {unexpected[:5]}). {_FIX}")
    for key, p in params.items():
        if state[key].shape != tuple(p.shape):
            raise BadFileError(f"{path}: {key} has shape {state[key].shape}, the released "
                               f"{name.upper()} has {tuple(p.shape)}. {_FIX}")
        value = torch.from_numpy(np.asarray(state[key], dtype=np.float32))
        if not torch.isfinite(value).all():
            raise BadFileError(f"{path}: {key} holds NaN or infinite values. {_FIX}")
        p.data = value
    return net.eval().requires_grad_(False)


def weights_sha256(folder: str | Path) -> str:
    """One digest of the three files (recorded with the datasets aligned by them)."""
    h = hashlib.sha256()
    for name in NETS:
        h.update(hashlib.sha256((Path(folder) / f"{name}.npy").read_bytes()).digest())
    return h.hexdigest()


def save_weights_npy(net: nn.Module, path: str | Path) -> None:
    """Write a network in the copy's format (``np.save`` of a dict of float32 arrays)."""
    state = {k: p.detach().cpu().numpy().astype(np.float32) for k, p in net.named_parameters()}
    with open(path, "wb") as f:
        np.save(f, np.array(state, dtype=object), allow_pickle=True)


# -- the cascade's box arithmetic (the copy's, step by step: the same floats) --------------------

def nms(boxes: np.ndarray, overlap: float = 0.5, mode: str = "union") -> list[int]:
    """Greedy non-maximum suppression on (x1, y1, x2, y2, score) rows, areas counted in whole
    pixels (+1); ``mode="min"`` divides by the smaller box. Indices, best score first."""
    if len(boxes) == 0:
        return []
    x1, y1, x2, y2, score = (boxes[:, i] for i in range(5))
    area = (x2 - x1 + 1.0) * (y2 - y1 + 1.0)
    ids = np.argsort(score)
    pick = []
    while len(ids) > 0:
        last = len(ids) - 1
        i = ids[last]
        pick.append(i)
        rest = ids[:last]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1.0)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1.0)
        inter = w * h
        if mode == "min":
            ratio = inter / np.minimum(area[i], area[rest])
        else:
            ratio = inter / (area[i] + area[rest] - inter)
        ids = np.delete(ids, np.concatenate([[last], np.where(ratio > overlap)[0]]))
    return pick


def calibrate_box(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each box's corners by the predicted offsets (fractions of its size), in place."""
    w = np.expand_dims(boxes[:, 2] - boxes[:, 0] + 1.0, 1)
    h = np.expand_dims(boxes[:, 3] - boxes[:, 1] + 1.0, 1)
    boxes[:, 0:4] = boxes[:, 0:4] + np.hstack([w, h, w, h]) * offsets
    return boxes


def convert_to_square(boxes: np.ndarray) -> np.ndarray:
    """The square of each box's longer side, about the same centre."""
    square = np.zeros_like(boxes)
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    h, w = y2 - y1 + 1.0, x2 - x1 + 1.0
    side = np.maximum(h, w)
    square[:, 0] = x1 + w * 0.5 - side * 0.5
    square[:, 1] = y1 + h * 0.5 - side * 0.5
    square[:, 2] = square[:, 0] + side - 1.0
    square[:, 3] = square[:, 1] + side - 1.0
    return square


def _preprocess(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 in 0..255 -> (1, 3, H, W) in about [-1, 1], as the nets were trained."""
    return (np.expand_dims(img.transpose((2, 0, 1)), 0) - 127.5) * 0.0078125


def crop_boxes(boxes: np.ndarray, image: Image.Image, size: int) -> np.ndarray:
    """Each box cut from the image (zeros where it leaves the image), resized to size x size
    with PIL's bilinear filter: (n, 3, size, size) float32 network input. Clips ``boxes`` to
    the image in place, as the copy does: its later stages go on with the clipped boxes."""
    width, height = image.size
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    w, h = x2 - x1 + 1.0, y2 - y1 + 1.0
    dx, dy = np.zeros(len(boxes)), np.zeros(len(boxes))
    edx, edy = w - 1.0, h - 1.0
    right, low = x2 > width - 1.0, y2 > height - 1.0
    edx[right] = w[right] + width - 2.0 - x2[right]
    x2[right] = width - 1.0
    edy[low] = h[low] + height - 2.0 - y2[low]
    y2[low] = height - 1.0
    left, high = x1 < 0.0, y1 < 0.0
    dx[left], x1[left] = -x1[left], 0.0
    dy[high], y1[high] = -y1[high], 0.0
    dy, edy, dx, edx, y1, y2, x1, x2, w, h = (
        a.astype("int32") for a in (dy, edy, dx, edx, y1, y2, x1, x2, w, h))
    pixels = np.asarray(image, "uint8")
    out = np.zeros((len(boxes), 3, size, size), "float32")
    for i in range(len(boxes)):
        # the copy's steps, numpy's broadcasting included: a box outside the image may still
        # cut (a black crop, which the next net rejects); where numpy refuses (a negative
        # size, shapes that do not broadcast), the released code falls back
        try:
            cut = np.zeros((h[i], w[i], 3), "uint8")
            cut[dy[i]:edy[i] + 1, dx[i]:edx[i] + 1] = pixels[y1[i]:y2[i] + 1, x1[i]:x2[i] + 1]
        except (ValueError, MemoryError) as e:
            raise NoFace(f"a box the released code cannot cut: {e}") from e
        resized = Image.fromarray(cut).resize((size, size), Image.BILINEAR)
        out[i] = _preprocess(np.asarray(resized, "float32"))[0]
    return out


def pyramid_scales(min_side: int, min_face_size: float = 20, factor: float = 0.85,
                   min_detection_size: int = 12) -> list[float]:
    """Scales at which P-Net's 12 px window sees faces from ``min_face_size`` px up."""
    m = min_detection_size / min_face_size
    length, scales, count = min_side * m, [], 0
    while length > min_detection_size:
        scales.append(m * factor ** count)
        length *= factor
        count += 1
    return scales


# -- the similarity and the warp -----------------------------------------------------------------

def _nonreflective_similarity(uv: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """cp2tform's fit: least squares of xy -> uv (the detected points' space), inverted: the
    3 x 3 matrix T with [x, y, 1] = [u, v, 1] T."""
    x, y = xy[:, 0].reshape(-1, 1), xy[:, 1].reshape(-1, 1)
    n = len(xy)
    a = np.vstack((np.hstack((x, y, np.ones((n, 1)), np.zeros((n, 1)))),
                   np.hstack((y, -x, np.zeros((n, 1)), np.ones((n, 1))))))
    b = np.vstack((uv[:, 0].reshape(-1, 1), uv[:, 1].reshape(-1, 1)))
    if np.linalg.matrix_rank(a) < 4:
        raise NoFace("a template with fewer than two distinct points")
    sc, ss, tx, ty = np.squeeze(np.linalg.lstsq(a, b, rcond=-1)[0])
    try:  # (landmarks all at one point; the released code falls back on the error too)
        t = np.linalg.inv(np.array([[sc, -ss, 0], [ss, sc, 0], [tx, ty, 1]]))
    except np.linalg.LinAlgError as e:
        raise NoFace("landmarks at a single point") from e
    t[:, 2] = np.array([0, 0, 1])
    return t


def _apply(t: np.ndarray, uv: np.ndarray) -> np.ndarray:
    return np.dot(np.hstack((uv, np.ones((uv.shape[0], 1)))), t)[:, :-1]


def cp2tform_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 matrix (``cv2.warpAffine``'s) of the similarity that maps the ``src`` points
    onto ``dst``, as the released copy fits it: MATLAB's cp2tform, trying a mirrored fit too.

    The copy mirrors ``dst`` in place before its test, so both fits are measured against the
    mirrored points: kept, so that the same fit is chosen (for faces: the unmirrored one).
    """
    src, dst = np.float32(src), np.float32(dst)
    plain = _nonreflective_similarity(src, dst)
    mirrored = dst.copy()
    mirrored[:, 0] = -1 * mirrored[:, 0]
    flip = np.dot(_nonreflective_similarity(src, mirrored),
                  np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    err_plain = np.linalg.norm(_apply(plain, src) - mirrored)
    err_flip = np.linalg.norm(_apply(flip, src) - mirrored)
    t = plain if err_plain <= err_flip else flip
    return t[:, 0:2].T


def _bilinear(image: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) at float pixel positions (float64); neighbours outside the image
    count as 0."""
    h, w = image.shape[:2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    img = image.astype(np.float64)
    out = np.zeros((*sx.shape, image.shape[2]))
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                        (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        vals = np.zeros_like(out)
        vals[inside] = img[yi[inside], xi[inside]]
        out += wgt * vals
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, size)`` (bilinear, zeros outside) in float arithmetic:
    output pixel (x, y) samples the input at the inverse map of (x, y)."""
    inv = cv2_invert_affine(np.asarray(matrix, np.float64))
    ys, xs = np.meshgrid(np.arange(size[1], dtype=np.float64),
                         np.arange(size[0], dtype=np.float64), indexing="ij")
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    return _to_uint8(_bilinear(image, sx, sy))


def cv2_invert_affine(m: np.ndarray) -> np.ndarray:
    """``cv2.invertAffineTransform``: a singular matrix maps everything to its offset's image."""
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    d = 1.0 / det if det != 0 else 0.0
    a11, a22, a12, a21 = m[1, 1] * d, m[0, 0] * d, -m[0, 1] * d, -m[1, 0] * d
    return np.array([[a11, a12, -a11 * m[0, 2] - a12 * m[1, 2]],
                     [a21, a22, -a21 * m[0, 2] - a22 * m[1, 2]]])


def resize_bilinear(image: np.ndarray, size: tuple[int, int],
                    rounded: bool = True) -> np.ndarray:
    """``cv2.resize(image, size)`` (bilinear, pixel centres aligned, edges repeated, no
    antialiasing) of (H, W, C) values, size as (width, height): uint8 (``rounded``), or the
    float64 values (as cv2 keeps a float image's)."""
    h, w = image.shape[:2]
    sx = np.clip((np.arange(size[0]) + 0.5) * (w / size[0]) - 0.5, 0, w - 1)
    sy = np.clip((np.arange(size[1]) + 0.5) * (h / size[1]) - 0.5, 0, h - 1)
    sy, sx = np.meshgrid(sy, sx, indexing="ij")
    # at the last row / column the second neighbour has weight 0: repeat the edge there
    out = _bilinear(np.pad(image, ((0, 1), (0, 1), (0, 0)), mode="edge"), sx, sy)
    return _to_uint8(out) if rounded else out


# -- the detector --------------------------------------------------------------------------------

class MTCNN(nn.Module):
    """The released alignment: :meth:`detect` faces in a PIL image, :meth:`align` the first
    one to ``size`` x ``size`` (the copy allows 112 only; other sizes scale the template)."""

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet, size: int = 112):
        super().__init__()
        self.pnet, self.rnet, self.onet = pnet.eval(), rnet.eval(), onet.eval()
        self.size = size
        self.reference = (REFERENCE_112 if size == 112
                          else (REFERENCE_112 + 0.5) * size / 112 - 0.5)
        self.min_face_size = 20.0
        self.thresholds = (0.6, 0.7, 0.9)
        self.nms_thresholds = (0.7, 0.7, 0.7)
        self.factor = 0.85

    def _first_stage(self, image: Image.Image, scale: float) -> np.ndarray | None:
        width, height = image.size
        resized = image.resize((math.ceil(width * scale), math.ceil(height * scale)),
                               Image.BILINEAR)
        x = torch.from_numpy(_preprocess(np.asarray(resized, "float32")).copy())
        offsets, probs = (t.numpy() for t in self.pnet(x))
        probs = probs[0, 1]
        rows, cols = np.where(probs > self.thresholds[0])
        if rows.size == 0:
            return None
        # P-Net is a 12 px window moved by 2 px: back to the image's scale
        boxes = np.vstack([np.round((2 * cols + 1.0) / scale),
                           np.round((2 * rows + 1.0) / scale),
                           np.round((2 * cols + 1.0 + 12) / scale),
                           np.round((2 * rows + 1.0 + 12) / scale),
                           probs[rows, cols],
                           np.array([offsets[0, i, rows, cols] for i in range(4)])]).T
        return boxes[nms(boxes[:, 0:5], 0.5)]

    @torch.no_grad()
    def detect(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (n, 5: x1, y1, x2, y2, score) and landmarks (n, 10: five x, then five y) of
        the faces found, best first; raises :class:`NoFace` where the released code raises."""
        empty = np.zeros((0, 5)), np.zeros((0, 10), np.float32)
        scales = pyramid_scales(min(image.size), self.min_face_size, self.factor)
        found = [b for s in scales if (b := self._first_stage(image, s)) is not None]
        if not found:
            return empty
        boxes = np.vstack(found)
        boxes = boxes[nms(boxes[:, 0:5], self.nms_thresholds[0])]
        boxes = convert_to_square(calibrate_box(boxes[:, 0:5], boxes[:, 5:]))
        boxes[:, 0:4] = np.round(boxes[:, 0:4])

        offsets, probs = (t.numpy() for t in self.rnet(
            torch.from_numpy(crop_boxes(boxes, image, 24))))
        keep = np.where(probs[:, 1] > self.thresholds[1])[0]
        boxes, offsets = boxes[keep], offsets[keep]
        boxes[:, 4] = probs[keep, 1].reshape((-1,))
        keep = nms(boxes, self.nms_thresholds[1])
        boxes = convert_to_square(calibrate_box(boxes[keep], offsets[keep]))
        boxes[:, 0:4] = np.round(boxes[:, 0:4])

        crops = crop_boxes(boxes, image, 48)
        if len(crops) == 0:
            return empty
        landmarks, offsets, probs = (t.numpy() for t in self.onet(torch.from_numpy(crops)))
        keep = np.where(probs[:, 1] > self.thresholds[2])[0]
        boxes, offsets, landmarks = boxes[keep], offsets[keep], landmarks[keep]
        boxes[:, 4] = probs[keep, 1].reshape((-1,))
        # landmarks are fractions of the box (float32 as the copy keeps them)
        width = boxes[:, 2] - boxes[:, 0] + 1.0
        height = boxes[:, 3] - boxes[:, 1] + 1.0
        landmarks[:, 0:5] = boxes[:, [0]] + width[:, None] * landmarks[:, 0:5]
        landmarks[:, 5:10] = boxes[:, [1]] + height[:, None] * landmarks[:, 5:10]
        boxes = calibrate_box(boxes, offsets)
        keep = nms(boxes, self.nms_thresholds[2], mode="min")
        return boxes[keep], landmarks[keep]

    def landmarks(self, image: Image.Image) -> np.ndarray:
        """The first face's five (x, y) landmarks; :class:`NoFace` where none is usable."""
        _, marks = self.detect(image)
        if len(marks) == 0:
            raise NoFace("no face passed the cascade")
        return np.stack([marks[0][:5], marks[0][5:]], 1)

    def align(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """(H, W, 3) uint8 -> (size, size, 3) uint8 aligned face, and whether a face was
        found (else the whole image resized, as the released code falls back)."""
        try:
            matrix = cp2tform_similarity(self.landmarks(Image.fromarray(image)),
                                         self.reference)
        except NoFace:
            return resize_bilinear(image, (self.size, self.size)), False
        return warp_affine(image, matrix, (self.size, self.size)), True


def load_mtcnn(folder: str | Path, size: int = 112) -> MTCNN:
    """:class:`MTCNN` with the released weights in ``folder`` (``pnet.npy``, ``rnet.npy``,
    ``onet.npy``)."""
    folder = Path(folder)
    missing = [f"{n}.npy" for n in NETS if not (folder / f"{n}.npy").is_file()]
    if missing:
        raise FileNotFoundError(f"MTCNN weights missing in {folder}: {', '.join(missing)}. "
                                f"{RELEASED_MTCNN_WHERE}")
    nets = [load_net(n, folder / f"{n}.npy") for n in NETS]
    return MTCNN(*nets, size=size)


class MTCNNAligner:
    """Images (B, 3, H, W) in [0, 1] -> aligned faces (B, 3, size, size), as the released code
    writes its synthetic faces: 8 bits by truncation (its ``astype(uint8)``), 256 px, MTCNN, the
    template warp (or, where no face is found, the whole image resized). Runs on the CPU (PIL
    and numpy steps, tiny networks). ``seen`` and ``missed`` count images and fallbacks; the
    first fallback is warned about, :meth:`summary` reports them all."""

    def __init__(self, folder: str | Path, size: int = 112):
        self.model = load_mtcnn(folder, size)
        self.seen = self.missed = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"MTCNN alignment takes RGB images (B, 3, H, W), got "
                             f"{tuple(images.shape)}")
        x = images.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255
        out = []
        for img in x:
            if img.shape[:2] != (DETECT_SIZE, DETECT_SIZE):
                img = resize_bilinear(img, (DETECT_SIZE, DETECT_SIZE), rounded=False)
            face, found = self.model.align(img.astype(np.uint8))  # (truncates, as released)
            out.append(face)
            if not found:
                if not self.missed:
                    warnings.warn("MTCNN found no face in an image: it is the whole image "
                                  "resized, as the released code does (counted; see "
                                  "MTCNNAligner.summary)", stacklevel=2)
                self.missed += 1
        self.seen += len(x)
        faces = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
        return (faces.float() / 255).to(images.device)

    def summary(self) -> str:
        """One sentence: in how many of the images seen so far MTCNN found a face
        (the others were resized whole)."""
        return f"MTCNN found a face in {self.seen - self.missed} of {self.seen} images"


def mtcnn_aligner(folder: str | Path, size: int = 112) -> MTCNNAligner:
    """:class:`MTCNNAligner` with the released weights in ``folder``."""
    return MTCNNAligner(folder, size)
