"""Restricted unpickling: pickles are code, so files are read with allow-lists.

:class:`RestrictedUnpickler` resolves only the globals it is given, refusing any other before
it is imported, and checks the states that numpy trusts; :class:`TorchArchiveUnpickler`
rebuilds the tensors of a ``torch.save`` / TorchScript zip archive from its bytes
(:func:`load_torch_archive`). Errors are :class:`~qdgs_lib.utils.UnsafePickleError` (refused)
or parse errors that :func:`~qdgs_lib.utils.reading` turns into a message naming the file.
"""

from __future__ import annotations

import codecs
import os
import pickle
import reprlib
import zipfile
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from .utils import BadFileError, UnsafePickleError


def _check_dtype_state(dtype: np.dtype, state: Any) -> None:
    """numpy's ``dtype.__setstate__`` trusts its state: a file could clear the flags that mark
    an object field (numpy then reads 8 bytes of the file as a pointer) or shrink the item
    size under the fields (reads past the buffer). The state must be the dtype's own, but
    for its byte order: plain dtypes as numpy pickles them, nothing forged."""
    own = dtype.__reduce__()[2]
    # a datetime's unit arrives in its state's metadata: (None, (unit, num, den, events));
    # numpy < 2.3 writes {} for None (an empty metadata dict)
    unit = dtype.kind in "mM" and len(own) == 9 and isinstance(state, tuple) and \
        len(state) == 9 and isinstance(state[8], tuple) and len(state[8]) == 2 and \
        (state[8][0] is None or (type(state[8][0]) is dict and not state[8][0])) and \
        isinstance(state[8][1], tuple) and [type(v) for v in state[8][1]] == [bytes, int, int, int]
    plain = (isinstance(state, tuple) and len(state) == len(own) and state[0] == own[0]
             and state[1] in ("<", ">", "|", "=") and state[2:8] == own[2:8]
             and (state[8:] == own[8:] or unit) and dtype.names is None)
    if not plain:
        raise UnsafePickleError(f"refusing a numpy dtype state {str(state)[:120]} from a "
                                "pickle: only plain dtypes with their own flags are read")


def check_seed_sequence(seq: Any) -> None:
    """A SeedSequence whose ``pool_size`` exceeds its pool would read past it."""
    if (isinstance(seq, np.random.SeedSequence) and seq.pool is not None  # None: not built yet
            and len(seq.pool) != seq.pool_size):
        raise UnsafePickleError(f"refusing a SeedSequence with pool_size {seq.pool_size} for "
                                f"a pool of {len(seq.pool)} words")


MAX_TUPLE_DEPTH, MAX_TUPLE_SIZE = 100, 2_000_000
try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class _PickledNdarray:
    """Stands for ``numpy.ndarray`` in a pickle, where numpy only ever names it as the first
    argument of ``_reconstruct(ndarray, (0,), dtype)`` (the array's data then comes with its
    state, from the file). Called or built directly it would allocate an array of any size
    from a few bytes of file: refused."""

    def __new__(cls, *args, **kwargs):
        raise UnsafePickleError("refusing to build a numpy array of a size the pickle names "
                                "(numpy's own pickles never do: they carry the data)")


def _checked_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _PickledNdarray or shape != (0,):
        what = "ndarray" if subtype is _PickledNdarray else getattr(subtype, "__name__", subtype)
        raise UnsafePickleError(f"refusing numpy's _reconstruct({what!r}, {str(shape)[:40]}, "
                                "...): numpy pickles an array as _reconstruct(ndarray, (0,), "
                                "...) and its state")
    return _np_reconstruct(np.ndarray, (0,), dtype)


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that only resolves an explicit allow-list of globals.

    ``allowed`` holds exact ``"module.name"`` strings. Anything else raises
    :class:`pickle.UnpicklingError` *before* it is imported, so no code from the file runs.
    Dotted names are always refused: protocol 4 resolves ``name`` attribute by attribute, so
    an allowed module's ``__builtins__.exec`` would reach any builtin. No module prefixes
    either, for the same reason: a module's every global includes what it imported.

    It is the pure-Python unpickler, so that BUILD (``obj.__setstate__(state)``) can be
    checked too: an allowed class may trust its state more than a file deserves (numpy
    dtypes and seed sequences are checked here; callers override other classes).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, allowed: Iterable[str] = (),
                 overrides: dict[str, Callable] | None = None, **kwargs):
        super().__init__(file, **kwargs)
        self.allowed = set(allowed)
        self.overrides = overrides or {}
        # bytes that _codecs.encode may make: what the file holds (protocol 2 stores bytes as
        # latin-1 strings, each once); calls on one remembered string could copy it forever
        try:
            here = file.tell()
            self._encode_budget = file.seek(0, os.SEEK_END) - here + (1 << 20)
            file.seek(here)
        except (AttributeError, OSError, ValueError):
            self._encode_budget = 1 << 32
        self._tuples: dict[int, tuple[int, int]] = {}  # id -> (depth, flattened size)
        self._kept: list[tuple] = []  # (their ids stay theirs)

    def _check_tuple(self):
        """Hashing a tuple (as a dict key, a set member) recurses in C: a file could nest one
        a million deep (the interpreter crashes) or share one tuple twice per level (2^n
        work from a few hundred bytes). Both are bounded as each tuple is built."""
        t = self.stack[-1]
        depth = size = 1
        for x in t:
            d, n = self._tuples.get(id(x), (0, 1)) if type(x) is tuple else (0, 1)
            depth, size = max(depth, d + 1), size + n
        if depth > MAX_TUPLE_DEPTH or size > MAX_TUPLE_SIZE:
            raise UnsafePickleError(f"tuples nested {depth} deep or holding {size} items "
                                    f"counted with repeats (limits {MAX_TUPLE_DEPTH}, "
                                    f"{MAX_TUPLE_SIZE}): built to exhaust the reader")
        if t:
            self._tuples[id(t)] = (depth, size)
            self._kept.append(t)

    for _op in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3):
        dispatch[_op[0]] = (lambda load: lambda self: (load(self), self._check_tuple()))(
            pickle._Unpickler.dispatch[_op[0]])
    del _op

    def load(self):
        """Unpickle the file; one cut short raises :class:`pickle.UnpicklingError` starting with
        "truncated" (not EOFError, nor the pure-Python unpickler's own wording)."""
        try:
            return super().load()
        except EOFError as e:
            raise pickle.UnpicklingError("truncated: the pickle ends early") from e
        except pickle.UnpicklingError as e:
            if "exhausted" in str(e):   # the pure-Python unpickler's words for a cut file
                raise pickle.UnpicklingError(f"truncated: {e}") from e
            raise

    def load_build(self):
        """The BUILD opcode (``obj.__setstate__(state)``), checked: a numpy dtype's state must be
        its own (no forged flags or item size), and a SeedSequence must not claim a pool larger than
        it holds."""
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        super().load_build()
        check_seed_sequence(inst)

    dispatch[pickle.BUILD[0]] = load_build

    def _encode(self, obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        out = codecs.encode(obj, encoding, errors)
        self._encode_budget -= len(out)
        if self._encode_budget < 0:
            raise UnsafePickleError("refusing a pickle that decodes more bytes than the file "
                                    "holds (one string encoded again and again)")
        return out

    def find_class(self, module: str, name: str):
        """Resolve the global ``module.name`` only if ``name`` is undotted and the key is in
        ``overrides`` (its replacement returned) or ``allowed``; numpy's ``ndarray`` and
        ``_reconstruct`` and ``codecs.encode`` come back as checked stand-ins. Anything else raises
        :class:`UnsafePickleError` before any import."""
        key = f"{module}.{name}"
        if "." not in name and key in self.overrides:
            return self.overrides[key]
        if "." not in name and key in self.allowed:
            found = super().find_class(module, name)
            # numpy arrays only as numpy pickles them; encoded strings within the file's size
            if found is np.ndarray:
                return _PickledNdarray
            if found is _np_reconstruct:
                return _checked_reconstruct
            if found is codecs.encode:
                return self._encode
            return found
        raise UnsafePickleError(
            f"refusing to load global '{key}' from a pickle: it is not on the allow-list. "
            "The file may be malicious or of an unsupported format."
        )


# a storage class names its element type: read as that dtype (no storage class is touched)
TORCH_STORAGES = {f"torch.{name}Storage": dtype for name, dtype in (
    ("Half", torch.float16), ("Float", torch.float32), ("Double", torch.float64),
    ("BFloat16", torch.bfloat16), ("Long", torch.int64), ("Int", torch.int32),
    ("Short", torch.int16), ("Char", torch.int8), ("Byte", torch.uint8), ("Bool", torch.bool))}


class TorchArchiveUnpickler(RestrictedUnpickler):
    """The pickle of a torch zip archive (``torch.save``'s format since torch 1.6, TorchScript's)
    as data: tensors are rebuilt from the archive's storage bytes, globals resolve as in
    :class:`RestrictedUnpickler` (tensors and ``OrderedDict``, plus ``allowed``)."""

    def __init__(self, file, archive, prefix: str, allowed: Iterable[str] = ()):
        super().__init__(file, allowed={"torch._utils._rebuild_tensor_v2",
                                        "collections.OrderedDict", *allowed},
                         overrides=TORCH_STORAGES)
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def load_build(self):
        """As :meth:`RestrictedUnpickler.load_build`, and BUILD on a tensor or storage is refused
        (torch never writes one; ``Tensor.__setstate__`` would ``set_()`` it to any size)."""
        if isinstance(self.stack[-2], torch.Tensor | torch.storage.TypedStorage |
                      torch.UntypedStorage):  # Tensor.__setstate__ would set_() any size
            raise UnsafePickleError("a pickle that sets a tensor's state (torch never writes "
                                    "that)")
        super().load_build()

    dispatch = dict(RestrictedUnpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid):
        """A storage reference ``("storage", dtype, key, location, numel)`` -> a typed storage of
        the archive's ``data/<key>`` (read once per key), refused unless that entry holds exactly
        ``numel`` values of ``dtype``."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], torch.dtype) and isinstance(pid[2], str)
                and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unsupported persistent id {reprlib.repr(pid)}")
        _, dtype, key, _, numel = pid
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            info = self.archive.getinfo(name)  # (its size checked before a byte is read)
            if info.file_size != numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {reprlib.repr(key)}: {info.file_size} "
                                             f"bytes for {numel} {dtype} values")
            # not resizable, even when empty: a tensor asking for more than the file holds is
            # refused instead of growing the storage (over memory the process freed before)
            untyped = torch.frombuffer(bytearray(self.archive.read(name) or b"\0"),
                                       dtype=torch.uint8).untyped_storage()[:info.file_size]
            self.storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype,
                                                            _internal=True)
        return self.storages[key]


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``constants.pkl``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") for n in zf.namelist())
    except zipfile.BadZipFile:
        return False


def load_torch_archive(path: str | os.PathLike,
                       unpickler: Callable[..., TorchArchiveUnpickler]) -> Any:
    """Unpickle the ``<name>/data.pkl`` of a torch zip archive with ``unpickler(file, archive,
    prefix)``; call it inside :func:`reading`, which explains the errors. Torch stores the
    pickle and the tensors' bytes uncompressed: compressed ones (a few bytes that inflate to
    gigabytes) are refused."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(names) != 1:
            raise BadFileError(f"{path}: no single <name>/data.pkl in the archive")
        prefix = names[0][: -len("data.pkl")]
        packed = [i.filename for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED
                  and (i.filename == names[0] or i.filename.startswith(f"{prefix}data/"))]
        if packed:
            raise BadFileError(f"{path}: compressed entries ({reprlib.repr(packed)}), which "
                               "torch never writes: not read")
        with zf.open(names[0]) as f:
            return unpickler(f, zf, prefix).load()
