"""Face verification benchmarks: InsightFace validation ``.bin`` files and RFW pair lists.

``.bin`` (LFW, CFP-FP, CPLFW, CALFW, AgeDB-30): a pickle of ``(bins, issame_list)``; pair i is
``bins[2i], bins[2i+1]``, each an encoded JPEG/PNG (bytes or a uint8 array). Read with a
restricted unpickler: such files are pickles, and pickles are code.

RFW: ``test/data/<Race>/<id>/<id>_000N.jpg`` and ``test/txts/<Race>/<Race>_pairs.txt`` with
positive lines ``id n1 n2`` and negative lines ``id1 n1 id2 n2``; fold = line // 600. The
release's photos are not aligned: ``test/txts/<Race>/<Race>_lmk.txt`` gives each one's five
landmarks (``/test/data/<Race>/<id>/<file> <n> x1 y1 ... x5 y5``), with which they are warped
to the ArcFace 112x112 template, as the recognition models' training crops are. Without the
``_lmk.txt`` files the images must already be aligned crops at the size asked for.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..evaluate import contiguous_folds
from ..unpickling import RestrictedUnpickler
from ..utils import (
    BadFileError,
    atomic_write_bytes,
    reading,
    resize_square,
    to_uint8_hwc,
    unit_range,
)

BIN_ALLOWED = {
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.ndarray", "numpy.dtype", "_codecs.encode",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    # protocol 5 (numpy 2 arrays): an array from its raw buffer, dtype and shape
    "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
}
RFW_RACES = ("African", "Asian", "Caucasian", "Indian")
MAX_SIDE = 1024   # a .bin's images are 112x112; a huge one is a damaged (or hostile) file


@dataclass
class PairSet:
    """Verification pairs: images (2N, 3, H, W), uint8 as read from files (a quarter of
    float32's memory: the six paper benchmarks take ~4 GB) or float in [0, 1]; pair i =
    images[2i], images[2i+1]."""

    name: str
    images: torch.Tensor
    issame: np.ndarray  # (N,) bool
    groups: np.ndarray | None = None  # (N,) group id per pair (e.g. race), optional
    group_names: list[str] = field(default_factory=list)
    folds: np.ndarray | None = None  # (N,) fold id per pair, if the protocol fixes folds

    def __post_init__(self):
        if len(self.images) != 2 * len(self.issame):
            raise ValueError(f"{self.name}: {len(self.images)} images for "
                             f"{len(self.issame)} pairs (need exactly 2 per pair)")


def _decode(item, where: str) -> np.ndarray:
    if not isinstance(item, bytes | bytearray | np.ndarray):
        raise BadFileError(f"{where}: expected encoded image bytes, got {type(item).__name__}")
    data = item.tobytes() if isinstance(item, np.ndarray) else bytes(item)
    try:
        img = Image.open(io.BytesIO(data))
        if max(img.size) > MAX_SIDE:   # read from the header, before any pixel is decoded
            raise BadFileError(f"{where}: a {img.size[0]}x{img.size[1]} image; validation "
                               f"images are 112x112 (refused above {MAX_SIDE} px). {BIN_FIX}")
        return np.array(img.convert("RGB"))
    except BadFileError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises several types
        raise BadFileError(f"{where}: cannot decode image ({e}); the file may be truncated or "
                           "not an InsightFace validation .bin") from e


def read_bin(path: str | Path, image_size: int | None = 112) -> PairSet:
    """Read an InsightFace/AdaFace validation ``.bin`` file (safely)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found. Put the InsightFace validation files (lfw.bin, cfp_fp.bin, "
            "agedb_30.bin, calfw.bin, cplfw.bin; from the InsightFace/AdaFace dataset "
            f"releases) under {path.parent}.")
    raw = path.read_bytes()
    with reading(path, BIN_WHAT, BIN_FIX):
        obj = RestrictedUnpickler(io.BytesIO(raw), allowed=BIN_ALLOWED, encoding="bytes").load()
    if not (isinstance(obj, tuple | list) and len(obj) == 2
            and all(isinstance(o, list | tuple | np.ndarray) for o in obj)):
        raise BadFileError(f"{path}: expected a pickled (bins, issame_list) pair of lists, got "
                           f"{type(obj).__name__}. {BIN_FIX}")
    bins, issame = obj
    issame = np.array([_as_bool(v, path, i) for i, v in enumerate(issame)], dtype=bool)
    if len(issame) == 0:
        raise BadFileError(f"{path} holds no pairs. {BIN_FIX}")
    if len(bins) != 2 * len(issame):
        raise BadFileError(f"{path}: {len(bins)} images for {len(issame)} pairs (need 2 per "
                           f"pair). {BIN_FIX}")
    imgs = [_decode(b, f"{path} image {i}") for i, b in enumerate(bins)]
    sizes = {im.shape for im in imgs}
    if len(sizes) > 1 and not image_size:
        raise BadFileError(f"{path}: images of different sizes {sorted(sizes)}; pass "
                           "image_size to resize them to one")
    if len(sizes) > 1:
        x = torch.cat([resize_square(unit_range(torch.from_numpy(im).permute(2, 0, 1)[None]),
                                     image_size) for im in imgs])
    else:  # uint8 unless a resize is needed
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
        if image_size and x.shape[-2:] != (image_size, image_size):
            x = resize_square(unit_range(x), image_size)
    return PairSet(path.stem, x, issame)


BIN_WHAT = "an InsightFace validation .bin (a pickled (encoded images, issame) pair)"
BIN_FIX = ("Download it again (InsightFace's faces_webface_112x112.zip / faces_emore.zip, or "
           "AdaFace's validation release).")


def _as_bool(v, path: Path, i: int) -> bool:
    """issame labels: bools, numpy bools or the integers 0/1; anything else is refused (a
    string 'no' would otherwise read as True)."""
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer) and v in (0, 1):
        return bool(v)
    raise BadFileError(f"{path}: issame label {i} is {v!r}; expected a bool or 0/1. {BIN_FIX}")


def write_bin(path: str | Path, images: torch.Tensor, issame, fmt: str = "JPEG") -> None:
    """Write pairs in the ``.bin`` format (images (2N,3,H,W) in [0,1]); atomically."""
    bins = []
    arr = to_uint8_hwc(images)
    for img in arr:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        bins.append(buf.getvalue())
    atomic_write_bytes(path, pickle.dumps((bins, [bool(s) for s in issame]), protocol=4))


def _rfw_landmarks(path: Path) -> dict[str, np.ndarray] | None:
    """``<id>/<file>`` -> (5, 2) landmarks (x, y in the photo's pixels) of a ``_lmk.txt``."""
    if not path.is_file():
        return None
    out = {}
    for i, line in enumerate(path.read_text().splitlines()):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) < 12:
                raise ValueError(f"{len(parts)} fields")
            pts = np.array(parts[2:12], dtype=np.float64).reshape(5, 2)
        except ValueError as e:
            raise BadFileError(f"{path}:{i + 1}: expected '<image path> <n> x1 y1 ... x5 y5' "
                               f"({e}); restore it from the RFW release") from e
        out["/".join(Path(parts[0]).parts[-2:])] = pts
    return out


def _aligned_rfw_image(img: Image.Image, pts: np.ndarray, size: int, where: str) -> np.ndarray:
    from ..align import warp_to_template

    w, h = img.size
    if not (np.all(pts >= -0.5) and np.all(pts[:, 0] <= w - 0.5) and np.all(pts[:, 1] <= h - 0.5)):
        raise BadFileError(f"{where}: its landmarks lie outside the {w}x{h} image, so they are "
                           "not this photo's (already cropped?). Use the release's photos, or "
                           "remove the _lmk.txt files to read aligned crops as they are")
    out = warp_to_template(unit_range(torch.from_numpy(np.array(img)).permute(2, 0, 1)), pts,
                           size).clamp(0, 1)
    return (out * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def read_rfw(root: str | Path, races=RFW_RACES, image_size: int = 112,
             limit_per_race: int | None = None) -> PairSet:
    """Read RFW-style pairs of every race into one PairSet with race groups and folds. Where
    ``test/txts/<Race>/<Race>_lmk.txt`` exists (the release), each photo is aligned with its
    landmarks to the ArcFace template at ``image_size``; without it the images must be
    aligned ``image_size`` x ``image_size`` crops (others are refused: resizing a whole photo
    would give wrong accuracies, not an error)."""
    root = Path(root)
    images, issame, groups, folds = [], [], [], []
    for g, race in enumerate(races):
        pairs_file = root / "test" / "txts" / race / f"{race}_pairs.txt"
        if not pairs_file.is_file():
            raise FileNotFoundError(f"{pairs_file} not found: expected the RFW layout "
                                    f"test/txts/<Race>/<Race>_pairs.txt under {root} (RFW is "
                                    "given on request by its authors; unpack its test/ folder "
                                    "there as it is)")
        lmk_file = pairs_file.with_name(f"{race}_lmk.txt")
        landmarks = _rfw_landmarks(lmk_file)
        lines = [ln.split() for ln in pairs_file.read_text().splitlines() if ln.strip()]
        lines = lines[:limit_per_race]
        # 10 contiguous folds per group (RFW: 6000 lines -> fold = line // 600)
        race_folds = contiguous_folds(len(lines)) if len(lines) >= 10 else np.zeros(len(lines))
        for i, parts in enumerate(lines):
            if len(parts) == 3:
                (a, n1, n2), same = parts, True
                files = [(a, n1), (a, n2)]
            elif len(parts) == 4:
                files, same = [(parts[0], parts[1]), (parts[2], parts[3])], False
            else:
                raise ValueError(f"{pairs_file}:{i + 1}: expected 3 or 4 fields, got {parts}")
            for ident, n in files:
                f = root / "test" / "data" / race / ident / f"{ident}_{int(n):04d}.jpg"
                if not f.is_file():
                    raise FileNotFoundError(f"{f} (listed in {pairs_file}:{i + 1}) is missing")
                try:
                    img = Image.open(f).convert("RGB")
                except (OSError, ValueError) as e:  # PIL: unreadable or truncated image
                    raise BadFileError(f"{f} (listed in {pairs_file}:{i + 1}) is not a "
                                       f"readable image ({e}): restore it from the RFW "
                                       "release") from e
                if landmarks is None:
                    if img.size != (image_size, image_size):  # a release photo, unaligned?
                        raise BadFileError(
                            f"{f} is {img.size[0]}x{img.size[1]} and {lmk_file} is missing: "
                            f"RFW's photos are aligned with that file's landmarks (restore it "
                            f"from the release), or use aligned {image_size}x{image_size} "
                            "crops")
                    images.append(np.asarray(img))
                    continue
                pts = landmarks.get(f"{ident}/{f.name}")
                if pts is None:
                    raise BadFileError(f"{f} has no landmarks in {lmk_file}: restore it from "
                                       "the RFW release")
                images.append(_aligned_rfw_image(img, pts, image_size, str(f)))
            issame.append(same)
            groups.append(g)
            folds.append(int(race_folds[i]))
    if not issame:
        raise BadFileError(f"no pairs read from {root / 'test' / 'txts'} (empty pairs files, "
                           f"or limit_per_race={limit_per_race})")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # uint8
    return PairSet("RFW", x, np.array(issame), np.array(groups), list(races), np.array(folds))


REFERENCE_BENCHMARKS = ("lfw", "cfp_fp", "cplfw", "calfw", "agedb_30", *(f"rfw_{r.lower()}"
                                                                         for r in RFW_RACES))


def read_reference_numbers(path: str | Path):
    """Published accuracies to show next to ours (notebook 04), from a CSV you write:
    columns ``pretraining,benchmark,accuracy``; accuracy in percent (e.g. 99.1), benchmark one of
    :data:`REFERENCE_BENCHMARKS`. Returns a (pretraining x benchmark) table of fractions.

    The project bundles no such numbers: they could not be checked against the paper offline,
    and a number typed from memory is worse than none.
    """
    import pandas as pd

    path = Path(path)
    df = pd.read_csv(path)
    missing = {"pretraining", "benchmark", "accuracy"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected "
                         "pretraining,benchmark,accuracy (accuracy in percent)")
    unknown = sorted(set(df.benchmark) - set(REFERENCE_BENCHMARKS))
    if unknown:
        raise ValueError(f"{path}: unknown benchmark(s) {unknown}; use {REFERENCE_BENCHMARKS}")
    acc = pd.to_numeric(df.accuracy, errors="coerce")
    if acc.isna().any() or not acc.between(0, 100).all():
        bad = df.loc[acc.isna() | ~acc.between(0, 100), "accuracy"].tolist()
        raise ValueError(f"{path}: accuracy must be a percentage in [0, 100], got {bad}")
    if df.duplicated(["pretraining", "benchmark"]).any():
        raise ValueError(f"{path}: a (pretraining, benchmark) pair appears twice")
    return (df.assign(accuracy=acc / 100)
            .pivot(index="pretraining", columns="benchmark", values="accuracy"))
