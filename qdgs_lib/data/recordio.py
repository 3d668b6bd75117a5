"""InsightFace training sets in MXNet's RecordIO format (``train.rec`` + ``train.idx``), without
mxnet: MS1MV2, CASIA-WebFace (``faces_webface_112x112``), Glint360K.

A record: uint32 magic ``0xced7230a``, uint32 ``lrec`` (length = lrec & (2^29 - 1), continuation
flag = lrec >> 29: 0 whole, 1 first, 2 middle, 3 last part; MXNet splits a payload wherever the
magic number appears at a 4-byte boundary and drops it, so joined parts get it back), the bytes,
zero padding to 4. ``train.idx``: ``key<TAB>offset`` lines. Payload: struct ``IfQQ`` header
(flag, label, id, id2); flag > 0 means ``flag`` float32 labels follow; then the JPEG. Record 0
of InsightFace sets is a meta record whose labels are ``[first identity key, end]``: images are
keys ``1 .. first identity key - 1`` (sets without it: every key is an image).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..utils import BadFileError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_HEADER = struct.Struct("<IfQQ")


class RecordIOError(BadFileError):
    """A ``.rec``/``.idx`` file that cannot be read as InsightFace RecordIO."""


def read_index(idx_path: str | Path) -> dict[int, int]:
    """``key -> byte offset`` from a ``.idx`` file."""
    idx_path = Path(idx_path)
    if not idx_path.is_file():
        raise FileNotFoundError(
            f"{idx_path} not found: InsightFace training sets come as train.rec + train.idx "
            "(e.g. faces_webface_112x112.zip, faces_emore.zip); put both in the same folder")
    index = {}
    n, line, raw = 0, "", b""
    try:
        with open(idx_path, "rb") as f:   # decoded line by line: an error names its line
            for n, raw in enumerate(f, 1):  # noqa: B007 - n names the bad line
                line = raw.decode("ascii")
                if not line.strip():
                    continue
                parts = line.split("\t")
                key, offset = int(parts[0]), int(parts[1])
                if not (0 <= key < 2**63 and 0 <= offset < 2**63):
                    raise ValueError("key or offset out of range")
                index[key] = offset
    except (ValueError, IndexError) as e:   # UnicodeDecodeError (a binary file) included
        shown = raw[:60] if isinstance(e, UnicodeDecodeError) else line.strip()[:60]
        raise RecordIOError(f"{idx_path}:{n}: expected 'key<TAB>offset' lines, got "
                            f"{shown!r} ({e})") from e
    if not index:
        raise RecordIOError(f"{idx_path} lists no records")
    return index


def read_record(f, offset: int, path: str | Path = "<rec>") -> bytes:
    """The payload of the record starting at ``offset`` of the open binary file ``f``
    (multi-part records joined, magic re-inserted)."""
    parts, pos = [], offset
    while True:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            raise RecordIOError(f"{path}: truncated at offset {pos} (record starting at "
                                f"{offset}): the file ends inside a record header")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(f"{path}: no record at offset {pos} (magic {magic:#010x}, "
                                f"expected {MAGIC:#010x}): the file is corrupt or the .idx "
                                "does not belong to it")
        flag, length = lrec >> 29, lrec & _LEN_MASK
        data = f.read(length)
        if len(data) < length:
            raise RecordIOError(f"{path}: truncated record at offset {pos}: header says "
                                f"{length} bytes, the file has {len(data)}")
        expected = (0, 1) if pos == offset else (2, 3)
        if flag not in expected:
            raise RecordIOError(f"{path}: record part at offset {pos} has continuation flag "
                                f"{flag}, expected one of {expected}: corrupt file or wrong "
                                ".idx")
        parts.append(data)
        pos += 8 + ((length + 3) >> 2 << 2)
        if flag in (0, 3):
            return _MAGIC_BYTES.join(parts)


def unpack(payload: bytes, where: str = "") -> tuple[np.ndarray, int, bytes]:
    """(labels float32 array, id, image bytes) of a record payload."""
    if len(payload) < _HEADER.size:
        raise RecordIOError(f"{where}: record of {len(payload)} bytes is shorter than its "
                            f"{_HEADER.size}-byte header")
    flag, label, ident, _ = _HEADER.unpack_from(payload)
    rest = payload[_HEADER.size:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise RecordIOError(f"{where}: header announces {flag} labels, record too short")
        labels = np.frombuffer(rest, np.float32, flag).copy()
        rest = rest[4 * flag:]
    else:
        labels = np.array([label], np.float32)
    return labels, ident, rest


def pack(labels: float | Iterable[float], image: bytes, ident: int = 0) -> bytes:
    """A record payload: header (+ labels when there are several) + image bytes."""
    labels = np.atleast_1d(np.asarray(labels, np.float32))
    if len(labels) == 1:
        return _HEADER.pack(0, float(labels[0]), ident, 0) + image
    return _HEADER.pack(len(labels), 0.0, ident, 0) + labels.tobytes() + image


def write_recordio(rec_path: str | Path, payloads: dict[int, bytes]) -> Path:
    """Write ``key -> payload`` records and the ``.idx`` beside, splitting payloads at
    4-byte-aligned magic numbers exactly as MXNet's writer does. Atomic per file."""
    from ..utils import atomic_write_bytes

    rec_path = Path(rec_path)
    out, index = io.BytesIO(), []
    for key, data in payloads.items():
        index.append(f"{key}\t{out.tell()}\n")
        start = 0
        for i in range(0, len(data) // 4 * 4, 4):
            if data[i:i + 4] == _MAGIC_BYTES:
                out.write(struct.pack("<II", MAGIC, ((1 if start == 0 else 2) << 29) | (i - start)))
                out.write(data[start:i])
                start = i + 4
        rest = data[start:]
        out.write(struct.pack("<II", MAGIC, ((3 if start else 0) << 29) | len(rest)))
        out.write(rest + b"\0" * (-len(data) % 4))
    atomic_write_bytes(rec_path, out.getvalue())
    atomic_write_bytes(rec_path.with_suffix(".idx"), "".join(index).encode())
    return rec_path


def write_insightface_set(folder: str | Path, images: Iterable[bytes],
                          labels: Iterable[int]) -> Path:
    """An InsightFace-style training set (``train.rec``, ``train.idx``, ``property``) from
    encoded images and identity labels: meta record 0, image records, identity records."""
    labels = [int(v) for v in labels]
    images = list(images)
    if len(images) != len(labels) or not images:
        raise ValueError("need the same, non-zero number of images and labels")
    n_ids = max(labels) + 1
    records = {}
    first_id_key = len(images) + 1
    records[0] = pack([first_id_key, first_id_key + n_ids], b"")
    for k, (img, y) in enumerate(zip(images, labels, strict=True), 1):
        records[k] = pack(float(y), img, ident=k)
    for y in range(n_ids):
        keys = [k for k, v in enumerate(labels, 1) if v == y]
        lo, hi = (keys[0], keys[-1] + 1) if keys else (0, 0)
        records[first_id_key + y] = pack([lo, hi], b"")
    folder = Path(folder)
    write_recordio(folder / "train.rec", records)
    from ..utils import atomic_write_text

    atomic_write_text(folder / "property", f"{n_ids},112,112\n")
    return folder


class RecordIOReader:
    """Random access to a ``.rec`` by key; opens its file lazily in each process, so a
    reader can be handed to DataLoader workers."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.path = Path(rec_path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"{self.path} not found: put the InsightFace training set (train.rec + "
                "train.idx) there")
        index = read_index(idx_path or self.path.with_suffix(".idx"))
        # sorted numpy arrays, not a dict: MS1MV2 has 5.8M records, and a dict of Python ints
        # would be copied into every DataLoader worker as its refcounts are touched
        self.keys = np.fromiter(index, np.int64, len(index))
        order = np.argsort(self.keys)
        self.keys = self.keys[order]
        self.offsets = np.fromiter(index.values(), np.int64, len(index))[order]
        del index
        size = self.path.stat().st_size
        bad = np.flatnonzero((self.offsets < 0) | (self.offsets >= size))
        if len(bad):
            k, o = int(self.keys[bad[0]]), int(self.offsets[bad[0]])
            raise RecordIOError(f"{self.path}: key {k} points at offset {o}, past the end of "
                                f"the file ({size} bytes): truncated .rec or wrong .idx")
        self._file, self._pid = None, None

    def __getstate__(self):  # workers reopen the file
        return {**self.__dict__, "_file": None, "_pid": None}

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = open(self.path, "rb"), os.getpid()  # noqa: SIM115
        return self._file

    def __contains__(self, key: int) -> bool:
        i = np.searchsorted(self.keys, key)
        return bool(i < len(self.keys) and self.keys[i] == key)

    def offset(self, key: int) -> int:
        """The byte offset of record ``key`` in the ``.rec`` (from the index); KeyError where the
        index has no such key."""
        i = np.searchsorted(self.keys, key)
        if i >= len(self.keys) or self.keys[i] != key:
            raise KeyError(f"{self.path}: no record with key {key}")
        return int(self.offsets[i])

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (multi-part records joined; :func:`unpack` splits it), read
        through this process's own file handle, opened on first use."""
        return read_record(self._handle(), self.offset(key), self.path)

    def close(self) -> None:
        """Close this process's file handle, if open (a later :meth:`read` opens it again)."""
        if self._file is not None:
            self._file.close()
            self._file = None
