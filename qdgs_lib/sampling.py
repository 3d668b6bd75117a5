"""Archive -> dataset: measure bins, class folders, manifest; written atomically.

A dataset folder holds one sub-folder per class (PNG images) and ``manifest.csv`` (file,
class, bin, measures, latent). It is built in a temporary folder and renamed into place, so a
half-written dataset never exists under the final name.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from .utils import (
    atomic_dir,
    check_batch_size,
    check_unit_images,
    resize_square,
    to_uint8_hwc,
    unit_range,
)

Bins = Sequence[Sequence[tuple[float, float]]]  # per measure: list of [lo, hi) intervals


def assign_bins(measures: np.ndarray, bins: Bins, warn_empty: bool = True) -> np.ndarray:
    """Index of the bin (row-major over measures) each row falls in; -1 if it falls in none.

    ``bins[k]`` lists half-open intervals [lo, hi) of measure k; e.g. the paper's shape bins
    ``[[(-inf, inf)], [(-inf, -0.01), (0, inf)]]`` ignore color and split on shape. An
    interval that ends at ``inf`` includes ``+inf`` (as one from ``-inf`` includes ``-inf``);
    NaN falls in no bin. ``warn_empty``: warn where an interval lies outside all of a
    measure's values (a split the data cannot fill; :func:`balanced_indices` would fail).
    """
    measures = np.asarray(measures, dtype=float)
    if measures.ndim != 2 or measures.shape[1] != len(bins):
        raise ValueError(f"measures must be (N, {len(bins)}), got {measures.shape}")
    for k, intervals in enumerate(bins):
        edges = [(float(lo), float(hi)) for lo, hi in intervals]
        if not edges or any(not lo < hi for lo, hi in edges):
            raise ValueError(f"bins[{k}] must list intervals (lo, hi) with lo < hi, got "
                             f"{intervals}")
        edges.sort()
        if any(edges[i][1] > edges[i + 1][0] for i in range(len(edges) - 1)):
            raise ValueError(f"bins[{k}]'s intervals overlap ({intervals}): a measure value "
                             "would count in the first only; make them disjoint, e.g. "
                             "[(-inf, 0), (0, inf)]")
    index = np.zeros(len(measures), dtype=int)
    valid = np.ones(len(measures), dtype=bool)
    for k, intervals in enumerate(bins):
        which = np.full(len(measures), -1)
        for b, (lo, hi) in enumerate(intervals):
            below = (measures[:, k] < hi) | (hi == np.inf)   # an open top bin takes +inf
            which[(measures[:, k] >= lo) & below & (which < 0)] = b
        valid &= which >= 0
        index = index * len(intervals) + np.maximum(which, 0)
        values = measures[~np.isnan(measures[:, k]), k]
        empty = [intervals[b] for b in range(len(intervals)) if not (which == b).any()]
        if warn_empty and empty and len(intervals) > 1 and len(values):  # a split outside them
            warnings.warn(f"bins[{k}]: {len(empty)} interval(s) {empty} hold none of the "
                          f"{len(values)} values of measure {k}, which lie in "
                          f"[{values.min():.3g}, {values.max():.3g}]: a search whose range "
                          "lies on one side of a split cannot fill the other; split inside "
                          "the values (e.g. at their median) or search wider ranges",
                          stacklevel=2)
    return np.where(valid, index, -1)


def bin_names(bins: Bins, names: Sequence[Sequence[str]] | None = None) -> list[str]:
    """A name per bin index of :func:`assign_bins` (row-major): ``names[k][b]`` joined by
    ``-`` (``"red-triangle"``), or the intervals' indices (``"0-1"``) without ``names``."""
    if names is None:
        names = [[str(b) for b in range(len(intervals))] for intervals in bins]
    if [len(n) for n in names] != [len(intervals) for intervals in bins]:
        raise ValueError(f"names need one entry per interval of each measure: "
                         f"{[len(i) for i in bins]} intervals, names of lengths "
                         f"{[len(n) for n in names]}")
    out = [""]
    for per_measure in names:
        out = [f"{a}-{b}" if a else str(b) for a in out for b in per_measure]
    return out


def balanced_indices(bin_index: np.ndarray, num_bins: int, per_bin: int | None = None,
                     seed: int = 0) -> np.ndarray:
    """Rows to keep so that each of the ``num_bins`` bins holds the same number of samples:
    ``per_bin`` each (default: as many as the fullest balanced set allows, i.e. the smallest
    bin's count), drawn uniformly within each bin with ``seed``. Rows outside every bin
    (index -1) are dropped. An empty bin, or one with fewer than ``per_bin`` samples, is an
    error naming the counts: widen the bins or the archive's ranges, or search longer."""
    if int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    bin_index = np.asarray(bin_index)
    if bin_index.ndim != 1 or not np.issubdtype(bin_index.dtype, np.integer):
        raise ValueError(f"bin_index must be a 1-D integer array (assign_bins' output), got "
                         f"{bin_index.dtype} {bin_index.shape}")
    if bin_index.size and (bin_index.min() < -1 or bin_index.max() >= num_bins):
        raise ValueError(f"bin indices must lie in [-1, {num_bins}), got "
                         f"[{bin_index.min()}, {bin_index.max()}]")
    if per_bin is not None and (int(per_bin) != per_bin or per_bin < 1):
        raise ValueError(f"per_bin must be a positive int (or None: the smallest bin's count), "
                         f"got {per_bin!r}")
    counts = np.bincount(bin_index[bin_index >= 0], minlength=num_bins)
    need = max(int(counts.min()), 1) if per_bin is None else int(per_bin)
    if (counts < need).any():
        short = {int(b): int(c) for b, c in enumerate(counts) if c < need}
        fix = "Widen the bins or the archive's ranges, or search longer" + (
            "" if per_bin is None or not counts.min() else ", or lower per_bin")
        raise ValueError(f"cannot balance {num_bins} bins with {need} sample(s) each: bins "
                         f"{short} hold fewer (counts per bin: {counts.tolist()}). {fix}")
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(bin_index == b), need, replace=False)
            for b in range(num_bins)]
    return np.sort(np.concatenate(keep))


def solution_columns(measures: np.ndarray, latents: np.ndarray,
                     **extra: np.ndarray) -> pd.DataFrame:
    """Manifest columns of solutions: ``extra``, then ``measures_k`` and ``solution_k`` (the
    names of pyribs' archive frames, so :func:`qdgs_lib.search.measures` and
    :func:`~qdgs_lib.search.solutions` read a manifest too)."""
    measures, latents = np.asarray(measures), np.asarray(latents)
    return pd.DataFrame({**extra, **{f"measures_{k}": measures[:, k]
                                     for k in range(measures.shape[1])},
                         **{f"solution_{k}": latents[:, k] for k in range(latents.shape[1])}})


def decode_batched(decode: Callable[[torch.Tensor], torch.Tensor], latents: np.ndarray,
                   batch_size: int = 64, size: int | None = None,
                   progress: bool = False) -> torch.Tensor:
    """Decode latents to images (optionally resized to ``size``), in batches, without grad."""
    check_batch_size(batch_size)
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(latents), batch_size), disable=not progress, desc="decode"):
            x = decode(torch.as_tensor(latents[i:i + batch_size], dtype=torch.float32))
            out.append((x if size is None else resize_square(x, size)).cpu())
    if out:
        return torch.cat(out)
    return torch.empty(0, 3, size or 0, size or 0)  # (size unknown without a decode: 0)


# the formats of written datasets, with their PIL save options (JPEG: PIL's default quality,
# which the released code's ``img.save("....jpg")`` used)
IMAGE_FORMATS = {"png": {}, "jpg": {"format": "JPEG", "quality": 75}}


def as_released_jpeg(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the pixels the released code trained on after writing them:
    8 bits by truncation (``img.clamp(0, 1).mul(255)``, ``astype(uint8)``), a JPEG at PIL's
    default quality (75), read back as ``ToTensor`` reads it (``/ 255``), float32 on the CPU."""
    import io

    check_unit_images(images)
    refuse_nonfinite(nonfinite(images, np.arange(len(images))), "image")
    eight = (images.detach().cpu().float().clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()
    out = []
    for img in eight.astype(np.uint8):  # numpy's cast truncates, as the released code's
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, **IMAGE_FORMATS["jpg"])
        buf.seek(0)
        with Image.open(buf) as f:
            out.append(torch.from_numpy(np.array(f.convert("RGB"))))
    if not out:
        return images.detach().cpu().float()
    return torch.stack(out).permute(0, 3, 1, 2).float().div(255).contiguous()


def write_image_dataset(outdir: str | Path, images: torch.Tensor, classes: Sequence[str],
                        manifest: pd.DataFrame | None = None, overwrite: bool = False) -> Path:
    """Write images into ``outdir/<class>/<i>.png`` plus ``manifest.csv``, atomically."""
    outdir = Path(outdir)
    if len(images) != len(classes):
        raise ValueError(f"{len(images)} images but {len(classes)} class labels")
    if len(images) == 0:
        raise ValueError("no images to write: the archive/bins produced an empty dataset")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) RGB, got {tuple(images.shape)} "
                         "(channels last: permute(0, 3, 1, 2); grayscale: repeat the channel)")
    check_unit_images(images)
    refuse_nonfinite(nonfinite(images, np.arange(len(images))), "image")
    for cls in set(map(str, classes)):
        check_class_name(cls)
    if manifest is not None and len(manifest) != len(images):
        raise ValueError(f"the manifest has {len(manifest)} rows for {len(images)} images")
    taken = sorted({"file", "class"} & set(manifest.columns)) if manifest is not None else []
    if taken:   # the CSV would hold two columns of one name, read back as "class", "class.1"
        raise ValueError(f"the manifest's columns {taken} are written by write_image_dataset "
                         "itself: drop or rename them")
    if outdir.exists():
        if not overwrite:
            raise FileExistsError(f"{outdir} exists; pass overwrite=True to replace it")
        if not outdir.is_dir() or (any(outdir.iterdir())
                                   and not (outdir / "manifest.csv").is_file()):
            raise FileExistsError(f"refusing to replace {outdir}: it is not an image dataset "
                                  "written by qdgs (no manifest.csv), and overwrite=True would "
                                  "delete it. Remove it yourself or write to another folder")
    with atomic_dir(outdir) as tmp:
        rows = []
        for i, (img, cls) in enumerate(zip(to_uint8_hwc(images), classes, strict=True)):
            rel = Path(str(cls)) / f"{i:06d}.png"
            (tmp / rel.parent).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(tmp / rel)
            rows.append({"file": str(rel), "class": cls})
        df = pd.DataFrame(rows)
        if manifest is not None:
            df = pd.concat([df, manifest.reset_index(drop=True)], axis=1)
        df.to_csv(tmp / "manifest.csv", index=False)
    return outdir


def nonfinite(images: torch.Tensor, ids: np.ndarray) -> list[int]:
    """``ids`` of the images with NaN/inf pixels (written as PNGs they would turn black/white)."""
    bad = ~torch.isfinite(images.flatten(1)).all(1).cpu().numpy()
    return sorted({int(i) for i in np.asarray(ids)[bad]})


def refuse_nonfinite(which: list[int], what: str) -> None:
    """Raise ValueError naming (the first 20 of) ``which``, the indices of the ``what``s
    (e.g. "image", "solution") whose images hold NaN or inf pixels; no-op when empty."""
    if which:
        raise ValueError(f"non-finite (NaN/inf) pixels in the images of {what}(s) "
                         f"{which[:20]}{' ...' if len(which) > 20 else ''}: the generator "
                         "diverged there (check its weights and the latents' range); nothing "
                         "was written for them and the dataset is left unfinished")


def check_class_name(name: str) -> None:
    """A class label becomes a folder name: refuse anything that is not a plain name."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"class label {name!r} cannot be a folder name inside the dataset "
                         "(no path separators, '.' or '..')")


def read_image_dataset(root: str | Path, classes: Sequence[str]) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """Load a dataset written by :func:`write_image_dataset`; labels index into ``classes``."""
    root = Path(root)
    path = root / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a dataset written by qdgs?")
    # class names as written ("01" and "NA" are folder names, not numbers or missing values)
    df = pd.read_csv(path, dtype={"class": str, "file": str}, keep_default_na=False)
    unknown = set(df["class"]) - set(classes)
    if unknown:
        raise ValueError(f"dataset has classes {sorted(unknown)} not in {list(classes)}")
    imgs = [torch.from_numpy(np.array(Image.open(root / f).convert("RGB"))) for f in df["file"]]
    x = torch.stack(imgs).permute(0, 3, 1, 2).float() / 255
    y = torch.tensor([list(classes).index(str(c)) for c in df["class"]])
    return x, y


# --- identities (faces) -----------------------------------------------------------------------
def cluster_identities(latents: np.ndarray, bin_index: np.ndarray, per_identity: int,
                       seed: int = 0, n_init: int = 4, max_iter: int = 300) -> np.ndarray:
    """Identity id per solution: within each measure bin, K-means on the latents into
    ceil(n / per_identity) clusters (the paper: identities of ``per_identity`` solutions).
    Solutions outside every bin (bin -1) get identity -1. ``n_init`` / ``max_iter``: K-means'
    restarts and iterations (the released code: 10 and 2,000).

    K-means does not fix cluster sizes: identities hold ``per_identity`` solutions on
    average, single ones and larger ones included (notebook 02's default QDGS dataset: 203
    identities of 1-8 solutions, 92 of them single)."""
    from sklearn.cluster import KMeans

    if per_identity < 1:
        raise ValueError("per_identity must be >= 1")
    ids = np.full(len(latents), -1)
    next_id = 0
    for b in np.unique(bin_index[bin_index >= 0]):
        members = np.flatnonzero(bin_index == b)
        k = max(1, int(np.ceil(len(members) / per_identity)))
        if k == 1:
            labels = np.zeros(len(members), dtype=int)
        else:
            labels = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter,
                            random_state=seed).fit_predict(latents[members])
        ids[members] = next_id + labels
        next_id += k
    return ids


def write_identity_dataset(outdir: str | Path, decode: Callable[[torch.Tensor], torch.Tensor],
                           latents: np.ndarray, identities: np.ndarray, offsets: np.ndarray,
                           extra: pd.DataFrame | None = None, size: int | None = None,
                           batch_size: int = 64, progress: bool = True,
                           settings: dict | None = None, image_format: str = "png") -> Path:
    """Write a face-recognition dataset: ``outdir/<identity>/<solution>_<k>.png`` for each
    solution and each latent offset (augmentation), plus ``manifest.csv`` and ``offsets.npy``.
    ``image_format`` ``"jpg"`` writes JPEGs at PIL's default quality (75), as the paper's
    released code did; they are the training data, artifacts included.

    ``settings``: what else the images depend on (e.g. the generator's weights and the
    alignment, as JSON-able values). With the latents, identities, offsets, ``extra`` and
    ``size`` they make the folder's recorded inputs: a folder of other inputs, finished or
    not, is refused rather than reused.

    Resumable: each written identity leaves its manifest rows in ``.parts/<identity>.csv``
    (atomically), and identities with a part are skipped; the final ``manifest.csv`` appears
    (atomically) only when every identity is written.
    """
    import hashlib
    import json

    from .utils import atomic_path, atomic_write_csv, atomic_write_text

    outdir = Path(outdir)
    latents = np.asarray(latents, dtype=np.float32)
    offsets = np.asarray(offsets, dtype=np.float32)
    identities = np.asarray(identities)
    if identities.shape != (len(latents),):
        raise ValueError(f"need one identity per solution: {len(latents)} latents, identities "
                         f"of shape {identities.shape}")
    if not np.issubdtype(identities.dtype, np.integer):
        raise ValueError(f"identities must be integers (-1: left out), got {identities.dtype}")
    if offsets.ndim != 2 or offsets.shape[1] != latents.shape[1] or len(offsets) == 0:
        raise ValueError(f"offsets must be (k >= 1, {latents.shape[1]}) (the zero offset "
                         f"included), got {offsets.shape}")
    if extra is not None and len(extra) != len(latents):
        raise ValueError(f"extra has {len(extra)} rows for {len(latents)} solutions")
    # what this folder holds: a finished or half-written dataset of *other* inputs is refused
    # rather than silently reused (identities as int64: the same ids in another integer type
    # are the same dataset)
    h = hashlib.sha256(latents.tobytes() + identities.astype(np.int64).tobytes()
                       + offsets.tobytes())
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got "
                         f"{image_format!r}")
    # (PNG, the first format, is left out of the record: folders written before keep theirs)
    fmt = {} if image_format == "png" else {"image_format": image_format}
    h.update(json.dumps({"size": size, "settings": settings, **fmt}, sort_keys=True,
                        default=str).encode())
    if extra is not None:
        h.update(extra.to_csv(index=False).encode())
    digest = h.hexdigest()
    stamp = outdir / "dataset.json"
    if stamp.exists():
        if json.loads(stamp.read_text())["inputs_sha256"] != digest:
            raise ValueError(f"{outdir} holds a dataset built from other inputs (solutions, "
                             "identities, offsets, image size, generator or alignment "
                             "settings, or an older qdgs): delete it or write to a new folder")
        if (outdir / "manifest.csv").exists():
            return outdir
    elif outdir.exists() and any(outdir.iterdir()):
        raise ValueError(f"{outdir} is not empty and was not written by this writer")
    keep = np.flatnonzero(identities >= 0)
    if len(keep) == 0:
        raise ValueError("no solution has an identity: the archive or the bins are empty")
    outdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, json.dumps({"inputs_sha256": digest, "solutions": len(latents),
                                         "offsets": len(offsets), "size": size,
                                         "settings": settings, **fmt}, default=str))
    if not (outdir / "offsets.npy").exists():  # same digest -> same offsets: write once
        with atomic_path(outdir / "offsets.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, offsets)  # a file object: np.save would append ".npy" to a path
    parts = outdir / ".parts"
    parts.mkdir(exist_ok=True)
    columns = None if extra is None else {c: extra[c].to_numpy() for c in extra.columns}
    diverged: list[int] = []
    idents = np.unique(identities[keep])
    for ident in tqdm(idents, disable=not progress, desc="identities"):
        part = parts / f"{int(ident)}.csv"
        if part.exists():  # written whole (atomically) by an earlier call
            continue
        members = np.flatnonzero(identities == ident)
        z = (latents[members, None, :] + offsets[None]).reshape(-1, latents.shape[1])
        images = decode_batched(decode, z, batch_size, size)
        check_unit_images(images, "decoded images")
        bad = nonfinite(images, np.repeat(members, len(offsets)))
        if bad:  # this identity is not written; the others are, then the call fails
            diverged += bad
            continue
        arr = to_uint8_hwc(images)
        (outdir / str(ident)).mkdir(exist_ok=True)
        rows = []
        for j, sol in enumerate(np.repeat(members, len(offsets))):
            k = j % len(offsets)
            rel = f"{ident}/{sol:06d}_{k:02d}.{image_format}"
            Image.fromarray(arr[j]).save(outdir / rel, **IMAGE_FORMATS[image_format])
            row = {"file": rel, "identity": int(ident), "solution": int(sol), "offset": k}
            if columns is not None:  # column by column: an int column stays int
                row.update({c: v[sol] for c, v in columns.items()})
            rows.append(row)
        atomic_write_csv(pd.DataFrame(rows), part, index=False)
    refuse_nonfinite(sorted(diverged), "solution")
    atomic_write_csv(pd.concat([pd.read_csv(parts / f"{int(i)}.csv") for i in idents],
                               ignore_index=True), outdir / "manifest.csv", index=False)
    shutil.rmtree(parts)
    return outdir


def read_identity_dataset(root: str | Path, dtype: torch.dtype = torch.float32
                          ) -> tuple[torch.Tensor, torch.Tensor, pd.DataFrame]:
    """Images (N, 3, H, W), contiguous identity labels, and the manifest. ``dtype``
    float32: images in [0, 1]; uint8: the files' 0..255 values, a quarter of the memory (a
    paper-scale set of 100k 112 px images: 3.8 GB instead of 15 GB)."""
    if dtype not in (torch.float32, torch.uint8):
        raise ValueError(f"dtype must be torch.float32 or torch.uint8, got {dtype}")
    root = Path(root)
    path = root / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the dataset is missing or unfinished "
                                "(re-run the writer to resume it)")
    df = pd.read_csv(path)
    imgs = [torch.from_numpy(np.array(Image.open(root / f).convert("RGB"))) for f in df["file"]]
    x = torch.stack(imgs).permute(0, 3, 1, 2)  # (channels_last strides: see TensorFaces)
    if dtype == torch.float32:
        x = unit_range(x)
    _, labels = np.unique(df["identity"].to_numpy(), return_inverse=True)
    return x, torch.as_tensor(labels), df
