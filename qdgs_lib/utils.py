"""Small shared helpers: seeding, devices, atomic writes, run metadata, file errors,
checkpoints (the restricted unpicklers are in :mod:`qdgs_lib.unpickling`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import lzma
import os
import pickle
import platform
import random
import re
import shutil
import struct
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None): CUDA when available, else CPU; anything else as torch reads it,
    refused with a clear message when that device is not usable here."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a device name: use 'auto', 'cpu', 'cuda' "
                         "or 'cuda:<index>'") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU here "
                             f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): "
                             "use device='auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA "
                             "device(s) visible")
    elif dev.type not in ("cpu", "meta"):  # mps, xpu, ...: torch would fail later, less clearly
        backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ValueError(f"device {device!r} asked for, but this torch "
                             f"({torch.__version__}) cannot use it here: use device='auto' "
                             "or 'cpu'")
    return dev


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state as contiguous CPU tensors: what safetensors can write, whatever the
    device and memory format (channels_last) the module was trained in."""
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).contiguous()
            for k, v in module.state_dict().items()}


def save_weights(module: torch.nn.Module, path: str | os.PathLike,
                 metadata: dict[str, str] | None = None) -> Path:
    """Save a module's weights as safetensors (no code in the file), atomically, with
    ``metadata`` (strings) in its header."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(cpu_state_dict(module), str(tmp), metadata=metadata)
    return path


def check_batch_size(batch_size: int) -> None:
    """A whole number >= 1 (0 would loop forever or fail deep inside ``range``)."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; final files get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield an empty temporary folder next to ``path``; on success it replaces ``path``
    (a half-written folder never exists under the final name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp's 0700 would hide the dataset from other users
    try:
        yield tmp
        if path.exists():  # the old folder moves aside first: a failure keeps one of the two
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            old.rmdir()
            path.rename(old)
            try:
                tmp.rename(path)
            except BaseException:
                old.rename(path)
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def check_unit_images(images: torch.Tensor, what: str = "images", tol: float = 1e-3) -> None:
    """Refuse images that are not float tensors in [0, 1] (the library's one convention), the
    usual slips being uint8 / 0-255 images and a generator's [-1, 1] output. Non-finite
    pixels are left to the NaN checks, which say more."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        kind = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"{what} must be float tensors in [0, 1], got {kind}: convert with "
                        "torch.as_tensor(x).float() / 255 for 8-bit images")
    finite = images.detach()[torch.isfinite(images.detach())]
    if finite.numel() == 0:
        return
    lo, hi = finite.aminmax()
    lo, hi = float(lo), float(hi)
    if lo < -tol or hi > 1 + tol:
        raise ValueError(f"{what} must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]: "
                         "divide 0-255 images by 255, map [-1, 1] output with (x + 1) / 2")


def unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) as float in [0, 1]; float images as they are. Image sets stay
    uint8 in memory (a quarter of float32's bytes) and are scaled a batch at a time, on any
    device to the values a CPU's ``x.float() / 255`` gives: a true division (CUDA divides by
    a host scalar as a multiplication by its reciprocal, one bit off for half the bytes)."""
    if images.dtype != torch.uint8:
        return images
    return images.float() / torch.full((), 255.0, device=images.device)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Half precision (autocast's outputs) as float32; float32 and float64 as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, rounded (for saving as image files)."""
    return (images.detach().cpu().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of (B, C, H, W) to ``size`` x ``size`` (no-op if it is)."""
    if images.shape[-2:] == (size, size):
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                           antialias=True, align_corners=False)


def _resize_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in): the 1-D antialiased bilinear resize (``align_corners=False``) as a
    matrix, with torch's weights (aten's ``_compute_indices_min_size_weights_aa``: a
    triangle filter stretched by the scale when shrinking, each row normalised). Made on the
    device from sizes only: nothing is cached, so it traces, compiles and is captured in
    CUDA graphs like any other op."""
    scale = n_in / n_out
    support, inv = (scale, 1 / scale) if scale >= 1 else (1.0, 1.0)
    i = torch.arange(n_out, device=like.device, dtype=like.dtype)[:, None]
    j = torch.arange(n_in, device=like.device, dtype=like.dtype)[None, :]
    center = scale * (i + 0.5)
    lo = (center - support + 0.5).trunc().clamp_min(0)
    hi = (center + support + 0.5).trunc().clamp_max(n_in)
    w = (1 - ((j - center + 0.5) * inv).abs()).clamp_min(0) * ((j >= lo) & (j < hi))
    return w / w.sum(1, keepdim=True)


def _pool_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """(n_out, n_in): 1-D adaptive average pooling as a matrix (output i averages inputs
    floor(i n_in / n_out) to ceil((i + 1) n_in / n_out), aten's windows)."""
    i = torch.arange(n_out, device=like.device)[:, None]
    j = torch.arange(n_in, device=like.device)[None, :]
    inside = (j >= (i * n_in) // n_out) & (j < -((-(i + 1) * n_in) // n_out))
    w = inside.to(like.dtype)
    return w / w.sum(1, keepdim=True)


def adaptive_avg_pool_matmul(images: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(images, size)`` as two matrix products, equal up to float
    rounding: its backward is deterministic on CUDA, where adaptive pooling's adds with
    atomics (the released CLIP crops under ``deterministic``)."""
    return _separable_matmul(images, size, _pool_matrix)


def _separable_matmul(images: torch.Tensor, size: int,
                      matrix: Callable[[int, int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``matrix(h) @ images @ matrix(w).T`` in float32 or float64, also under autocast."""
    h, w = images.shape[-2:]
    with torch.autocast(images.device.type, enabled=False):
        x = images if images.dtype in (torch.float32, torch.float64) else images.float()
        return matrix(h, size, x) @ x @ matrix(w, size, x).T


def resize_square_matmul(images: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`resize_square` as two matrix products (the resize is separable), equal up to
    float rounding, for images that are differentiated through (CLIP's input while scoring):
    its backward is matmuls, deterministic on CUDA, where the antialiased interpolation's
    backward adds with atomics (``_upsample_bilinear2d_aa_backward`` has no deterministic
    CUDA kernel: seeded GPU searches would drift apart). Runs in float32 or float64, also
    under autocast (as the interpolation does); with TF32 matmuls on (``tf32_matmul``,
    ``set_float32_matmul_precision("high")``) the two products round as TF32."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    return _separable_matmul(images, size, _resize_matrix)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`): a write cut off leaves
    the previous file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(table: Any, path: str | os.PathLike, **to_csv: Any) -> Path:
    """A DataFrame as CSV (``to_csv``: pandas' options), atomically: a write cut off leaves
    the previous file, not half of a new one."""
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, **to_csv)
    return path


def versions(device: str | torch.device | None = None) -> dict[str, str]:
    """Versions of the packages that decide a result, and the name of ``device`` (default:
    the current GPU, else "cpu")."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ["torch", "torchvision", "ribs", "open_clip", "numpy", "pandas", "sklearn"]:
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except ImportError:
            out[name] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type != "cuda":
        out["device"] = dev.type
    elif torch.cuda.is_available():   # the run's own GPU (cuda:1 is not the current one)
        out["device"] = torch.cuda.get_device_name(dev)
    else:
        out["device"] = "cpu"
    return out


def _jsonable(value: Any) -> Any:
    """Records (dataclasses, e.g. measures) as dicts of their fields (json calls this again for
    the fields it cannot write); example images by their record (name, count, sha256);
    anything else as its string."""
    from .image_prompts import ImagePrompt  # (it imports this module)
    if isinstance(value, ImagePrompt):
        return value.record()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return str(value)


def write_run_info(outdir: str | os.PathLike, config: dict[str, Any],
                   also: str | os.PathLike | None = None,
                   resumed_at: int | None = None) -> Path:
    """Write ``config.json`` (the run's parameters and package versions) into ``outdir``, and
    the same record to ``also`` (e.g. next to the figures the run makes).

    ``resumed_at``: this session continues a run from that step (iteration, epoch). Where the
    record on disk says otherwise (another device, scoring setting, package version), it is
    kept in the new record's ``earlier_sessions`` (with ``until``: the step from which this
    session's record applies), so the record covers every session the result comes from."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    device = config.get("device")
    try:
        device = torch.device(device) if isinstance(device, str | torch.device) else None
    except RuntimeError:   # a device string of a user's own: name the machine's
        device = None
    record = json.loads(json.dumps({"config": config, "versions": versions(device)},
                                   default=_jsonable))
    path = outdir / "config.json"
    if resumed_at is not None:
        try:
            old = json.loads(path.read_text())
            earlier = list(old.get("earlier_sessions", []))
            old = {"config": old["config"], "versions": old["versions"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            old, earlier = None, []  # no readable record of the earlier session
        if old is not None and old != record:
            earlier.append({**old, "until": resumed_at})
        if earlier:
            record["earlier_sessions"] = earlier
    text = json.dumps(record, indent=2)
    atomic_write_text(path, text)
    if also is not None:
        atomic_write_text(also, text)
    return path


class BadFileError(ValueError):
    """A file that cannot be read as what it should be. The message names the file, what it
    was expected to be, and what to do next."""


class UnsafePickleError(BadFileError, pickle.UnpicklingError):
    """A pickle that asks for a global outside the allow-list (refused before import)."""


# Everything a parser may raise on garbage: truncated pickles (EOFError, UnpicklingError),
# absurd sizes (MemoryError, OverflowError), wrong structure (KeyError, TypeError, ...),
# safetensors' own error, torch's RuntimeError, open_clip's AssertionError.
_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, MemoryError, OverflowError, ValueError,
                 TypeError, KeyError, IndexError, AttributeError, RuntimeError, AssertionError,
                 UnicodeDecodeError, OSError, ImportError, RecursionError, struct.error,
                 zipfile.BadZipFile, zlib.error, lzma.LZMAError)


@contextmanager
def reading(path: str | os.PathLike, what: str, fix: str):
    """Turn any parse failure inside the block into a :class:`BadFileError` that names
    ``path``, says it should be ``what`` and what to do (``fix``)."""
    from safetensors import SafetensorError

    try:
        yield
    except UnsafePickleError as e:  # raised deep in an unpickler, which knows no file name
        if str(path) in str(e):
            raise
        raise UnsafePickleError(f"{path}: {e}") from e
    except (BadFileError, FileNotFoundError, PermissionError, IsADirectoryError,
            torch.OutOfMemoryError):
        raise  # not the file's content: nothing to fall back from
    except (*_PARSE_ERRORS, SafetensorError) as e:
        detail = " ".join(str(e).split())[:240]
        refused = re.search(r"WeightsUnpickler error: (Unsupported global.*?)(?: Please use|\n|$)",
                            str(e))
        if refused:  # torch's advice (weights_only=False) would run the file's code: not it
            detail = (f"its pickle asks for more than tensors and plain data ("
                      f"{refused.group(1).strip()[:160]}); loading it could run code, so it "
                      "is refused")
        raise BadFileError(f"{path}: cannot read it as {what} ({type(e).__name__}"
                           f"{': ' + detail if detail else ''}). {fix}") from e


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tensor_digest(*tensors: torch.Tensor, chunk: int = 1024) -> str:
    """sha256 of tensors' dtypes, shapes and values (C order), read ``chunk`` rows at a time so
    a large image set is never copied whole: the same data gives the same digest whatever its
    memory layout or device."""
    h = hashlib.sha256()
    for t in tensors:
        t = torch.as_tensor(t).detach()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        for part in (t.split(chunk) if t.dim() else [t]):
            part = part.cpu().contiguous()
            h.update((part.view(torch.int16) if part.dtype == torch.bfloat16 else part)
                     .numpy().tobytes())  # (numpy has no bfloat16)
    return h.hexdigest()


def write_weights_record(path: str | os.PathLike, config: dict, **fields: Any) -> None:
    """The ``.json`` beside a weights file the project trains: its ``config``, ``fields``
    (losses, checks), package versions and the sha256 that :func:`check_recorded_sha256`
    compares the file with."""
    atomic_write_text(f"{path}.json", json.dumps(
        {"config": config, **fields, "versions": versions(), "sha256": sha256_file(path)},
        indent=2))


def read_weights_record(path: str | os.PathLike, fix: str) -> dict | None:
    """The ``.json`` record beside a weights file (None if there is none)."""
    record = Path(f"{path}.json")
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadFileError(f"{record} is not a readable weights record ({e}). Delete it (it "
                           f"only records how {Path(path).name} was made) or: {fix}") from e
    if not isinstance(data, dict):
        raise BadFileError(f"{record} is not a weights record (a JSON object was expected). "
                           f"Delete it or: {fix}")
    return data


def check_recorded_sha256(path: str | os.PathLike, fix: str) -> None:
    """Compare a shipped weights file with the sha256 in the ``.json`` written beside it."""
    path = Path(path)
    record = path.with_name(path.name + ".json")
    data = read_weights_record(path, fix)
    if data is None:
        return
    expected = data.get("sha256")
    if expected and sha256_file(path) != expected:
        raise BadFileError(f"{path}: its sha256 differs from the one recorded in {record.name}: "
                           f"the file is corrupted or was replaced. {fix}")


def keep_rows_through(path: str | os.PathLike, column: str, last: int, what: str, fix: str):
    """Keep the rows of the CSV log ``path`` whose ``column`` is at most ``last`` (rows logged
    after the checkpoint a run resumes from), rewritten atomically; returns them. A last line
    without its newline (the run was killed while writing it) is dropped: its cut-off fields
    would read as another row (iteration "2" of a cut "26")."""
    import io

    import pandas as pd

    with reading(path, what, fix):
        text = Path(path).read_text()
        complete = text[:text.rfind("\n") + 1]
        if "\n" not in complete:  # not even the header was written whole: start the log anew
            Path(path).unlink()
            return pd.DataFrame(columns=[column])
        rows = pd.read_csv(io.StringIO(complete))
        rows = rows[rows[column] <= last]
    with atomic_path(path) as tmp:
        rows.to_csv(tmp, index=False)
    return rows


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint before the latest is kept: ``checkpoint.prev.pkl``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def write_checkpoint(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write a checkpoint atomically with ``write(tmp_path)``, keeping the previous one beside
    it (a crash or a corrupted latest file then costs one checkpoint interval, not the run)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write(tmp)
        if path.exists():
            os.replace(path, previous_path(path))


def load_checkpoint_with_fallback(path: str | os.PathLike, load: Callable[[Path], Any],
                                  what: str, rename: bool = True) -> Any | None:
    """``load`` the latest checkpoint, or, when it is missing or unreadable (BadFileError),
    the previous one, with a warning; None when there is neither. The unreadable file is kept
    as ``<name>.unreadable`` for inspection (``rename=False``: left in place, e.g. on all but
    one of several processes)."""
    import warnings

    path = Path(path)
    prev = previous_path(path)
    errors = []
    for candidate in (path, prev):
        if not candidate.exists():
            continue
        try:
            state = load(candidate)
        except BadFileError as e:
            errors.append(e)
            continue
        if errors:
            if rename and path.exists():
                os.replace(path, path.with_name(path.name + ".unreadable"))
            kept = f"kept as {path.name}.unreadable" if rename else "left in place"
            warnings.warn(f"{errors[0]}\nResumed from the previous checkpoint {candidate} "
                          f"instead; the unreadable file is {kept}.", stacklevel=2)
        return state
    if errors:
        raise BadFileError(
            f"no readable {what} checkpoint in {path.parent}: "
            + " | ".join(str(e) for e in errors)
            + f" To start this run over, delete {path.name} and {prev.name} in {path.parent}.")
    return None


def differing_keys(a: dict, b: dict) -> list:
    """The keys, sorted, whose values differ between ``a`` and ``b`` (a key missing from one
    counts as differing)."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def check_tensor_shapes(path: str | os.PathLike, build: Callable[[], torch.nn.Module]) -> None:
    """Build ``build()`` on the meta device (no tensor memory) and compare its tensors' names
    and shapes with the safetensors header of ``path``, before the real network is built:
    widths read from a file's metadata cannot make us allocate tensors its own do not fill (a
    172-byte file claiming an 8192-wide StyleGAN2 took 2.9 GB before failing). The module
    objects still cost memory: callers bound counts (layers, members) by the file first."""
    from safetensors import safe_open

    with torch.device("meta"):
        net = build()
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    with safe_open(str(path), "pt") as f:
        have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if want != have:
        odd = differing_keys(want, have)
        raise BadFileError(f"{path}: its tensors do not match the network its metadata "
                           f"describes ({len(odd)} differ, e.g. {odd[0]}: "
                           f"{have.get(odd[0])} in the file, {want.get(odd[0])} expected)")


class StepCheckpoint:
    """Checkpoint and resume for a training script's step loop.

    Every ``every`` steps the model, optimizer, scheduler, the named ``torch.Generator``s,
    the global torch RNG and a ``random.Random`` go to ``<out>.ckpt`` (atomically, the
    previous one kept beside it); a rerun with the same ``config`` resumes there and ends with
    the weights of an uninterrupted run; a rerun with another config is refused (naming the
    settings that differ). :meth:`done` removes the checkpoints once the weights are written.
    """

    def __init__(self, out: str | os.PathLike, config: dict[str, Any], every: int = 200):
        self.path = Path(f"{out}.ckpt")
        # where the run writes and how often it checkpoints do not change its weights
        self.config = json.dumps({k: v for k, v in config.items()
                                  if k not in ("out", "checkpoint_every")},
                                 sort_keys=True, default=str)
        self.every = max(1, int(every))

    def _state(self, step, model, opt, sched, generators, rng) -> dict[str, Any]:
        return {"step": step, "config": self.config, "model": model.state_dict(),
                "opt": opt.state_dict(), "sched": sched.state_dict() if sched else None,
                "generators": {k: g.get_state() for k, g in generators.items()},
                "torch_rng": torch.get_rng_state(),
                "rng": rng.getstate() if rng is not None else None}

    def resume(self, model, opt, sched=None, generators: dict[str, torch.Generator] | None = None,
               rng: random.Random | None = None) -> int:
        """Restore the latest checkpoint into the objects; the step to continue from (0:
        none)."""
        def load(path: Path):
            with reading(path, "a training-script checkpoint",
                         f"Delete {self.path.name}* to start over."):
                return torch.load(path, map_location="cpu", weights_only=True)

        state = load_checkpoint_with_fallback(self.path, load, "training")
        if state is None:
            return 0
        if state["config"] != self.config:
            have, want = json.loads(state["config"]), json.loads(self.config)
            differ = differing_keys(have, want)
            there, now = [have.get(k) for k in differ], [want.get(k) for k in differ]
            raise ValueError(f"{self.path} was written with other settings ({differ}: {there} "
                             f"there, {now} now): rerun with those, or delete "
                             f"{self.path.name}* to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if sched is not None:
            sched.load_state_dict(state["sched"])
        for k, g in (generators or {}).items():
            g.set_state(state["generators"][k])
        torch.set_rng_state(state["torch_rng"])
        if rng is not None:
            rng.setstate(_as_tuple(state["rng"]))
        print(f"resumed {self.path.name} at step {state['step']}")
        return int(state["step"])

    def step_done(self, step: int, total: int, model, opt, sched=None,
                  generators: dict[str, torch.Generator] | None = None,
                  rng: random.Random | None = None) -> None:
        """Call after step ``step`` (0-based) of ``total``: checkpoints every ``every`` steps
        (not after the last: the weights follow)."""
        if (step + 1) % self.every == 0 and step + 1 < total:
            state = self._state(step + 1, model, opt, sched, generators or {}, rng)
            write_checkpoint(self.path, lambda tmp: torch.save(state, tmp))

    def done(self) -> None:
        """Delete the checkpoint and the previous one: call once the final weights are written."""
        for path in (self.path, previous_path(self.path)):
            path.unlink(missing_ok=True)


def _as_tuple(x: Any) -> Any:
    """``random.Random.setstate`` wants the tuples that ``torch.save`` stored as lists."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x


def compile_available(device: torch.device) -> str | None:
    """None when ``torch.compile`` can build kernels for ``device``, else why not (on a CPU
    its inductor backend compiles C++: it needs a compiler on the PATH)."""
    if device.type != "cpu":
        return None
    from torch._inductor import config
    from torch._inductor.cpp_builder import cpp_compiler_search

    # the compilers inductor itself tries (CXX when set at import, else g++), uncached
    search = tuple(config.cpp.cxx) if isinstance(config.cpp.cxx, list | tuple) \
        else (config.cpp.cxx,)
    try:
        getattr(cpp_compiler_search, "__wrapped__", cpp_compiler_search)(search)
    except Exception:  # noqa: BLE001 - inductor's InvalidCxxCompiler and what leads to it
        names = " or ".join(c for c in search if c)
        return (f"torch.compile on a CPU needs a C++ compiler and {names} does not run "
                "(apt-get install g++, conda install -c conda-forge cxx-compiler, or set "
                "CXX to a compiler before starting Python)")
    return None


def _tf32_flag() -> tuple[str, str | bool]:
    """torch's CUDA matmul TF32 setting: (attribute of ``torch.backends.cuda.matmul``, its
    value for TF32). ``fp32_precision`` where torch has it (2.9+): it reflects all three ways
    of setting TF32, and reading ``allow_tf32`` raises once the newer setting was used."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return "fp32_precision", "tf32"
    return "allow_tf32", True


def tf32_matmul_on() -> bool:
    """Whether CUDA float32 matmuls run as TF32, by any of torch's settings
    (``allow_tf32``, ``set_float32_matmul_precision("high")``, or the newer
    ``torch.backends[.cuda.matmul].fp32_precision = "tf32"``)."""
    name, on = _tf32_flag()
    return getattr(torch.backends.cuda.matmul, name) == on


@contextmanager
def tf32_matmul() -> Iterator[None]:
    """CUDA float32 matmuls in TF32 inside the block; torch's setting as it was after it.
    Through ``fp32_precision`` where torch has it, so that neither the user's later reads of
    ``allow_tf32`` nor of ``fp32_precision`` meet a mix of the two settings."""
    name, on = _tf32_flag()
    was = getattr(torch.backends.cuda.matmul, name)
    setattr(torch.backends.cuda.matmul, name, on)
    try:
        yield
    finally:
        setattr(torch.backends.cuda.matmul, name, was)
