"""The QDGS loop on pyribs: CMA-MAEGA (the paper), CMA-MAE, CMA-ME, MAP-Elites, random sampling.

A :class:`QDSearch` owns a pyribs scheduler (or, for ``random``, just the generator's prior),
a *result archive* (a plain elitist GridArchive over the same grid: what the dataset is built
from, and what every algorithm is compared on), a CSV of QD metrics per iteration, and a
checkpoint that lets a killed run resume where it stopped.
"""

from __future__ import annotations

import inspect
import json
import math
import multiprocessing
import numbers
import os
import pickle
import time
import warnings
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ribs.archives import ArrayStore, GridArchive
from ribs.emitters import EvolutionStrategyEmitter, GaussianEmitter, GradientArborescenceEmitter
from ribs.schedulers import Scheduler
from tqdm.auto import tqdm

from .image_prompts import prompt_record
from .measures import grid, ranges
from .profiles import CHOICES, EARLIER, with_earlier
from .scoring import NonFiniteScoresError, PromptScorer, Scores, nonfinite_rows
from .unpickling import RestrictedUnpickler, check_seed_sequence
from .utils import (
    BadFileError,
    UnsafePickleError,
    atomic_path,
    differing_keys,
    keep_rows_through,
    load_checkpoint_with_fallback,
    previous_path,
    reading,
    write_checkpoint,
    write_run_info,
)

ALGORITHMS = ("cma_maega", "cma_mae", "cma_me", "map_elites", "random")
DQD_ALGORITHMS = ("cma_maega",)
CHECKPOINT, METRICS = "checkpoint.pkl", "metrics.csv"  # in a search's folder
X0_CHOICES = CHOICES["x0"]  # SearchConfig.x0
EARLY_RANGE_CHECK = 400  # solutions scored before the ranges are first checked (seconds in)
RELEASED_START_BATCH = 16  # the released find_good_start_latent's draws per scoring call
METRIC_COLUMNS = ["iteration", "evaluations", "seconds", "num_elites", "coverage",
                  "qd_score", "obj_max", "obj_mean"]


@dataclass
class SearchConfig:
    """Parameters of one search (defaults: the paper's CMA-MAEGA settings, except where the
    ``paper`` profile notes the released code's own: ``batch_size`` 3, ``selection_rule``
    "filter", 512 ``x0_samples`` at ``x0_truncation`` 0.7).

    ``batch_size`` is solutions per emitter per ``ask`` (a DQD iteration scores one more per
    emitter: the gradient step's point); ``selection_rule`` is pyribs' choice of CMA-ES
    parents for CMA-MAE(GA): "mu" (the better half) or "filter" (the solutions the archive
    took; pyribs' default, which the released code left in place); ``x0="prior_best"``
    starts the emitters at the best of ``x0_samples`` prior samples, drawn at truncation
    ``x0_truncation`` where set (generators whose ``sample_prior`` takes ``truncation_psi``,
    i.e. StyleGAN2); ``x0="released"`` picks among the same draws as the released code's
    ``find_good_start_latent`` did (see :meth:`QDSearch.start_latent`).

    ``skip_nonfinite``: a solution whose image or scores come out NaN/inf (a generator that
    overflows at rare latents) is left out of both archives and ranked below every scored
    solution (pyribs' "not added"), instead of stopping the search; counted in
    :attr:`QDSearch.skipped`. Off by default: such images usually mean broken weights. The
    gradient step's point of CMA-MAEGA cannot be skipped (its emitter needs the jacobian
    there): its emitter restarts at an elite. An emitter all of whose solutions are skipped
    restarts too (pyribs' flat-batch rule). Under ``selection_rule`` "mu" skipped solutions
    become CMA-ES parents where fewer than ``batch_size // 2`` of a batch scored. The
    ``evaluations`` column counts an iteration's solutions, not the rescoring of restarted
    points. A resume may switch it on or off.
    """

    dims: tuple[int, ...]
    ranges: tuple[tuple[float, float], ...]
    algorithm: str = "cma_maega"
    iterations: int = 1000
    batch_size: int = 4
    num_emitters: int = 1
    sigma0: float = 0.5
    lr: float = 0.5
    archive_learning_rate: float = 0.02
    threshold_min: float = 0.0
    x0: str = "prior_best"
    x0_samples: int = 64
    x0_truncation: float | None = None
    selection_rule: str = "mu"
    seed: int = 0
    checkpoint_every: int = 200
    skip_nonfinite: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm '{self.algorithm}'; choose from {ALGORITHMS}")
        try:
            self.ranges = tuple((lo, hi) for lo, hi in self.ranges)
            self.dims = tuple(self.dims)
        except (TypeError, ValueError):
            raise ValueError(f"dims must be a sequence of cell counts and ranges one (low, high) "
                             f"per measure, e.g. dims=(50, 50), ranges=((-0.1, 0.1), (-0.1, "
                             f"0.1)); got dims={self.dims!r}, ranges={self.ranges!r}") from None
        if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                   for d in self.dims):
            raise ValueError(f"grid dims must be whole numbers of cells, got {self.dims}")
        self.dims = tuple(int(d) for d in self.dims)
        self.ranges = tuple((float(lo), float(hi)) for lo, hi in self.ranges)
        if len(self.dims) != len(self.ranges):
            raise ValueError(f"{len(self.dims)} grid dims but {len(self.ranges)} ranges")
        if not all(np.isfinite(self.ranges).ravel()):
            raise ValueError(f"each range needs finite bounds (the grid divides them into "
                             f"cells), got {self.ranges}")
        if any(lo >= hi for lo, hi in self.ranges):
            raise ValueError(f"each range needs low < high, got {self.ranges}")
        if any(d < 1 for d in self.dims):
            raise ValueError(f"each grid dim needs >= 1 cell, got {self.dims}")
        counts = {"iterations": self.iterations, "batch_size": self.batch_size,
                  "num_emitters": self.num_emitters, "x0_samples": self.x0_samples,
                  "checkpoint_every": self.checkpoint_every, "seed": self.seed}
        if bad := [k for k, v in counts.items()
                   if isinstance(v, bool) or not isinstance(v, numbers.Integral)]:
            raise ValueError(f"{', '.join(bad)} must be whole numbers, got {counts}")
        if bad := [k for k, v in counts.items() if v < (0 if k == "seed" else 1)]:
            need = "; ".join(f"{k} must be >= {0 if k == 'seed' else 1}" for k in bad)
            raise ValueError(f"{need}, got {counts}")
        if self.x0 not in X0_CHOICES:
            raise ValueError(f"x0 must be 'prior_best' (the best of x0_samples prior draws), "
                             f"'released' (the released code's pick among them) or 'zeros', "
                             f"got {self.x0!r}")
        if self.x0 == "released" and self.x0_samples % RELEASED_START_BATCH:
            raise ValueError(f"x0 'released' scores the start draws in whole batches of "
                             f"{RELEASED_START_BATCH}, as the released code did (a smaller last "
                             f"batch would win on its smaller norm): x0_samples must be a "
                             f"multiple of {RELEASED_START_BATCH}, got {self.x0_samples}")
        if self.selection_rule not in ("mu", "filter"):
            raise ValueError(f"selection_rule must be 'mu' (the better half of a batch are "
                             f"CMA-ES's parents) or 'filter' (the solutions the archive took), "
                             f"got {self.selection_rule!r}")
        if self.x0_truncation is not None and not (
                isinstance(self.x0_truncation, numbers.Real) and 0 < self.x0_truncation <= 1):
            raise ValueError(f"x0_truncation must be None (no truncation) or a truncation psi "
                             f"in (0, 1], e.g. 0.7, got {self.x0_truncation!r}")
        if not (0 < self.sigma0 < math.inf and 0 < self.lr < math.inf
                and 0 < self.archive_learning_rate <= 1):
            raise ValueError("sigma0 and lr must be finite and > 0, archive_learning_rate in "
                             f"(0, 1], got {self.sigma0}, {self.lr}, "
                             f"{self.archive_learning_rate}")
        if not isinstance(self.skip_nonfinite, bool):
            raise ValueError(f"skip_nonfinite must be True or False, got {self.skip_nonfinite!r}")
        if not self.threshold_min < math.inf:  # -inf: CMA-ME's plain elitism; NaN: nothing
            raise ValueError(f"threshold_min must be a number or -inf, got {self.threshold_min}")

    @classmethod
    def from_profile(cls, p: dict, algorithm: str, seed: int = 0) -> SearchConfig:
        """The search of a profile section (``shapes`` or ``faces``)."""
        p = with_earlier(p)
        return cls(dims=grid(p), ranges=ranges(p), algorithm=algorithm,
                   iterations=p["iterations"], batch_size=p["batch_size"],
                   num_emitters=p["num_emitters"], sigma0=p["sigma0"], lr=p["lr"],
                   archive_learning_rate=p["archive_learning_rate"],
                   x0=p["x0"], x0_samples=p["x0_samples"], x0_truncation=p["x0_truncation"],
                   selection_rule=p["selection_rule"], seed=seed,
                   checkpoint_every=max(50, p["iterations"] // 10),
                   skip_nonfinite=p["skip_nonfinite"])

    @property
    def evaluations_per_iteration(self) -> int:
        """Solutions evaluated per iteration. ``random`` matches CMA-MAEGA (one gradient
        solution + ``batch_size`` branches per emitter) so equal iterations cost the same, up
        to the ``x0_samples`` prior draws the emitters' start point costs once (64: 0.6% of
        10,000 evaluations), which the ``evaluations`` column leaves out."""
        dqd = self.num_emitters if self.algorithm in (*DQD_ALGORITHMS, "random") else 0
        return dqd + self.num_emitters * self.batch_size


def make_result_archive(solution_dim: int, cfg: SearchConfig) -> GridArchive:
    """The plain elitist archive every algorithm fills (what datasets are made from)."""
    return GridArchive(solution_dim=solution_dim, dims=cfg.dims, ranges=cfg.ranges,
                       seed=cfg.seed)


def make_scheduler(solution_dim: int, cfg: SearchConfig, x0: np.ndarray,
                   result_archive: GridArchive) -> Scheduler:
    """Archive + emitters + scheduler for ``cfg.algorithm`` (not for ``random``)."""
    annealing = cfg.algorithm in ("cma_maega", "cma_mae")
    archive = GridArchive(
        solution_dim=solution_dim, dims=cfg.dims, ranges=cfg.ranges, seed=cfg.seed,
        **({"learning_rate": cfg.archive_learning_rate, "threshold_min": cfg.threshold_min}
           if annealing else {}))
    seeds = [cfg.seed * 1000 + i for i in range(cfg.num_emitters)]
    if cfg.algorithm == "cma_maega":
        emitters = [GradientArborescenceEmitter(
            archive, x0=x0, sigma0=cfg.sigma0, lr=cfg.lr, ranker="imp", grad_opt="adam",
            selection_rule=cfg.selection_rule, restart_rule="basic", batch_size=cfg.batch_size,
            seed=s)
            for s in seeds]
    elif cfg.algorithm == "cma_mae":
        emitters = [EvolutionStrategyEmitter(
            archive, x0=x0, sigma0=cfg.sigma0, ranker="imp", selection_rule=cfg.selection_rule,
            restart_rule="basic", batch_size=cfg.batch_size, seed=s) for s in seeds]
    elif cfg.algorithm == "cma_me":
        emitters = [EvolutionStrategyEmitter(
            archive, x0=x0, sigma0=cfg.sigma0, ranker="2imp", selection_rule="filter",
            restart_rule="no_improvement", batch_size=cfg.batch_size, seed=s) for s in seeds]
    elif cfg.algorithm == "map_elites":
        emitters = [GaussianEmitter(archive, sigma=cfg.sigma0, x0=x0,
                                    batch_size=cfg.batch_size, seed=s) for s in seeds]
    else:
        raise ValueError(f"no scheduler for algorithm '{cfg.algorithm}'")
    return Scheduler(archive, emitters, result_archive=result_archive)


# Checkpoints are pickles of pyribs objects; load them with an exact allow-list (the classes
# that every algorithm's checkpoint holds, collected by loading them), never plain pickle.
_CKPT_GLOBALS = {
    f"numpy{core}.{name}" for core in ("._core", ".core")
    for name in ("multiarray.scalar", "multiarray._reconstruct", "numeric._frombuffer")
} | {f"numpy.{t}" for t in ("dtype", "ndarray", "int32", "int64", "float32", "float64",
                            "bool_", "uint8", "uint32", "uint64")} | {
    "collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.slice",
    "builtins.complex", "_codecs.encode", "copyreg._reconstructor", "builtins.object"} | {
    "numpy.random._pcg64.PCG64", "numpy.random.bit_generator.SeedSequence",
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    "ribs.archives._archive_stats.ArchiveStats",
    "ribs.archives._grid_archive.GridArchive", "ribs.schedulers._scheduler.Scheduler",
    "ribs.emitters._evolution_strategy_emitter.EvolutionStrategyEmitter",
    "ribs.emitters._gaussian_emitter.GaussianEmitter",
    "ribs.emitters._gradient_arborescence_emitter.GradientArborescenceEmitter",
    "ribs.emitters.opt._adam_opt.AdamOpt", "ribs.emitters.opt._cma_es.CMAEvolutionStrategy",
    "ribs.emitters.opt._cma_es.DecompMatrix", "ribs.emitters.rankers.ImprovementRanker",
    "ribs.emitters.rankers.TwoStageImprovementRanker", "qdgs_lib.search._compact_array_store"}


class _CheckedArrayStore(ArrayStore):
    """pyribs' ArrayStore restores its array module with ``importlib.import_module`` of a
    name in the file, which would import (run) any module: only numpy's is accepted."""

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("_xp") not in _ARRAY_MODULES:
            xp = state.get("_xp") if isinstance(state, dict) else state
            raise UnsafePickleError(f"refusing an ArrayStore with array module {xp!r}: a "
                                    f"search checkpoint stores one of {sorted(_ARRAY_MODULES)}")
        ArrayStore.__setstate__(self, state)
        self.__class__ = ArrayStore


_ARRAY_MODULES = {"array_api_compat.numpy", "numpy"}


class _CompactPickler(pickle.Pickler):
    """Writes pyribs' ArrayStores with their occupied rows only: a store holds every cell's
    row (a paper-scale w+ archive: 156,250 x 7,168 float64 = 9 GB, two of them), while a
    search has filled a fraction of them. :class:`_CompactArrayStore` puts the rows back."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is not ArrayStore:
            return NotImplemented
        state = obj.__getstate__()
        rows = np.asarray(obj.occupied_list, dtype=np.int64)
        fields = {name: np.ascontiguousarray(arr[rows]) for name, arr in state["_fields"].items()}
        return _compact_array_store, (), {**state, "_fields": fields, "_compact_rows": rows}


_MAX_ROW_ELEMENTS = 1 << 22  # a field's row: a solution (StyleGAN2-1024 w+: 18 x 512) or less


def _compact_array_store() -> _CompactArrayStore:
    return _CompactArrayStore.__new__(_CompactArrayStore)


class _CompactArrayStore(_CheckedArrayStore):
    """An ArrayStore written by :class:`_CompactPickler`: its rows are checked against the
    store's own occupancy, then spread back over the full arrays (other cells: zeros)."""

    def __setstate__(self, state: dict) -> None:
        try:
            rows, props, fields = state.pop("_compact_rows"), state["_props"], state["_fields"]
            capacity, n = int(props["capacity"]), int(props["n_occupied"])
            occupied, listed = props["occupied"], props["occupied_list"]
            # the sizes it will allocate come from arrays the file holds in full (capacity
            # flags) and from numeric rows of a bounded width: no object or void fields,
            # whose zeros would be written out, and no rows wider than any archive's
            ok = (isinstance(occupied, np.ndarray) and occupied.dtype == bool
                  and isinstance(listed, np.ndarray) and listed.dtype.kind in "iu"
                  and occupied.shape == listed.shape == (capacity,) and 0 <= n <= capacity
                  and int(occupied.sum()) == n
                  and isinstance(rows, np.ndarray) and rows.dtype == np.int64
                  and rows.shape == (n,) and np.array_equal(rows, listed[:n])
                  and (n == 0 or 0 <= rows.min() and rows.max() < capacity)
                  and len(np.unique(rows)) == n and bool(occupied[rows].all())
                  and isinstance(fields, dict)
                  and all(isinstance(a, np.ndarray) and len(a) == n and a.dtype.kind in "fiub"
                          and math.prod(a.shape[1:]) <= _MAX_ROW_ELEMENTS
                          for a in fields.values()))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise UnsafePickleError(f"a malformed compact ArrayStore: {e}") from e
        if not ok:
            raise UnsafePickleError("a compact ArrayStore whose rows do not match its "
                                    "occupied cells, or whose fields are not numeric rows")
        full = {}
        try:
            for name, arr in fields.items():
                full[name] = np.zeros((capacity, *arr.shape[1:]), dtype=arr.dtype)
                full[name][rows] = arr
        except MemoryError as e:
            raise UnsafePickleError(f"a compact ArrayStore too large to rebuild ({capacity} "
                                    f"cells)") from e
        _CheckedArrayStore.__setstate__(self, {**state, "_fields": full})


def _pcg64(bit_generator: Any = "PCG64") -> np.random.PCG64:
    """numpy's bit-generator constructor for checkpoints: PCG64 only (pyribs' generators). The
    others' states are not bounds-checked (an MT19937 ``pos`` reads outside its state)."""
    if bit_generator not in ("PCG64", np.random.PCG64):
        raise UnsafePickleError(f"refusing bit generator {bit_generator!r} in a search "
                                "checkpoint: only PCG64")
    return np.random.PCG64()


def _generator(bit_generator: Any = "PCG64", bit_generator_ctor: Any = None) -> np.random.Generator:
    if not isinstance(bit_generator, np.random.PCG64):
        bit_generator = _pcg64(bit_generator)   # a file's own "ctor" is never called
    return np.random.Generator(bit_generator)


def _seed_sequence(*args: Any) -> np.random.SeedSequence:
    from numpy.random.bit_generator import __pyx_unpickle_SeedSequence as unpickle

    seq = unpickle(*args)
    check_seed_sequence(seq)
    return seq


_CKPT_OVERRIDES = {
    "ribs.archives._array_store.ArrayStore": _CheckedArrayStore,
    "numpy.random._pickle.__bit_generator_ctor": _pcg64,
    "numpy.random._pickle.__generator_ctor": _generator,
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence": _seed_sequence,
}
CHECKPOINT_KEYS = {"iteration", "seconds", "config", "scheduler", "result_archive", "scorer"}


def load_checkpoint(path: str | Path) -> dict:
    """Load a search checkpoint with a restricted unpickler (pyribs/numpy objects only; the
    classes that trust their state are checked)."""
    with reading(path, "a qdgs search checkpoint", "See the message above for what to delete."):
        with open(path, "rb") as f:
            state = RestrictedUnpickler(f, allowed=_CKPT_GLOBALS,
                                        overrides=_CKPT_OVERRIDES).load()
    if not isinstance(state, dict):
        raise BadFileError(f"{path} is not a qdgs search checkpoint (it holds a "
                           f"{type(state).__name__}, not a dict).")
    if not CHECKPOINT_KEYS <= set(state):
        raise BadFileError(f"{path} is not a qdgs search checkpoint (missing "
                           f"{sorted(CHECKPOINT_KEYS - set(state))}).")
    return state


def _unnamed(record: Any) -> Any:
    """A prompt record without example sets' names (:meth:`ImagePrompt.record`): a renamed
    folder, or the same files given as a list, are the same images."""
    if isinstance(record, dict) and {"sha256", "count"} <= set(record):
        return {k: v for k, v in record.items() if k != "images"}
    if isinstance(record, list):
        return [_unnamed(r) for r in record]
    return record


def _drop_earlier(stored: dict, mine: dict) -> None:
    """Leave out of ``mine`` the keys a file written before them lacks, where this run keeps
    their earlier value (:data:`~qdgs_lib.profiles.EARLIER`)."""
    for key, before in EARLIER.items():
        if key in mine and key not in stored and mine[key] == before:
            mine.pop(key)


NONFINITE_RESTARTS = 10  # restarts at elites for a gradient point that scores NaN/inf


def _put(a: np.ndarray | None, rows: np.ndarray, b: np.ndarray | None) -> np.ndarray | None:
    """``a`` with ``rows`` replaced by ``b``'s rows (a copy)."""
    if a is None:
        return None
    a = a.copy()
    a[rows] = b
    return a


def _restart_at_elite(emitter: GradientArborescenceEmitter) -> None:
    """pyribs' own restart of a GradientArborescenceEmitter (the last lines of its ``tell``,
    ribs 0.12): the gradient point moves to a random elite (the archive's seeded draw), the
    coefficients' CMA-ES and the ranker start afresh."""
    emitter._grad_opt.reset(emitter.archive.sample_elites(1)["solution"][0])
    emitter._opt.reset(np.zeros(emitter._num_coefficients))
    emitter._ranker.reset(emitter, emitter.archive)
    emitter._restarts += 1


def _tell_skipping(scheduler: Scheduler, objective: np.ndarray, measures: np.ndarray,
                   bad: np.ndarray) -> None:
    """``scheduler.tell`` with the ``bad`` rows kept out of both archives: pyribs (pinned)
    adds a batch to them in ``Scheduler._add_to_archives``; for this call that step adds the
    other rows and reports the bad ones as not added (status 0), with an improvement one ulp
    below the lowest of their emitter's scored rows (well below a single scored row), so each
    emitter ranks them last and its CMA-ES stop check ("fitness too flat": best - worst <
    1e-12, for two rows or more) decides as on its scored rows alone (CMA-ME's "2imp" ranks
    by status first, where a skipped row's 0 stays); an emitter all of whose rows were
    skipped sees a flat batch and restarts at an elite, as pyribs restarts a stalled one.
    Their objective and measures reach the emitters as placeholders (0 and the grid's lower
    corner), which their rankers ("imp", "2imp") and the Gaussian emitter never read."""
    if not bad.any():
        scheduler.tell(objective, measures)
        return
    add, ok = scheduler._add_to_archives, ~bad
    sizes = [e.batch_size for e in scheduler.emitters]
    if sum(sizes) != len(bad):
        raise RuntimeError(f"{len(bad)} solutions told for emitters of batch sizes {sizes}")
    ends = np.cumsum(sizes)

    def add_the_finite(data: dict) -> dict:
        kept = add({k: None if v is None else v[ok] for k, v in data.items()}) if ok.any() \
            else {"status": np.zeros(0, np.int32), "value": np.zeros(0)}
        if set(kept) != {"status", "value"}:
            raise RuntimeError(f"pyribs' archive reported {sorted(kept)}, where skipping "
                               "expects status and value: skip_nonfinite needs ribs 0.12")
        info = {"status": np.zeros(len(bad), np.int32), "value": np.zeros(len(bad))}
        for name, arr in kept.items():
            info[name][ok] = arr
        for start, end in zip(ends - sizes, ends, strict=True):
            mine = slice(start, end)
            scored = info["value"][mine][ok[mine]]
            if len(scored) > 1:  # flat on the scored rows <=> flat with these
                info["value"][mine][bad[mine]] = np.nextafter(scored.min(), -np.inf)
            elif len(scored):  # pyribs judges no flatness of one row: never flat
                info["value"][mine][bad[mine]] = scored[0] - max(1.0, abs(scored[0]))
        return info

    scheduler._add_to_archives = add_the_finite  # this instance, this call (never pickled)
    try:
        scheduler.tell(np.where(bad, 0.0, objective),
                       np.where(bad[:, None], scheduler.archive.lower_bounds, measures))
    finally:
        del scheduler._add_to_archives


def _csv_field(v) -> str:
    """One value as ``DataFrame.to_csv`` writes it: NaN empty, floats in their shortest repr
    (numpy scalars in their own precision), integers plain. pyribs' stats give some values as
    0-d arrays (coverage, obj_mean): their scalar is written."""
    if isinstance(v, np.ndarray):
        if v.ndim != 0:
            raise ValueError(f"a metrics field must be a scalar, got an array of shape {v.shape}")
        v = v[()]
    if isinstance(v, float | np.floating):
        return "" if np.isnan(v) else str(v)
    return str(int(v))


class QDSearch:
    """One quality-diversity search run in ``outdir``.

    Files: ``config.json`` (parameters + versions), ``metrics.csv`` (one row per iteration),
    ``checkpoint.pkl`` (resume state), ``archive.parquet`` (the result archive at the end).
    Calling :meth:`run` again on the same ``outdir`` resumes from the last checkpoint.
    """

    def __init__(self, scorer: PromptScorer, config: SearchConfig, outdir: str | Path):
        if len(config.dims) != scorer.num_measures:
            raise ValueError(f"the archive has {len(config.dims)} dims but the scorer "
                             f"{scorer.num_measures} measures")
        if config.algorithm in DQD_ALGORITHMS and not getattr(scorer.generator,
                                                              "differentiable", True):
            raise ValueError(
                f"{config.algorithm} follows the gradients of the scores through the "
                f"generator, and {getattr(scorer.generator, 'name', 'this generator')} has "
                "none (differentiable=False): use algorithm 'cma_mae' (CMA-MAEGA's archive "
                "and ranking, without gradients), 'cma_me', 'map_elites' or 'random'")
        self.scorer = scorer
        self.cfg = config
        self.outdir = Path(outdir)
        self.iteration = 0
        self.scheduler: Scheduler | None = None
        self.result_archive = make_result_archive(scorer.solution_dim, config)
        self.seconds = 0.0
        # solutions scored by this process, and per measure those outside its range
        self._scored, self._outside = 0, np.zeros(len(config.dims), dtype=np.int64)
        self._ranges_warned = self._skip_warned = False
        self.skipped = 0  # solutions left out for NaN/inf scores (skip_nonfinite), whole run

    @property
    def checkpoint_path(self) -> Path:
        """``outdir/checkpoint.pkl``: the latest checkpoint (the one before it is kept beside it as
        ``checkpoint.prev.pkl``)."""
        return self.outdir / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        """``outdir/metrics.csv``: one row per iteration (evaluations, seconds, elites, coverage, QD
        score, objective max and mean)."""
        return self.outdir / METRICS

    def _config_dict(self) -> dict:
        return {**asdict(self.cfg),  # (example images by name, count and sha256)
                "objective_prompts": prompt_record(self.scorer.objective_prompts),
                "measure_prompts": prompt_record(self.scorer.measure_prompts),
                "objective_weights": self.scorer.weights,
                "generator": getattr(self.scorer.generator, "name",
                                     type(self.scorer.generator).__name__),
                "clip": self.scorer.clip.name, "weights_sha256": self.scorer.weights_sha256(),
                "device": str(self.scorer.clip.device),
                # memory length, the scorer's seed, CLIP cutouts, generator noise
                "scorer": self.scorer.settings(),
                # half precision moves scores by more than rounding: a resume must match it
                "autocast": self.scorer.autocast,
                "scoring": {"jacobian_mode": self._jacobian_mode(),
                            "cuda_graphs": self.scorer.cuda_graphs,
                            "tf32_matmul": self.scorer.tf32_matmul,
                            "compile_static": self.scorer.compile_static,
                            "deterministic": self.scorer.deterministic}}

    def _jacobian_mode(self) -> str:
        """The scorer's resolved jacobian mode, or its setting where that is invalid (a
        search that takes no jacobians never trips over it)."""
        try:
            return self.scorer._resolved_mode()
        except ValueError:
            return str(self.scorer.jacobian_mode)

    def start_latent(self) -> np.ndarray:
        """The emitters' start: zeros, or one of ``x0_samples`` prior draws.

        ``prior_best``: the draw with the best objective (among equals, the smallest loss).
        ``released``: as the released ``find_good_start_latent`` picks: the draws scored in
        batches of 16 (:data:`RELEASED_START_BATCH`), each batch's latent-norm penalty on the
        norm of the whole batch (``torch.norm`` without ``dim``: one number per batch), the
        smallest loss of each batch, then the smallest of those; each batch's call may add an
        embedding to the uniqueness memory, which the search then starts with.
        """
        if self.cfg.x0 == "zeros":
            return np.zeros(self.scorer.solution_dim)
        if self.cfg.x0 not in X0_CHOICES:
            raise ValueError(f"x0 must be one of {X0_CHOICES}, got {self.cfg.x0!r}")
        generator, psi = self.scorer.generator, self.cfg.x0_truncation
        if psi is None:
            z = generator.sample_prior(self.cfg.x0_samples, seed=self.cfg.seed)
        elif "truncation_psi" in inspect.signature(generator.sample_prior).parameters:
            z = generator.sample_prior(self.cfg.x0_samples, seed=self.cfg.seed,
                                       truncation_psi=psi)
        else:
            raise ValueError(f"x0_truncation={psi} needs a generator whose sample_prior takes "
                             f"truncation_psi (StyleGAN2); {type(generator).__name__}'s does "
                             f"not: set x0_truncation to None")
        if self.cfg.x0 == "released":
            return self._released_start(z.cpu().numpy())
        scores = self.scorer.evaluate(z.cpu().numpy(), update_memory=False,
                                      **self._skipping)
        bad = nonfinite_rows(scores)  # (only with skip_nonfinite)
        self._check_start(bad.all(), len(z))
        # the best objective; among equals, the smallest loss (far from the prior every
        # objective can underflow to 0, e.g. under a tight latent-norm penalty)
        objective = np.where(bad, -np.inf, scores.objective)
        best = np.flatnonzero(objective == objective.max())
        if scores.loss is not None and len(best) > 1:
            best = best[[int(np.argmin(scores.loss[best]))]]
        return z[int(best[0])].cpu().numpy().astype(np.float64)

    def _released_start(self, z: np.ndarray) -> np.ndarray:
        best, best_loss = None, np.inf
        for i in range(0, len(z), RELEASED_START_BATCH):
            batch = z[i:i + RELEASED_START_BATCH]
            s = self.scorer.evaluate(batch, whole_batch_norm=True,
                                     **self._skipping)
            loss = np.where(nonfinite_rows(s), np.inf, s.loss)  # (skip_nonfinite)
            j = int(np.argmin(loss))  # the first of equals, as torch.argmin
            if best is None or loss[j] < best_loss:
                best, best_loss = batch[j], loss[j]
        self._check_start(best_loss == np.inf, len(z))
        return best.astype(np.float64)

    @staticmethod
    def _check_start(none_scored: bool, n: int) -> None:
        """With ``skip_nonfinite``, the start draws may hold NaN/inf: some must score."""
        if none_scored:
            raise NonFiniteScoresError(
                f"all {n} prior draws for the emitters' start scored NaN/inf (skip_nonfinite "
                "skips such draws, but none is left): the generator fails on ordinary "
                "latents; check its weights and numerics", np.ones(n, bool))

    # --- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Pickle the search's state (iteration, seconds, config, scheduler, result archive, scorer
        state) to :attr:`checkpoint_path` atomically, keeping the previous checkpoint beside it;
        archive stores are written with their occupied rows only."""
        state = {"iteration": self.iteration, "seconds": self.seconds,
                 "config": json.dumps(self._config_dict(), sort_keys=True, default=str),
                 "scheduler": self.scheduler, "result_archive": self.result_archive,
                 "scorer": self.scorer.state_dict(), "skipped": self.skipped}
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                _CompactPickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(state)

        write_checkpoint(self.checkpoint_path, write)

    def _try_resume(self) -> bool:
        state = load_checkpoint_with_fallback(self.checkpoint_path, load_checkpoint, "search")
        if state is None:
            return False
        stored = json.loads(state["config"])
        mine = json.loads(json.dumps(self._config_dict(), sort_keys=True, default=str))
        if "weights_sha256" not in stored:  # checkpoints written before weights were recorded
            mine.pop("weights_sha256")
        elif stored["weights_sha256"] != mine["weights_sha256"] and stored["weights_sha256"] \
                == self.scorer.weights_sha256(defaults=False):  # recorded before a wrapped
            mine["weights_sha256"] = stored["weights_sha256"]  # function's defaults counted
        if "autocast" not in stored and mine["autocast"] is None:  # written before autocast
            mine.pop("autocast")
        if "scorer" not in stored:  # written before the scorer's settings were recorded
            mine.pop("scorer")
        else:
            _drop_earlier(stored["scorer"], mine["scorer"])
        _drop_earlier(stored, mine)
        for record in (stored, mine):  # example images count by their pixels, not their name
            for key in ("objective_prompts", "measure_prompts"):
                if key in record:
                    record[key] = _unnamed(record[key])
        # recorded, but rounding-level (a run may resume with them switched, e.g. on another
        # device), or no change to a run that met no NaN (skip_nonfinite)
        for key in ("scoring", "device", "skip_nonfinite"):
            stored.pop(key, None)
            mine.pop(key, None)
        # a run may be extended (more iterations: the same as one longer run, since nothing
        # in the search depends on the total) or checkpoint at another pace
        asked = {k: (stored.pop(k, None), mine.pop(k)) for k in ("iterations", "checkpoint_every")}
        if stored != mine:
            differ = differing_keys(stored, mine)
            gloss = "; weights_sha256: other generator or CLIP weights (or CLIP's " \
                "precision)" if "weights_sha256" in differ else ""
            if {"objective_prompts", "measure_prompts"} & set(differ):
                gloss += ("; prompts: other text, or other example images (compared by count "
                          "and the sha256 of their pixels)")
            if "scorer" in differ and stored["scorer"].get("clip_precision", "float32") != \
                    mine["scorer"].get("clip_precision", "float32"):
                gloss += ("; clip_precision: CLIP in float16 or float32 ('released' is "
                          "float16 on CUDA only): to resume on another kind of device, set "
                          "clip_precision to what the run used")
            raise ValueError(
                f"{self.checkpoint_path} belongs to a run with different settings "
                f"({', '.join(differ)}{gloss}). "
                f"Use a new output folder, or delete {CHECKPOINT} and its previous copy "
                f"{previous_path(self.checkpoint_path).name} in {self.outdir} to start over.")
        if state["iteration"] > self.cfg.iterations:
            raise ValueError(
                f"{self.checkpoint_path} is at iteration {state['iteration']}, past the "
                f"{self.cfg.iterations} iterations asked: ask for at least "
                f"{state['iteration']} to reload it, or use a new output folder for a "
                "shorter run")
        before = asked["iterations"][0]
        if before is not None and before != self.cfg.iterations:
            print(f"{self.outdir.name}: the run was asked for {before} iterations, now "
                  f"{self.cfg.iterations}; continuing from iteration {state['iteration']}")
        # what it now runs with (iterations, device, scoring, versions), earlier sessions kept
        write_run_info(self.outdir, self._config_dict(), resumed_at=state["iteration"])
        self.iteration = state["iteration"]
        self.seconds = state["seconds"]
        self.scheduler = state["scheduler"]
        self.result_archive = state["result_archive"]
        self.skipped = int(state.get("skipped", 0))  # (not in checkpoints before it)
        self.scorer.load_state_dict(state["scorer"])
        # Drop metric rows logged after the checkpoint: they are recomputed now.
        df = pd.DataFrame(columns=METRIC_COLUMNS)
        if self.metrics_path.exists():
            df = keep_rows_through(self.metrics_path, "iteration", self.iteration,
                                   "the search's metrics (CSV)",
                                   f"Delete {self.metrics_path}: the checkpoint holds the "
                                   "search; only the curve's earlier rows are lost.")
        if len(df) < self.iteration:
            warnings.warn(f"{self.metrics_path} has {len(df)} rows for the checkpoint's "
                          f"{self.iteration} iterations (deleted or cut?): the curves lack the "
                          "missing iterations", stacklevel=3)
        return True

    # --- the loop --------------------------------------------------------------------------
    def _step(self) -> None:
        cfg, scorer = self.cfg, self.scorer
        if cfg.algorithm == "random":
            n = cfg.evaluations_per_iteration
            z = scorer.generator.sample_prior(n, seed=cfg.seed * 1_000_003 + self.iteration)
            z = z.cpu().numpy().astype(np.float64)
            s = scorer.evaluate(z, **self._skipping)
            ok = ~self._skip(z, s)
            self._count_outside(s.measures[ok])
            if ok.any():
                self.result_archive.add(z[ok], s.objective[ok], s.measures[ok])
            return
        if cfg.algorithm in DQD_ALGORITHMS:
            sols = self.scheduler.ask_dqd()
            s = scorer.evaluate(sols, jacobian=True, **self._skipping)
            bad = self._skip(sols, s)
            if bad.any():
                s = self._restart_nonfinite(sols, s, bad)
            self._count_outside(s.measures)
            self.scheduler.tell_dqd(s.objective, s.measures, s.jacobian)
        sols = self.scheduler.ask()
        s = scorer.evaluate(sols, **self._skipping)
        bad = self._skip(sols, s)
        self._count_outside(s.measures[~bad])
        try:
            _tell_skipping(self.scheduler, s.objective, s.measures, bad)
        except IndexError as e:  # pyribs restarts an emitter at an elite, and there is none
            if not self.scheduler.archive.empty:
                raise
            best = f"{s.objective[~bad].max():.3g}" if (~bad).any() else "none scored"
            if self.skipped:
                raise ValueError(
                    f"iteration {self.iteration}: an emitter restarted while no solution had "
                    f"entered the archive: {self.skipped} solutions so far scored NaN/inf "
                    f"and were skipped (skip_nonfinite), the others did not enter (this "
                    f"batch's best {best}). The generator fails where the search goes: keep "
                    "the search nearer the prior (a larger latent-norm weight, smaller sigma0 "
                    "or lr), or check its weights") from e
            raise ValueError(
                f"iteration {self.iteration}: an emitter restarted while no solution had "
                f"entered the archive (every objective so far <= threshold_min "
                f"{cfg.threshold_min}; this batch's best {best}). "
                + ("The objective is floored at 0, so such scores are all equal and the "
                   "emitter restarts: check objective_weights and latent_norm_scale (a "
                   "latent-norm penalty far above the prompt gap zeroes every score), start "
                   "nearer the prior, or rank them with objective_floor off"
                   if scorer.objective_floor else
                   "Check objective_weights and latent_norm_scale, or start nearer the "
                   "prior") ) from e

    @property
    def _skipping(self) -> dict:
        """The scorer's argument for ``skip_nonfinite`` (none without it: a scorer whose
        ``evaluate`` a user wrapped keeps its earlier calls)."""
        return {"allow_nonfinite": True} if self.cfg.skip_nonfinite else {}

    def _restart_nonfinite(self, sols: np.ndarray, s: Scores, bad: np.ndarray) -> Scores:
        """Gradient-step points that scored NaN/inf (``skip_nonfinite``): their emitters need
        a jacobian there, so each restarts at a random elite, as pyribs restarts a stalled
        emitter, and its new point is scored (up to :data:`NONFINITE_RESTARTS` times).
        ``sols`` is the scheduler's array of points (``bad``: the failed ones): the new ones
        are written into it."""
        emitters = self.scheduler.emitters
        if len(sols) != len(emitters):  # GradientArborescenceEmitter: one point each
            raise RuntimeError(f"{len(sols)} gradient points for {len(emitters)} emitters")
        for _ in range(NONFINITE_RESTARTS):
            if self.scheduler.archive.empty:
                break
            rows = np.flatnonzero(bad)
            for i in rows:
                _restart_at_elite(emitters[i])
                sols[i] = emitters[i].ask_dqd()[0]
            # (the memory took its one embedding of this call's batch already)
            again = self.scorer.evaluate(sols[rows], jacobian=True, update_memory=False,
                                         allow_nonfinite=True)
            s = Scores(**{f.name: _put(getattr(s, f.name), rows, getattr(again, f.name))
                          for f in fields(Scores)})
            bad = np.zeros(len(sols), bool)
            bad[rows] = self._skip(sols[rows], again)
            if not bad.any():
                return s
        raise NonFiniteScoresError(
            f"iteration {self.iteration}: {int(bad.sum())} of CMA-MAEGA's gradient-step points "
            "scored NaN/inf" + (" before any solution entered the archive (no elite to "
                                "restart at)" if self.scheduler.archive.empty else
                                f", also after {NONFINITE_RESTARTS} restarts at elites") +
            ": skip_nonfinite cannot skip them (the emitter needs their jacobian). Keep the "
            "search nearer the prior (a larger latent-norm weight, smaller sigma0 or lr), or "
            "search with cma_mae", bad)

    def _skip(self, latents: np.ndarray, s: Scores) -> np.ndarray:
        """Rows of ``s`` with NaN/inf scores (only where ``skip_nonfinite`` let them through):
        counted, and a warning at the first of this run."""
        bad = nonfinite_rows(s)
        if bad.any():
            if not self._skip_warned:
                norms = ", ".join(f"{v:.3g}" for v in
                                  np.linalg.norm(np.asarray(latents)[bad], axis=1)[:4])
                warnings.warn(
                    f"iteration {self.iteration}: {int(bad.sum())} of {len(bad)} solutions "
                    f"scored NaN/inf (in their scores or jacobians; latent norms {norms})"
                    " and were skipped (skip_nonfinite): left out of the archives, ranked "
                    "last (a gradient-step point: its emitter restarted at an elite). "
                    "QDSearch.skipped counts them; this warning comes once per run",
                    stacklevel=4)
                self._skip_warned = True
            self.skipped += int(bad.sum())
        return bad

    def _count_outside(self, measures: np.ndarray) -> None:
        lo, hi = np.asarray(self.cfg.ranges, dtype=float).T
        self._outside += ((measures < lo) | (measures > hi)).sum(0)
        self._scored += len(measures)

    def _warn_if_ranges_miss(self, early: bool = False) -> None:
        """pyribs files a solution outside the ranges in the nearest edge cell: when most of
        a search lies outside a measure's range, its archive is a pile-up on the edges. Checked
        once :data:`EARLY_RANGE_CHECK` solutions are scored (``early``: a long search need not
        run for hours first) and at the end; warns once per run."""
        if self._scored < 50 or self._ranges_warned:
            return
        frac = self._outside / self._scored
        k = int(np.argmax(frac))
        if frac[k] > 0.5:
            self._ranges_warned = True
            when = (f"so far (iteration {self.iteration} of {self.cfg.iterations}: interrupt "
                    "it and start again with wider ranges in a new folder, or let it run) "
                    if early else "")
            warnings.warn(f"{frac[k]:.0%} of the {self._scored} solutions scored {when}had "
                          f"measure {k} outside its range {tuple(self.cfg.ranges[k])}: pyribs "
                          "files them in the edge cells, so the archive piles up there. Widen "
                          "the ranges to cover the measures (e.g. ranges_from_samples of the "
                          "measures of prior samples)", stacklevel=4)

    def _log(self) -> None:
        st = self.result_archive.stats
        row = {"iteration": self.iteration,
               "evaluations": self.iteration * self.cfg.evaluations_per_iteration,
               "seconds": round(self.seconds, 3), "num_elites": st.num_elites,
               "coverage": st.coverage, "qd_score": st.qd_score,
               "obj_max": st.obj_max if st.num_elites else np.nan,
               "obj_mean": st.obj_mean if st.num_elites else np.nan}
        new = not self.metrics_path.exists()
        with open(self.metrics_path, "a") as f:  # pandas' to_csv format, 40x cheaper per row
            if new:
                f.write(",".join(METRIC_COLUMNS) + "\n")
            f.write(",".join(_csv_field(row[c]) for c in METRIC_COLUMNS) + "\n")

    def run(self, progress: bool = True) -> GridArchive:
        """Run (or resume) until ``cfg.iterations``; return the result archive."""
        if self.outdir.exists() and not self.outdir.is_dir():
            raise ValueError(f"the output folder {self.outdir} is a file: give a folder path "
                             "(a new one, or the folder of the run to resume)")
        self.outdir.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.outdir):
            return self._run(progress)

    def _run(self, progress: bool) -> GridArchive:
        self._skip_warned = False  # (a warning per run)
        for stale in self.outdir.glob(".*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        if not self._try_resume():
            # a fresh start, also when run() is called again on this object after an
            # interruption before the first checkpoint: nothing of that attempt is kept
            self.iteration, self.seconds, self.scheduler, self.skipped = 0, 0.0, None, 0
            self.result_archive = make_result_archive(self.scorer.solution_dim, self.cfg)
            self.scorer.reset()  # not the memory a previous search on this scorer left
            write_run_info(self.outdir, self._config_dict())
            # an earlier run's curve and archive (its checkpoints deleted to start over)
            for old in (self.metrics_path, self.outdir / "archive.parquet"):
                old.unlink(missing_ok=True)
            if self.cfg.algorithm != "random":
                x0 = self.start_latent()
                self.scheduler = make_scheduler(self.scorer.solution_dim, self.cfg, x0,
                                                self.result_archive)
        start = self.iteration
        bar = tqdm(total=self.cfg.iterations, initial=self.iteration, disable=not progress,
                   desc=f"{self.cfg.algorithm}", unit="it")
        while self.iteration < self.cfg.iterations:
            t0, scored = time.perf_counter(), self._scored
            self._step()
            self.seconds += time.perf_counter() - t0
            self.iteration += 1
            self._log()
            if scored < EARLY_RANGE_CHECK <= self._scored and \
                    self.iteration < self.cfg.iterations:  # (the end has a check of its own)
                self._warn_if_ranges_miss(early=True)
            if self.iteration % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
            bar.update(1)
            if self.iteration % 10 == 0:
                st = self.result_archive.stats
                bar.set_postfix(cov=f"{st.coverage:.3f}", qd=f"{st.qd_score:.0f}")
        bar.close()
        self._warn_if_ranges_miss()
        if self.iteration > start or not (self.outdir / "archive.parquet").exists():
            self.save_checkpoint()  # a finished run that was only reloaded is left as it is
            export_archive(self.result_archive, self.outdir / "archive.parquet")
        return self.result_archive

    def metrics(self) -> pd.DataFrame:
        """One row per iteration (``METRIC_COLUMNS``); empty where the file is gone."""
        if not self.metrics_path.exists():
            if not (self.outdir / CHECKPOINT).exists():  # not run yet: nothing is missing
                return pd.DataFrame(columns=METRIC_COLUMNS)
            warnings.warn(f"{self.metrics_path} is missing (deleted?): no curve for this run; "
                          "run it again in a new folder to get one", stacklevel=2)
            return pd.DataFrame(columns=METRIC_COLUMNS)
        return pd.read_csv(self.metrics_path)


@contextmanager
def _folder_lock(outdir: Path):
    """Hold ``outdir/.lock`` (an advisory lock the OS drops when the process dies): two
    processes running a search in one folder would interleave its metrics and checkpoints."""
    try:
        import fcntl
    except ImportError:  # (Windows: no advisory locks here)
        yield
        return
    with open(outdir / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another process is running a search in {outdir}: wait for "
                               "it, or give this run another folder") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_search(scorer: PromptScorer, p: dict, algorithm: str, outdir: str | Path,
               seed: int = 0, progress: bool = True) -> QDSearch:
    """Run (or resume, or reload when finished) the search of a profile section in
    ``outdir``."""
    search = QDSearch(scorer, SearchConfig.from_profile(p, algorithm, seed), outdir)
    search.run(progress=progress)
    return search


def run_searches(scorer: PromptScorer, p: dict,
                 runs: Mapping[Hashable, tuple[str, int, str | Path]],
                 build_scorer: Callable[[dict, str], PromptScorer] | None = None,
                 workers: int | None = None, progress: bool = True) -> dict[Hashable, QDSearch]:
    """Several searches (``runs``: key -> (algorithm, seed, outdir)), each as :func:`run_search`.

    On a CPU with ``build_scorer`` (a module-level ``(p, device) -> scorer``, e.g.
    ``shapes_poc.build_scorer``) the unfinished runs go to ``workers`` processes (default: one
    per core, at most one per run) that split the cores between them: a batch-4 search is too
    small to use two threads well, so two one-thread searches finish in about the time of one.
    On this project's CPU a CMA-MAEGA search comes out bitwise the same as in-process (its
    batch-4 passes do not depend on the thread count; ``tests/test_search.py`` checks it);
    larger batches (random sampling) may differ by float rounding. On a GPU, or without
    ``build_scorer``, the runs go one after the other. Then every run is reloaded with
    ``scorer`` from its final checkpoint; interrupted runs resume as :func:`run_search` does.
    From a script, call it under ``if __name__ == "__main__":`` (worker processes are spawned).
    """
    folders = [Path(outdir).resolve() for _, _, outdir in runs.values()]
    if len(set(folders)) < len(folders):
        twice = sorted({str(f) for f in folders if folders.count(f) > 1})
        raise ValueError(f"two runs share a folder ({', '.join(twice)}): give each its own")
    configs = {key: SearchConfig.from_profile(p, algorithm, seed)
               for key, (algorithm, seed, _) in runs.items()}
    done = {key: _finished(Path(outdir), configs[key].iterations)
            for key, (_, _, outdir) in runs.items()}
    pending = [key for key in runs if not done[key]]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = min(workers or cores or 1, len(pending))
    if build_scorer is not None and workers > 1 and scorer.clip.device.type == "cpu":
        _run_in_workers(build_scorer, p, {key: runs[key] for key in pending}, configs, workers,
                        threads=max(1, (cores or 1) // workers), progress=progress)
    out = {}
    for key, (algorithm, seed, outdir) in runs.items():
        out[key] = run_search(scorer, p, algorithm, outdir, seed=seed,
                              progress=progress and key in pending)
    return out


def _finished(outdir: Path, iterations: int) -> bool:
    """Whether a run folder already holds ``iterations`` rows of metrics (reloads quickly)."""
    return _rows(outdir / METRICS) >= iterations and (outdir / CHECKPOINT).exists()


def _rows(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return max(0, f.read().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def _search_worker(build_scorer, p: dict, algorithm: str, seed: int, outdir: str,
                   threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    run_search(build_scorer(p, "cpu"), p, algorithm, outdir, seed=seed, progress=False)


def _run_in_workers(build_scorer, p: dict, runs: Mapping, configs: Mapping, workers: int,
                    threads: int, progress: bool) -> None:
    # spawn, not fork: the parent's OpenMP threads do not survive a fork
    ctx = multiprocessing.get_context("spawn")
    total = sum(configs[key].iterations for key in runs)
    bar = tqdm(total=total, disable=not progress, unit="it",
               desc=f"{len(runs)} searches in {workers} processes")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(_search_worker, build_scorer, p, algorithm, seed, str(outdir),
                               threads): key for key, (algorithm, seed, outdir) in runs.items()}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_EXCEPTION)
                # progress from the runs' metrics files (one row per iteration)
                bar.n = sum(min(_rows(Path(runs[key][2]) / METRICS),
                                configs[key].iterations) for key in runs)
                bar.refresh()
                for fut in finished:
                    if isinstance(fut.exception(), BrokenProcessPool):
                        raise RuntimeError(
                            "a search worker process died (killed, or out of memory?). "
                            "Finished runs are kept and interrupted ones resume from their "
                            "checkpoint: run again, with fewer workers if memory is short."
                        ) from fut.exception()
                    if fut.exception() is not None:
                        raise RuntimeError(
                            f"search {futures[fut]!r} failed in its worker process: "
                            f"{fut.exception()}. Finished runs are kept and interrupted ones "
                            "resume from their checkpoint: fix the cause and run again (or "
                            "pass workers=1 to see the full traceback in this process)."
                        ) from fut.exception()
        except BaseException:  # a failed run, or an interrupt: stop the others now
            for fut in pending:
                fut.cancel()
            # leaving the pool would wait for the running searches; their checkpoints are
            # written atomically, so a killed run resumes from its last one
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            raise
        finally:
            bar.close()


def archive_summary(searches: dict[str, QDSearch]) -> pd.DataFrame:
    """One row per search: coverage, QD score, elites, evaluations of its result archive;
    and ``skipped`` (solutions left out for NaN/inf scores) where a search skipped any."""
    types = {"coverage": float, "qd_score": float, "elites": int, "evaluations": int}
    if not searches:
        return pd.DataFrame(columns=list(types)).astype(types)
    if any(s.skipped for s in searches.values()):
        types["skipped"] = int
    return pd.DataFrame({name: {"coverage": s.result_archive.stats.coverage,
                                "qd_score": s.result_archive.stats.qd_score,
                                "elites": s.result_archive.stats.num_elites,
                                "evaluations": s.iteration * s.cfg.evaluations_per_iteration,
                                "skipped": s.skipped}
                         for name, s in searches.items()}).T[list(types)].astype(types)


def archive_frame(archive: GridArchive) -> pd.DataFrame:
    """The archive's elites as a DataFrame (index, objective, measures_*, solution_*)."""
    return archive.data(return_type="pandas")


def export_archive(archive: GridArchive, path: str | Path) -> Path:
    """Write the archive's elites to parquet, atomically."""
    df = archive_frame(archive)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def read_archive(path: str | Path) -> pd.DataFrame:
    """Read an archive :func:`export_archive` wrote (one row per elite); an empty one is
    refused (ValueError)."""
    df = pd.read_parquet(path)
    if len(df) == 0:
        raise ValueError(f"archive {path} is empty: the search found no solutions")
    return df


def solutions(df: pd.DataFrame) -> np.ndarray:
    """The elites' latents (N, d) from an archive frame's ``solution_<i>`` columns, in
    numeric order of i."""
    cols = sorted((c for c in df.columns if c.startswith("solution_")),
                  key=lambda c: int(c.split("_")[1]))
    return df[cols].to_numpy()


def measures(df: pd.DataFrame) -> np.ndarray:
    """The elites' measures (N, m) from an archive frame's ``measures_<i>`` columns, in
    numeric order of i."""
    cols = sorted((c for c in df.columns if c.startswith("measures_")),
                  key=lambda c: int(c.split("_")[1]))
    return df[cols].to_numpy()
