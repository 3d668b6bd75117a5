"""Face-recognition training sets behind one interface: a map-style torch Dataset whose items
are ``(image, identity)`` with ``image`` a (3, S, S) tensor (uint8 when read from files, uint8
or float in [0, 1] when held in memory), plus ``num_classes``.

* :class:`TensorFaces`: images already in memory (the toy world, the synthetic sets).
* :class:`IdentityFolders`: ``root/<identity>/<image>.jpg|png``, decoded on access.
* :class:`RecordIOFaces`: InsightFace ``train.rec`` + ``train.idx``, read on access (MS1MV2-sized
  sets never have to fit in memory); safe to use with DataLoader workers.

:func:`open_training_set` picks the reader from what a folder holds.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from ..paths import misplaced_recordio, nested_recordio
from .recordio import RecordIOError, RecordIOReader, unpack

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


class FaceBatch(NamedTuple):
    """A batch :class:`TensorFaces` fetches in one indexing: ``images`` (B, 3, S, S) and
    identity ``labels`` (B,); :func:`collate_faces` passes it through as it is."""

    images: torch.Tensor
    labels: torch.Tensor


def collate_faces(items):
    """DataLoader collate: batches a dataset fetched whole (TensorFaces) pass through as they
    are; lists of (image, label) items are stacked."""
    return tuple(items) if isinstance(items, FaceBatch) else default_collate(items)


class TensorFaces(Dataset):
    """In-memory images (N, 3, S, S), float in [0, 1] or uint8, and identity labels. A batch
    is one indexing of the tensor (``__getitems__``), which keeps its memory layout: images
    read from HWC files are channels_last-strided, and the convolutions' float rounding
    depends on the layout."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"need the same, non-zero number of images and labels "
                             f"(got {len(images)} and {len(labels)})")
        self.images, self.labels = images, torch.as_tensor(labels).long()
        self.num_classes = int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]) -> FaceBatch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return FaceBatch(self.images[idx], self.labels[idx])


class IdentityFolders(Dataset):
    """``root/<identity>/<image>``: one folder per identity (sorted names -> labels 0..K-1)."""

    def __init__(self, root: str | Path, image_size: int = 112,
                 max_per_identity: int | None = None):
        self.root, self.image_size = Path(root), image_size
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"real training set {self.root} not found: put aligned face crops in "
                f"{self.root}/<identity>/<image>.jpg, or InsightFace's train.rec + train.idx "
                "(e.g. faces_webface_112x112) in that folder")
        self.files, labels = [], []
        # hidden folders (.ipynb_checkpoints, .cache) are not identities
        idents = sorted(d for d in self.root.iterdir() if d.is_dir()
                        and not d.name.startswith("."))
        per_ident = [sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
                            and not f.name.startswith(".")) for d in idents]
        if not any(per_ident):
            raise ValueError(f"{self.root} holds no identity folders with images "
                             f"({'/'.join(IMAGE_SUFFIXES)})")
        empty = [d.name for d, files in zip(idents, per_ident, strict=True) if not files]
        if empty:  # as a class it would shift every later label and count as an identity
            raise ValueError(f"{len(empty)} identity folder(s) in {self.root} hold no images "
                             f"({'/'.join(IMAGE_SUFFIXES)}): {', '.join(empty[:5])}"
                             f"{' ...' if len(empty) > 5 else ''}. Remove them or add images.")
        for label, files in enumerate(per_ident):
            self.files += files[:max_per_identity]
            labels += [label] * len(files[:max_per_identity])
        self.labels = torch.tensor(labels)
        self.num_classes = len(idents)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            img = Image.open(self.files[i])
            return _to_tensor(img, self.image_size), self.labels[i]
        except OSError as e:
            raise ValueError(f"{self.files[i]}: cannot decode image ({e})") from e


class RecordIOFaces(Dataset):
    """InsightFace's RecordIO training set (``train.rec`` + ``train.idx`` in ``folder``, or the
    path of the ``.rec``), streamed from disk."""

    def __init__(self, path: str | Path, image_size: int = 112):
        path = Path(path)
        rec = path / "train.rec" if path.is_dir() else path
        self.reader, self.image_size = RecordIOReader(rec), image_size
        keys = self.reader.keys
        labels = unpack(self.reader.read(0), f"{rec} record 0")[0] if 0 in self.reader else []
        labels = np.asarray(labels, dtype=float)
        if len(labels) >= 2 and not np.isfinite(labels[:2]).all():
            raise RecordIOError(f"{rec}: record 0's labels {labels[:2].tolist()} are not finite")
        if len(labels) >= 2 and labels[0] > 1:  # meta record: [first identity key, end]
            # checked against the .idx before anything is sized by it (a forged first key of
            # 3e9 asked for 22 GiB)
            first_id, end = labels[0], labels[1]
            # (every identity has an image: at most first_id - 1 of them)
            if not (first_id == int(first_id) and first_id <= len(keys) + 1
                    and end == int(end) and first_id < end <= 2 * first_id - 1):
                raise RecordIOError(f"{rec}: meta record [{first_id:g}, {end:g}] (first "
                                    f"identity key, end) does not fit its .idx of {len(keys)} "
                                    "keys: the file is damaged; fetch it again")
            first_id, end = int(first_id), int(end)
            self.keys = np.arange(1, first_id)
            self.num_classes = end - first_id
            missing = np.setdiff1d(self.keys, np.asarray(keys))
            if len(missing):
                raise RecordIOError(f"{rec}: meta record lists images 1..{first_id - 1} but the "
                                    f".idx lacks {len(missing)} of them (e.g. key "
                                    f"{missing.min()})")
        else:  # no meta record: every key is an image; classes from the labels
            self.keys = np.asarray(keys)
            self.num_classes = 1 + max(
                self._label(self.reader.read(int(k)), f"{rec} key {k}") for k in self.keys)
            if self.num_classes > len(self.keys):   # it sizes the classifier head
                raise RecordIOError(f"{rec}: labels up to {self.num_classes - 1} for "
                                    f"{len(self.keys)} images: labels must number the "
                                    "identities 0..n-1")
        prop = rec.parent / "property"
        if prop.is_file():  # InsightFace's "num_classes,H,W"
            try:
                n = int(prop.read_text().split(",")[0])
            except (ValueError, UnicodeDecodeError) as e:
                raise RecordIOError(f"{prop} is not InsightFace's 'num_classes,H,W' ({e}): "
                                    "restore it, or delete it (the labels give the count)"
                                    ) from e
            if n < self.num_classes:
                raise RecordIOError(f"{prop} says {n} identities, {rec} has "
                                    f"{self.num_classes}")
        if len(self.keys) == 0:
            raise RecordIOError(f"{rec} holds no image records")

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def _label(raw: bytes, where: str) -> int:
        labels = unpack(raw, where)[0]
        if len(labels) == 0 or not np.isfinite(labels[0]) or labels[0] != int(labels[0]):
            raise RecordIOError(f"{where}: label {list(labels[:1])} is not a whole number")
        return int(labels[0])

    def __getitem__(self, i: int):
        key = int(self.keys[i])
        where = f"{self.reader.path} key {key} (offset {self.reader.offset(key)})"
        label = self._label(raw := self.reader.read(key), where)
        _, _, data = unpack(raw, where)
        if not 0 <= label < self.num_classes:
            raise RecordIOError(f"{where}: label {label} outside 0..{self.num_classes - 1}")
        try:
            img = Image.open(io.BytesIO(data))
            return _to_tensor(img, self.image_size), torch.tensor(label)
        except OSError as e:
            raise RecordIOError(f"{where}: cannot decode the image ({e})") from e


def open_training_set(path: str | Path, image_size: int = 112) -> Dataset:
    """A real training set from disk: RecordIO when ``path`` is (or holds) ``train.rec``,
    else identity folders."""
    path = Path(path)
    if path.suffix == ".rec" or (path / "train.rec").is_file():
        return RecordIOFaces(path, image_size)
    if (nested := nested_recordio(path)) is not None:
        raise FileNotFoundError(misplaced_recordio(path, nested))
    return IdentityFolders(path, image_size)
