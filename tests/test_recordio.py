"""InsightFace training sets: RecordIO (train.rec/.idx) read without mxnet, identity folders,
and the trainer streaming them through DataLoader workers."""

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from qdgs_lib.data.identities import IdentityFolders, RecordIOFaces, open_training_set
from qdgs_lib.data.recordio import (
    MAGIC,
    RecordIOError,
    RecordIOReader,
    pack,
    write_insightface_set,
    write_recordio,
)


def jpeg(value: int, size: int = 112) -> bytes:
    buf = io.BytesIO()
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0], img[: size // 2, :, 1] = value, 255 - value
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def decoded(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()
                            ).permute(2, 0, 1)


def hand_written_set(folder):
    """A set written byte by byte from the format description (not by our writer): meta record
    0 with labels [first identity key, end], images 1..3 (scalar labels), identity records."""
    folder.mkdir()
    imgs = [jpeg(10), jpeg(120), jpeg(240)]
    labels = [0.0, 1.0, 1.0]
    payloads = [struct.pack("<IfQQ", 2, 0.0, 0, 0) + np.array([4, 6], np.float32).tobytes()]
    payloads += [struct.pack("<IfQQ", 0, y, k, 0) + img
                 for k, (img, y) in enumerate(zip(imgs, labels, strict=True), 1)]
    payloads += [struct.pack("<IfQQ", 2, 0.0, 0, 0) + np.array(r, np.float32).tobytes()
                 for r in ([1, 2], [2, 4])]
    rec, idx = bytearray(), []
    for key, data in enumerate(payloads):
        idx.append(f"{key}\t{len(rec)}\n")
        rec += struct.pack("<II", MAGIC, len(data)) + data + b"\0" * (-len(data) % 4)
    (folder / "train.rec").write_bytes(bytes(rec))
    (folder / "train.idx").write_text("".join(idx))
    return imgs, [0, 1, 1]


def test_reads_a_hand_written_insightface_set(tmp_path):
    imgs, labels = hand_written_set(tmp_path / "set")
    ds = open_training_set(tmp_path / "set", image_size=112)
    assert isinstance(ds, RecordIOFaces)
    assert len(ds) == 3 and ds.num_classes == 2
    for i, (img, y) in enumerate(ds):
        assert img.dtype == torch.uint8 and img.shape == (3, 112, 112)
        assert torch.equal(img, decoded(imgs[i])) and int(y) == labels[i]
    small = RecordIOFaces(tmp_path / "set" / "train.rec", image_size=64)
    assert small[0][0].shape == (3, 64, 64)


def test_writer_round_trip_and_multipart_records(tmp_path):
    magic = struct.pack("<I", MAGIC)
    # the magic number at 4-byte boundaries (and once unaligned): MXNet splits there
    tricky = b"abcd" + magic + b"efgh" + magic + magic + b"xy" + magic + b"z"
    path = write_recordio(tmp_path / "t.rec", {0: b"plain", 7: tricky, 9: magic})
    raw = path.read_bytes()
    flags = []
    pos = 0
    while pos < len(raw):
        m, lrec = struct.unpack_from("<II", raw, pos)
        assert m == MAGIC
        flags.append(lrec >> 29)
        pos += 8 + ((lrec & (2**29 - 1)) + 3) // 4 * 4
    assert flags == [0, 1, 2, 2, 3, 1, 3]  # plain; tricky in 4 parts; magic alone in 2
    reader = RecordIOReader(path)
    assert reader.read(0) == b"plain" and reader.read(7) == tricky and reader.read(9) == magic
    with pytest.raises(KeyError, match="no record with key 3"):
        reader.read(3)


def test_corrupt_and_truncated_files_name_the_file_and_offset(tmp_path):
    hand_written_set(tmp_path / "set")
    rec = tmp_path / "set" / "train.rec"
    good = rec.read_bytes()
    offsets = [int(line.split("\t")[1]) for line in
               (tmp_path / "set" / "train.idx").read_text().splitlines()]
    rec.write_bytes(good[: offsets[3] + 40])  # cut inside image 3: later keys past the end
    with pytest.raises(RecordIOError, match="key 4 points at offset .* past the end"):
        RecordIOFaces(tmp_path / "set")
    two = write_recordio(tmp_path / "two.rec", {0: b"x" * 100, 1: b"y" * 100})
    two.write_bytes(two.read_bytes()[:150])  # the last record loses its tail
    with pytest.raises(RecordIOError, match=r"two.rec: truncated record at offset 108"):
        RecordIOReader(two).read(1)
    bad = bytearray(good)
    bad[offsets[3]] ^= 0xFF  # flip a byte of record 3's magic
    rec.write_bytes(bytes(bad))
    with pytest.raises(RecordIOError, match=rf"no record at offset {offsets[3]}"):
        RecordIOFaces(tmp_path / "set")[2]
    (tmp_path / "set" / "train.idx").unlink()
    with pytest.raises(FileNotFoundError, match="train.idx not found"):
        RecordIOFaces(tmp_path / "set")


def test_undecodable_image_names_the_key(tmp_path):
    records = {0: pack([2, 3], b""), 1: pack(0.0, b"not a jpeg"), 2: pack([1, 2], b"")}
    write_recordio(tmp_path / "train.rec", records)
    with pytest.raises(RecordIOError, match="key 1 .*cannot decode"):
        RecordIOFaces(tmp_path)[0]


def test_workers_stream_every_record(tmp_path):
    labels = np.repeat(np.arange(5), 3)
    write_insightface_set(tmp_path / "s", [jpeg(17 * k) for k in range(15)], labels)
    ds = RecordIOFaces(tmp_path / "s", image_size=32)
    assert ds.num_classes == 5
    seen = torch.cat([y for _, y in DataLoader(ds, batch_size=4, num_workers=2)])
    assert seen.tolist() == labels.tolist()


def test_identity_folders(tmp_path):
    for ident in ("b", "a"):
        (tmp_path / ident).mkdir()
        for k in range(3):
            img = Image.fromarray(np.full((20, 20, 3), 40 * k, np.uint8))
            img.save(tmp_path / ident / f"{k}.jpg")
    ds = open_training_set(tmp_path, image_size=16)
    assert isinstance(ds, IdentityFolders) and len(ds) == 6 and ds.num_classes == 2
    assert ds[0][0].shape == (3, 16, 16) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(IdentityFolders(tmp_path, 16, max_per_identity=2)) == 4
    with pytest.raises(ValueError, match="no identity folders"):
        IdentityFolders(tmp_path / "a", 16)
    with pytest.raises(FileNotFoundError, match="train.rec"):
        open_training_set(tmp_path / "missing")
    # Jupyter's checkpoint folder and hidden temp files are not identities or images
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "x.jpg").write_bytes(b"")
    (tmp_path / "a" / ".tmp.jpg").write_bytes(b"")
    ds = IdentityFolders(tmp_path, 16)
    assert ds.num_classes == 2 and len(ds) == 6
    # an identity folder without images would shift every later label: refused, named
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="1 identity folder.*hold no images.*: c\\."):
        IdentityFolders(tmp_path, 16)


def test_trainer_streams_a_recordio_set_with_workers(tmp_path):
    from qdgs_lib import recognition
    from qdgs_lib.profiles import get_profile

    write_insightface_set(tmp_path / "s", [jpeg(30 * (k % 4)) for k in range(16)],
                          np.arange(16) % 4)
    p = get_profile("smoke", "recognition", real_dataset=str(tmp_path / "s"), workers=2,
                    batch=8)
    data = recognition.real_training_data(p)
    assert isinstance(data, RecordIOFaces) and data.image_size == 64  # ir_small's input
    net = recognition.train_recognizer(data, p, tmp_path / "run", epochs=2, progress=False)
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(log) == 3 and not any(v.is_cuda for v in net.state_dict().values())


@pytest.mark.parametrize("meta, match", [
    ([3e9, 3e9 + 5], r"meta record \[3e\+09, 3e\+09\] .* does not fit its .idx of 2 keys"),
    ([float("nan"), 4], "not finite"), ([float("inf"), 4], "not finite"),
    ([3, 2], r"meta record \[3, 2\]"),   # end before the first identity
    ([2, 1e12], r"meta record \[2, 1e\+12\]"),   # 1e12 identities for 1 image
])
def test_forged_meta_records_are_refused_before_anything_is_sized(tmp_path, meta, match):
    """record 0's [first identity key, end] used to size arrays before the .idx was consulted
    (3e9 asked for 22 GiB) and NaN/inf gave raw conversion errors."""
    write_recordio(tmp_path / "train.rec", {0: pack(meta, b""), 1: pack(0.0, jpeg(1))})
    with pytest.raises(RecordIOError, match=match):
        RecordIOFaces(tmp_path)


def test_bad_labels_and_binary_index_name_the_file(tmp_path):
    write_recordio(tmp_path / "train.rec", {0: pack(float("nan"), jpeg(1))})
    with pytest.raises(RecordIOError, match="key 0: label .* is not a whole number"):
        RecordIOFaces(tmp_path)
    (tmp_path / "train.idx").write_bytes(b"\x00\xff\xfe\x81garbage\n")
    with pytest.raises(RecordIOError, match="train.idx:1: expected 'key<TAB>offset'"):
        RecordIOFaces(tmp_path)
    (tmp_path / "train.idx").write_text(f"0\t{10**30}\n")
    with pytest.raises(RecordIOError, match="out of range"):
        RecordIOFaces(tmp_path)
    (tmp_path / "train.idx").write_bytes(b"0\t0\n" * 100 + b"\xff\n")   # line 101
    with pytest.raises(RecordIOError, match="train.idx:101: .*xff"):
        RecordIOFaces(tmp_path)


def test_labels_beyond_the_image_count_are_refused(tmp_path):
    """No meta record: the largest label sizes the classifier head (label 10**9 on 2 images
    asked for a billion classes)."""
    write_recordio(tmp_path / "train.rec", {0: pack(0.0, jpeg(1)), 1: pack(1e9, jpeg(2))})
    with pytest.raises(RecordIOError, match="labels up to 1000000000 for 2 images"):
        RecordIOFaces(tmp_path)


def test_unpack_reads_the_image_after_several_labels():
    from qdgs_lib.data.recordio import unpack

    labels, ident, image = unpack(pack([3.0, 7.0, 9.0], b"JPEGDATA", ident=5))
    assert labels.tolist() == [3.0, 7.0, 9.0] and ident == 5 and image == b"JPEGDATA"


def test_an_index_into_the_middle_of_a_record_is_refused(tmp_path):
    """A payload with the magic at a 4-byte boundary is written in two parts; an offset
    pointing at the second (continuation flag 3) is a wrong .idx, not a record."""
    from qdgs_lib.data.recordio import read_record

    payload = b"abcd" + struct.pack("<I", MAGIC) + b"efgh"
    rec = write_recordio(tmp_path / "x.rec", {0: payload})
    with open(rec, "rb") as f:
        assert read_record(f, 0) == payload
        with pytest.raises(RecordIOError, match="continuation flag 3"):
            read_record(f, 8 + 4)  # header + the first part's 4 bytes
