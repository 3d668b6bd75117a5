"""Hostile pickles: files that use only allow-listed globals and still try to run code or
corrupt memory through classes that trust their state. Each must be refused as a bad file."""

import contextlib
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from ribs.archives import GridArchive
from ribs.emitters import GaussianEmitter
from ribs.schedulers import Scheduler

from qdgs_lib.search import load_checkpoint
from qdgs_lib.utils import BadFileError


def _short(s: str) -> bytes:
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def test_array_store_cannot_import_a_module(tmp_path):
    """pyribs' ArrayStore imports the module named in its state: "this" prints the Zen of
    Python, "unittest.__main__" runs unittest's command line."""
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(b"\x80\x04" + _short("ribs.archives._array_store") + _short("ArrayStore")
                     + b"\x93)\x81}" + _short("_xp") + _short("this") + b"sb.")
    sys.modules.pop("this", None)
    with pytest.raises(BadFileError, match="array module 'this'"):
        load_checkpoint(path)
    assert "this" not in sys.modules


def _scheduler_state(rng_bit_generator=None):
    archive = GridArchive(solution_dim=4, dims=[4, 4], ranges=[(-1, 1), (-1, 1)], seed=0)
    emitter = GaussianEmitter(archive, sigma=0.1, x0=np.zeros(4), batch_size=2, seed=0)
    if rng_bit_generator is not None:
        for k, v in list(vars(emitter).items()):
            if isinstance(v, np.random.Generator):
                setattr(emitter, k, np.random.Generator(rng_bit_generator))
    return {"iteration": 1, "seconds": 0.0, "config": "{}", "scorer": {},
            "scheduler": Scheduler(archive, [emitter]), "result_archive": archive}


def test_real_pyribs_state_loads_and_other_bit_generators_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(pickle.dumps(_scheduler_state(), protocol=pickle.HIGHEST_PROTOCOL))
    state = load_checkpoint(path)
    assert state["scheduler"].ask().shape == (2, 4)   # a working scheduler, PCG64 inside
    # MT19937 did not bound its state's "pos" before numpy 2.5: reads outside its key (a
    # crash, or silent out-of-bounds random numbers). Refused by type, forged or not
    mt = np.random.MT19937(0)
    st = mt.state
    st["state"]["pos"] = 10**8
    with contextlib.suppress(ValueError):  # numpy >= 2.5 refuses the forged pos itself
        mt.state = st
    path.write_bytes(pickle.dumps(_scheduler_state(mt), protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(BadFileError, match="MT19937"):
        load_checkpoint(path)


def test_seed_sequence_pool_size_must_match_its_pool(tmp_path):
    seq = np.random.SeedSequence(5)
    reduce = seq.__reduce__()
    entropy, n_spawned, pool, pool_size, spawn_key = reduce[2]

    class Forged:
        def __reduce__(self):
            return (reduce[0], reduce[1], (entropy, n_spawned, pool, 10**6, spawn_key))

    state = _scheduler_state()
    state["scorer"] = {"seq": Forged()}
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(BadFileError, match="pool_size 1000000"):
        load_checkpoint(path)


_FORGED_DTYPE = """
import numpy as np, pickle, struct, sys
d = np.dtype([("a", "O")])
d.__setstate__((3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))  # flags cleared
evil = np.frombuffer(struct.pack("<Q", 0x4141414141414140), dtype=d)[0]
open(sys.argv[1], "wb").write(pickle.dumps(%s, protocol=4))
"""


@pytest.mark.parametrize("kind", ["checkpoint", "bin", "network"])
def test_forged_numpy_dtypes_are_refused_not_dereferenced(tmp_path, kind):
    """A structured dtype whose object field lost its flags makes numpy read 8 bytes of the
    file as an object pointer (a segfault in the loader's own code). Run in a subprocess: the
    old code crashed the interpreter."""
    payload = {"checkpoint": "evil", "bin": '([b"x", b"y"], [evil])',
               "network": '{"G_ema": evil}'}[kind]
    path = tmp_path / f"{kind}.pkl"
    subprocess.run([sys.executable, "-c", _FORGED_DTYPE % payload, str(path)], check=True)
    load = {"checkpoint": "from qdgs_lib.search import load_checkpoint as load",
            "bin": "from qdgs_lib.data.benchmarks import read_bin as load",
            "network": "from qdgs_lib.generators.stylegan2_legacy import read_network_pickle "
                       "as load"}[kind]
    code = textwrap.dedent(f"""
        import sys
        {load}
        from qdgs_lib.utils import BadFileError
        try:
            load(sys.argv[1])
        except BadFileError as e:
            print("refused:", e)
            sys.exit(3)
    """)
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 3, (run.returncode, run.stdout[-500:], run.stderr[-2000:])
    assert "numpy dtype state" in run.stdout


def test_plain_numpy_values_still_load(tmp_path):
    state = _scheduler_state()
    state["scorer"] = {"values": np.arange(5, dtype=np.float32), "object": np.array([1, "a"],
                                                                                   dtype=object),
                       "scalar": np.float64(2.5), "flag": np.bool_(True)}
    path = tmp_path / "checkpoint.pkl"
    path.write_bytes(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    got = load_checkpoint(path)["scorer"]
    assert got["values"].tolist() == [0, 1, 2, 3, 4] and got["object"].tolist() == [1, "a"]
    assert got["scalar"] == 2.5 and got["flag"]


class _ForgedDtype:
    """Pickles as numpy.dtype(spec) with a state of our choosing."""

    def __init__(self, spec, state):
        self.spec, self.state = spec, state

    def __reduce__(self):
        return (np.dtype, (self.spec, False, True), self.state)


def test_dtype_states_other_than_their_own_are_refused():
    """A shrunken item size under a structured dtype's fields read past the buffer (and with
    an object field, forged pointers: a segfault); only a dtype's own state is accepted."""
    import io

    from qdgs_lib.data.benchmarks import BIN_ALLOWED
    from qdgs_lib.unpickling import RestrictedUnpickler
    from qdgs_lib.utils import UnsafePickleError

    def load(obj):
        raw = pickle.dumps(obj, protocol=2)
        return RestrictedUnpickler(io.BytesIO(raw), allowed=BIN_ALLOWED).load()

    spec = [("a", "<f8"), ("b", "<f8")]
    with pytest.raises(UnsafePickleError, match="numpy dtype state"):
        load(_ForgedDtype(spec, (3, "|", None, None, None, 1, 1, np.dtype(spec).flags)))
    with pytest.raises(UnsafePickleError, match="numpy dtype state"):   # plain, wrong size
        load(_ForgedDtype("f8", (3, "<", None, None, None, 1, 1, 0)))
    # numpy's own pickles of plain dtypes and arrays load, byte order and datetimes included
    values = [np.arange(3, dtype=">f4"), np.array(["2020-01-01"], dtype="M8[s]"),
              np.array([1, "a"], dtype=object), np.float64(2.5), np.dtype(">f4")]
    got = load(values)
    assert got[0].tolist() == [0, 1, 2] and got[4] == np.dtype(">f4")
    assert got[1].dtype == np.dtype("M8[s]") and got[2].tolist() == [1, "a"] and got[3] == 2.5
    # a datetime dtype as numpy < 2.3 pickles it (2.2.6 writes an empty metadata dict where
    # 2.4 writes None); any other metadata is refused
    old_numpy = (4, "<", None, None, None, -1, -1, 0, ({}, (b"ms", 2, 1, 1)))
    assert load(_ForgedDtype("m8", old_numpy)) == np.dtype("m8[2ms]")
    with pytest.raises(UnsafePickleError, match="numpy dtype state"):
        load(_ForgedDtype("m8", old_numpy[:8] + (({"k": 1}, (b"ms", 2, 1, 1)),)))


@pytest.mark.parametrize("kind", ["checkpoint", "bin", "network"])
@pytest.mark.parametrize("payload, match", [
    # numpy.ndarray((2**31 - 1,)): 16 GB from 30 bytes
    (b"\x80\x02cnumpy\nndarray\nJ\xff\xff\xff\x7f\x85\x85R.",
     "numpy array of a size the pickle names"),
    # one 1 MB string encoded 100 times into a list: 100 MB from 1 MB
    (b"\x80\x02X\x00\x00\x10\x00" + b"a" * (1 << 20) + b"q\x000](" +
     b"c_codecs\nencode\nh\x00X\x06\x00\x00\x00latin1\x86R" * 100 + b"e.",
     "decodes more bytes than the file holds")])
def test_pickles_that_allocate_more_than_they_hold_are_refused(tmp_path, kind, payload, match):
    from qdgs_lib.data.benchmarks import read_bin
    from qdgs_lib.generators.stylegan2_legacy import read_network_pickle

    load = {"checkpoint": load_checkpoint, "bin": read_bin, "network": read_network_pickle}
    path = tmp_path / f"{kind}.pkl"
    path.write_bytes(payload)
    with pytest.raises(BadFileError, match=match):
        load[kind](path)


class _Payload:
    """Pickles as a call that would create ``marker`` if a loader ran it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _load_offsets(path):
    from qdgs_lib.face_synthesis import load_latent_offsets

    return load_latent_offsets(path, 4, 1)


def _load_training_checkpoint(path):
    from qdgs_lib.train import RecognitionTrainer

    return RecognitionTrainer._read(None, path)  # (reads the file only)


def _load_released_vae(path):
    from qdgs_lib.generators.shapes_vae import load_released_shapes_vae

    return load_released_shapes_vae(path, device="cpu")


@pytest.mark.parametrize("load", [_load_offsets, _load_training_checkpoint, _load_released_vae])
def test_torch_files_from_users_never_run_their_pickles(tmp_path, load):
    """Every loader of a user's torch.save file reads it with weights_only=True: a file whose
    pickle calls a function is refused, and the function never runs."""
    import torch

    marker = tmp_path / "ran"
    torch.save({"offsets": _Payload(marker)}, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(BadFileError, match="loading it could run code, so it is refused") as e:
        load(tmp_path / "evil.pt")
    assert not marker.exists()
    assert "weights_only" not in str(e.value)  # torch's advice to load it anyway is left out


def test_a_script_checkpoint_that_runs_code_is_refused_unrun(tmp_path):
    import torch

    from qdgs_lib.utils import StepCheckpoint

    marker = tmp_path / "ran"
    ckpt = StepCheckpoint(tmp_path / "w", {"steps": 2})
    torch.save({"step": _Payload(marker)}, ckpt.path)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(BadFileError, match="could run code.*delete w.ckpt"):
        ckpt.resume(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert not marker.exists()
