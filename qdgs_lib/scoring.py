"""Objective and measures of generated images from CLIP prompt pairs, with jacobians.

Conventions (following the paper's released code, sign of measures flipped for readability):

* ``angdist(e, t) = 2 * arcsin(|e - t| / 2)``, the angle between unit embeddings.
* measure k of a pair (pos, neg) is ``angdist(e, neg) - angdist(e, pos)``: larger means
  "more like the first prompt".
* objective loss = w_prompt * (angdist(e, pos) - angdist(e, neg))
                 + w_reg * (max(|z|, latent_norm) - latent_norm)^2
                 + w_unique * (1 - min_j angdist(e, memory_j))
  and objective = softplus_beta(100 - 50 * loss) with beta = 0.1, i.e.
  10 * log(1 + exp((100 - 50 * loss) / 10)): the released code's 100 - 50 * loss above ~30,
  with a soft floor at 0 where that goes negative (pyribs' ``threshold_min=0`` rejects a
  negative objective outright). It reaches 0 itself only by float32 underflow (loss >~ 22,
  far from the prior under the latent-norm penalty); such solutions are not added. With
  ``objective_floor`` off (the ``paper`` profile) the objective is ``100 - 50 * loss`` as in
  the released code.

The released code ran one generator+CLIP forward and backward per output (objective, then each
measure). Here one forward pass serves all of them and the 1 + m vector-jacobian products run
over that one graph: vmapped (``batched``: ``is_grads_batched``; ``func``: ``torch.func``), one
after the other (``loop``), or as one backward over a batch repeated once per output
(``replicated``); bench/README.md has the numbers.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .clip import Clip, create_clip
from .generators.base import Generator
from .image_prompts import ImagePrompt
from .measures import check_pair, prompts, text_alternatives
from .paths import in_data_dir
from .profiles import with_earlier
from .utils import (
    at_least_fp32,
    check_batch_size,
    check_unit_images,
    compile_available,
    tf32_matmul,
    tf32_matmul_on,
)

Prompt = str | Sequence[str] | ImagePrompt  # text (alternatives), or example images
# PromptScorer.autocast's choices
AUTOCAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def angdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Angular distance between unit vectors; x (B, D), y (P, D) -> (B, P)."""
    chord = (x[:, None, :] - y[None, :, :]).norm(dim=-1)
    return 2 * torch.arcsin((chord / 2).clamp(max=1.0))


def _as_tokenized(p: Prompt) -> frozenset[str]:
    """A prompt's alternatives as CLIP's tokenizer sees them (lower case, single spaces):
    "A cat" and "a  cat" are one prompt. Example images: their pixels' digest."""
    if isinstance(p, ImagePrompt):
        return frozenset({f"images sha256 {p.sha256}"})
    return frozenset(" ".join(a.lower().split()) for a in text_alternatives(p))


def _out_of_memory(e: BaseException) -> bool:
    """An allocation failure, whatever the device reports it as (a CPU's is a plain
    RuntimeError)."""
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text \
        or "can't allocate memory" in text


@dataclass
class Scores:
    """What a scoring call (:meth:`PromptScorer.evaluate`) returns for B latents: the
    ``objective`` and the m ``measures`` (float64), their ``jacobian`` with respect to the
    latent when asked for (row 0: the objective's), and the objective ``loss`` the
    objective is computed from (None from :meth:`PromptScorer.evaluate_per_output`)."""

    objective: np.ndarray  # (B,)
    measures: np.ndarray  # (B, m)
    jacobian: np.ndarray | None = None  # (B, 1 + m, d): d objective, d measures / d latent
    loss: np.ndarray | None = None  # (B,) objective loss before the transform


def nonfinite_rows(scores: Scores) -> np.ndarray:
    """Rows of ``scores`` whose objective, measures or jacobian hold NaN/inf."""
    bad = ~(np.isfinite(scores.objective) & np.isfinite(scores.measures).all(1))
    if scores.jacobian is not None:
        bad |= ~np.isfinite(scores.jacobian).all((1, 2))
    return bad


class NonFiniteScoresError(ValueError):
    """A scoring call met NaN/inf images, scores or jacobians; ``rows``: which latents."""

    def __init__(self, message: str, rows: np.ndarray):
        super().__init__(message)
        self.rows = rows


def preferred_mode(generator: Generator, device: torch.device) -> str:
    """The generator's jacobian mode for ``device``: ``preferred_jacobian_mode`` is a mode, or
    a dict by device type (``{"cpu": ..., "cuda": ...}``, other types: ``batched``)."""
    pref = getattr(generator, "preferred_jacobian_mode", "batched")
    if isinstance(pref, dict):
        return pref.get(torch.device(device).type, "batched")
    return pref


def jacobian_row_errors(got, ref, floor: float = 1e-6) -> torch.Tensor:
    """(1+m,) errors of jacobians ``got`` (B, 1+m, d) against ``ref`` (tensors or arrays):
    each row's error norm relative to the row's norm, largest over the batch, but never
    relative to less than ``floor`` times the jacobian's largest row norm. A row that is ~0 in
    ``ref`` (with random weights the faces objective saturates: its row norm was 5e-19 next to
    the measures' 5e-3) would otherwise compare rounding noise with rounding noise."""
    got, ref = (torch.as_tensor(a).detach().cpu().double() for a in (got, ref))
    norms = ref.norm(dim=2)
    scale = torch.maximum(norms, floor * norms.amax(dim=1, keepdim=True))
    return ((got - ref).norm(dim=2) / scale).amax(dim=0)


# largest error of a compiled static call against the eager one that is taken for rounding
# (float32, TF32 or half precision, fused kernels); above it the compiled pass is broken
COMPILED_TOLERANCE = 0.1


class StaticCall:
    """``fn(inputs, memory)`` bound to static input buffers of one shape.

    On CUDA the call is captured once as a CUDA graph (after two warm-up calls on a side
    stream, which also let cuDNN pick its algorithms) and each call copies its inputs into
    the buffers and replays the graph: the same kernels on the same buffers, so the same
    numbers as eager calls, with one launch instead of hundreds. The outputs are static too:
    read (copy) them before the next call. Elsewhere ``fn`` runs eagerly on the buffers (after
    one warm-up call, so that errors, e.g. of compiling, surface here on every device).
    """

    def __init__(self, fn, inputs: torch.Tensor, memory: torch.Tensor):
        self.fn = fn
        self.inputs, self.memory = inputs.clone(), memory.clone()
        self.graph = None
        if not inputs.is_cuda:  # one warm-up call, as on CUDA: a compiled fn compiles here
            fn(self.inputs, self.memory)
        else:
            # all on the inputs' GPU: torch.cuda.graph's default capture stream lives on the
            # *current* device (GPU 0 unless set), where a cuda:1 scorer's kernels would not
            # be recorded
            dev = inputs.device
            with torch.cuda.device(dev):
                stream = torch.cuda.Stream(dev)
                stream.wait_stream(torch.cuda.current_stream(dev))
                with torch.cuda.stream(stream):
                    for _ in range(2):
                        fn(self.inputs, self.memory)
                torch.cuda.current_stream(dev).wait_stream(stream)
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(dev)):
                    self.outputs = fn(self.inputs, self.memory)

    def __call__(self, inputs: torch.Tensor, memory: torch.Tensor):
        self.inputs.copy_(inputs)
        self.memory.copy_(memory)
        if self.graph is None:
            return self.fn(self.inputs, self.memory)
        self.graph.replay()
        return self.outputs


class PromptScorer:
    """Scores latents of ``generator`` with ``clip`` against prompt pairs.

    Args:
        generator: a :class:`~qdgs_lib.generators.base.Generator`.
        clip: a :class:`~qdgs_lib.clip.Clip`.
        objective_prompts: (positive, negative) prompt pair of the quality objective.
        measure_prompts: one (positive, negative) pair per measure.
        weights: (prompt, latent-norm regularizer, uniqueness) weights of the objective loss;
            the paper used (1, 0, 0) for shapes and (1, 0.5, 0.2) for faces.
        memory_size: size of the uniqueness memory (FIFO of image embeddings).
        seed: seeds the memory's choice of which embedding to remember.
        latent_norm_scale: the latent-norm penalty starts at this multiple of the
            generator's ``latent_norm`` (the released faces code: 0.5, in w+).
        objective_floor: the objective is ``softplus(100 - 50 * loss)`` (never below 0, so
            pyribs' ``threshold_min=0`` archive sees no negative score), or, off, the released
            code's ``100 - 50 * loss``, negative far from the prompt or the prior. Off, a
            search ranks the solutions it cannot add yet instead of seeing a flat 0.
        uniqueness_fill_scale: scale the uniqueness distance by ``memory_size`` / the
            memory's length, as the released code did (x 100 / length): up to
            ``memory_size`` times stronger while the memory fills, the same once it is full.
        clamp_images: CLIP scores the generator's images clamped to [0, 1] (``decode``), or,
            off, as the released faces code did, unclamped (``decode_unclamped``, which
            StyleGAN2 has: ``(x + 1) / 2`` of its raw output, a little outside [0, 1] where
            it overshoots, with gradients there too). Datasets are always clamped.
    """

    def __init__(self, generator: Generator, clip: Clip, objective_prompts: tuple[Prompt, Prompt],
                 measure_prompts: Sequence[tuple[Prompt, Prompt]],
                 weights: tuple[float, float, float] = (1.0, 0.0, 0.0),
                 memory_size: int = 100, seed: int = 0, latent_norm_scale: float = 1.0,
                 objective_floor: bool = True, uniqueness_fill_scale: bool = False,
                 clamp_images: bool = True):
        for name, given, pairs in (("objective_prompts", objective_prompts, [objective_prompts]),
                                   ("measure_prompts", measure_prompts, measure_prompts)):
            if isinstance(pairs, str | ImagePrompt) or any(
                    isinstance(p, str | ImagePrompt) or len(p) != 2 for p in pairs):
                raise ValueError(
                    f"prompts come in (positive, negative) pairs: objective_prompts is one pair, "
                    f"measure_prompts a list of pairs, e.g. [('A red shape.', 'A blue "
                    f"shape.')]; {name} got {given!r}")
        if not all(hasattr(generator, a) for a in ("decode", "sample_prior", "latent_dim",
                                                    "latent_norm", "device")):
            raise TypeError(f"generator must follow qdgs_lib's Generator protocol (decode, "
                            f"sample_prior, latent_dim, latent_norm, device), got "
                            f"{type(generator).__name__}: wrap a network or function in "
                            "qdgs_lib.generators.wrapped.WrappedGenerator(net, latent_dim, "
                            "output_range)")
        if len(measure_prompts) == 0:
            raise ValueError("need at least one measure prompt pair")
        named = [("objective", objective_prompts),
                 *((f"measure {k}", pair) for k, pair in enumerate(measure_prompts))]
        for name, (pos, neg) in named:
            check_pair((pos, neg), f"the {name} pair")
            if _as_tokenized(pos) == _as_tokenized(neg):
                raise ValueError(f"the {name} pair's two prompts are the same ({pos!r}): it "
                                 "would score every image 0; give the attribute's two ends, "
                                 "e.g. ('A person with dark skin.', 'A person with light "
                                 "skin.')")
        keys = [frozenset({_as_tokenized(p), _as_tokenized(n)})
                for p, n in measure_prompts]  # the same pair, either way round
        if len(set(keys)) < len(keys):
            warnings.warn("two measures have the same prompt pair: the archive's axes for "
                          "them are one measure (equal, or mirrored)", stacklevel=2)
        if len(weights) != 3 or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"weights must be 3 finite numbers >= 0 (prompt gap, latent-norm "
                             f"penalty, uniqueness), got {weights!r}: a negative weight "
                             "rewards what it should penalize and can make the objective "
                             "unbounded")
        if not (isinstance(latent_norm_scale, int | float) and 0 < latent_norm_scale < math.inf):
            raise ValueError(f"latent_norm_scale must be a finite number > 0 (the penalty "
                             f"starts at that multiple of the prior's typical latent norm), "
                             f"got {latent_norm_scale!r}")
        if int(memory_size) != memory_size or memory_size < 1:
            raise ValueError(f"memory_size must be an int >= 1 (the uniqueness memory's "
                             f"length), got {memory_size!r}")
        if generator.device != clip.device:
            raise ValueError(f"the generator is on {generator.device} and CLIP on "
                             f"{clip.device}: build both with the same device (e.g. "
                             "device='auto')")
        with torch.no_grad():  # the [0, 1] convention, checked once on two prior samples
            check_unit_images(generator.decode(generator.sample_prior(2, seed=0)),
                              f"{type(generator).__name__}.decode's images")
        if not isinstance(clamp_images, bool):
            raise ValueError(f"clamp_images must be True or False, got {clamp_images!r}")
        if not clamp_images and not callable(getattr(generator, "decode_unclamped", None)):
            raise ValueError(f"clamp_images=False scores the generator's unclamped images, "
                             f"and {type(generator).__name__} has no decode_unclamped (the "
                             "released code's faces: StyleGAN2Generator); use True")
        self.clamp_images = clamp_images
        self.generator = generator
        self.clip = clip
        self.weights = tuple(float(w) for w in weights)
        self.latent_norm_scale = float(latent_norm_scale)
        self.objective_floor = bool(objective_floor)
        self.uniqueness_fill_scale = bool(uniqueness_fill_scale)
        self.memory_size = memory_size
        self.objective_prompts = objective_prompts
        self.measure_prompts = list(measure_prompts)
        pairs = [objective_prompts, *self.measure_prompts]
        # Each pair -> (P_pos, D), (P_neg, D) unit text (or example image) embeddings, once
        self._seed = seed
        self._targets = [(self._embed(p), self._embed(n)) for p, n in pairs]
        self.memory = torch.empty(0, self._targets[0][0].shape[1], device=clip.device)
        self._rng = np.random.default_rng(seed)
        # seeds of the random cutouts / generator noise of each call (see _randomness): a
        # stream of its own, so deterministic scorers keep the memory's draws as they were
        self._call_rng = np.random.default_rng([seed, 1])
        # "batched" | "func" | "loop" | "replicated" | "auto" (the generator's preferred mode):
        # see _with_jacobian
        self.jacobian_mode = "auto"
        # "auto" | True | False, and the largest batch captured: see _static_call
        self.cuda_graphs: bool | str = "auto"
        self.static_max_batch = 16
        # True: CUDA matmuls (CLIP's) in TF32 while scoring; False: torch's setting: see _tf32
        self.tf32_matmul = False
        # True: deterministic kernels only while scoring (bitwise-reproducible GPU searches);
        # see _deterministic
        self.deterministic = False
        # True: static calls of values and of the replicated and func modes run torch.compile'd
        # passes; see _static_call
        self.compile_static = False
        # None: float32; "float16" | "bfloat16": the networks run under torch.autocast while
        # scoring (see _autocast)
        self.autocast: str | None = None
        self._warned_cpu_float16 = False
        self._compiled: dict[str, Callable] = {}  # torch.compile'd passes, by name
        # modes ("values", "replicated", "func") whose compile failed or was far from eager:
        # they run uncompiled, the others stay compiled (see _static_call)
        self.uncompiled_modes: set[str] = set()
        self._static_calls: dict[tuple, StaticCall] = {}
        self._shape_counts: dict[tuple, int] = {}

    def _embed(self, prompt: Prompt) -> torch.Tensor:
        """A prompt's unit embeddings (P, D): its text alternatives, or its example images
        (any cutouts drawn from a seed of the scorer's own, the same on every build)."""
        if not isinstance(prompt, ImagePrompt):
            return self.clip.encode_text(text_alternatives(prompt))
        with self._randomness(self._fixed_seed(3)):
            return prompt.embed(self.clip)

    def _fixed_seed(self, stream: int) -> int:
        """A seed derived from the scorer's seed alone, one per ``stream`` (2: the cutouts of
        :meth:`measures_of_images`, 3: those of example images): the same on every call and
        build, apart from the stream a search's calls draw from."""
        return int(np.random.SeedSequence([self._seed, stream]).generate_state(1, np.uint64)[0])

    def weights_sha256(self, defaults: bool = True) -> str:
        """sha256 over the generator's and CLIP's tensors (names, dtypes, shapes, bytes): what
        a search records so that it never resumes or reloads a run scored by other weights.
        Computed once per scorer (the networks are frozen). ``defaults=False``: without the
        modules a wrapped function holds as default arguments (as recorded before 2026-11-29:
        such runs still resume)."""
        if not defaults:
            return self._digest(defaults=False)
        if getattr(self, "_weights_sha256", None) is None:
            self._weights_sha256 = self._digest(defaults=True)
        return self._weights_sha256

    def _digest(self, defaults: bool) -> str:
        h = hashlib.sha256()
        for part in (self.generator, self.clip):
            # a wrapped function's generator adds the weights of the modules it reaches
            fingerprint = getattr(part, "fingerprint_state_dict", None)
            if fingerprint is None:
                state = part.state_dict()
            elif defaults or "defaults" not in inspect.signature(fingerprint).parameters:
                state = fingerprint()
            else:
                state = fingerprint(defaults=False)
            for name, t in sorted(state.items()):
                t = t.detach().cpu().contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    @property
    def num_measures(self) -> int:
        """m: the number of measures (the prompt pairs besides the objective's)."""
        return len(self.measure_prompts)

    @property
    def solution_dim(self) -> int:
        """The generator's ``latent_dim``: the length of a solution."""
        return self.generator.latent_dim

    # --- the math -------------------------------------------------------------------------
    def _pair_gap(self, emb: torch.Tensor, k: int) -> torch.Tensor:
        """angdist to positive minus angdist to negative prompt(s) of pair k; (B,)."""
        pos, neg = self._targets[k]
        return angdist(emb, pos).mean(1) - angdist(emb, neg).mean(1)

    def _objective_loss(self, emb: torch.Tensor, z: torch.Tensor,
                        memory: torch.Tensor | None = None,
                        whole_batch_norm: bool = False) -> torch.Tensor:
        w_prompt, w_reg, w_unique = self.weights
        memory = self.memory if memory is None else memory
        loss = w_prompt * self._pair_gap(emb, 0)
        if w_reg > 0:
            # whole_batch_norm: the released start's penalty, on the norm of the whole batch
            # (its torch.norm without dim), one number for every latent of the batch
            norm = z.norm() if whole_batch_norm else z.norm(dim=1)
            q = self.latent_norm_scale * float(self.generator.latent_norm)
            loss = loss + w_reg * (torch.clamp(norm, min=q) - q).pow(2)
        if w_unique > 0 and len(memory) > 0:
            uniqueness = angdist(emb, memory).min(dim=1).values
            if self.uniqueness_fill_scale:  # the released code's: x memory_size / length
                uniqueness = uniqueness * (self.memory_size / len(memory))
            loss = loss + w_unique * (1 - uniqueness)
        return loss

    @staticmethod
    def loss_to_objective(loss: torch.Tensor) -> torch.Tensor:
        """The objective of a loss: ``softplus(100 - 50 * loss)`` with beta 0.1, the released code's
        ``100 - 50 * loss`` floored softly at 0 (see the module docstring)."""
        return F.softplus(100 - 50 * loss, beta=0.1)

    def _objective(self, loss: torch.Tensor) -> torch.Tensor:
        """The objective of a loss: floored softly at 0 (:meth:`loss_to_objective`), or, with
        ``objective_floor`` off, the released code's ``100 - 50 * loss`` as it is."""
        return self.loss_to_objective(loss) if self.objective_floor else 100 - 50 * loss

    def _outputs(self, z: torch.Tensor, memory: torch.Tensor | None = None,
                 whole_batch_norm: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward pass: (loss (B,), outputs (B, 1+m) = [objective, measures], emb)."""
        images = self._decode(z)
        # checked once, on the host, later; half precision (autocast) back to float32
        emb = at_least_fp32(self.clip.encode_image(images, check=False))
        with torch.autocast(emb.device.type, enabled=False):  # the scores' math in float32
            loss = self._objective_loss(emb, z, memory, whole_batch_norm)
            measures = [-self._pair_gap(emb, k) for k in range(1, 1 + self.num_measures)]
            return loss, torch.stack([self._objective(loss), *measures], dim=1), emb

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """The images CLIP scores (see ``clamp_images``)."""
        return self.generator.decode(z) if self.clamp_images else \
            self.generator.decode_unclamped(z)

    # --- public API ------------------------------------------------------------------------
    def _to_tensor(self, latents) -> torch.Tensor:
        if isinstance(latents, torch.Tensor):
            latents = latents.detach().cpu().numpy()
        arr = np.asarray(latents, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.solution_dim or len(arr) == 0:
            raise ValueError(f"latents must have shape (B >= 1, {self.solution_dim}), "
                             f"got {tuple(arr.shape)}")
        if not np.isfinite(arr).all():  # checked on the host: no device sync
            raise ValueError("latents contain NaN or inf")
        return torch.from_numpy(arr).to(self.clip.device, non_blocking=True)

    @contextmanager
    def _tf32(self) -> Iterator[None]:
        """TF32 CUDA matmuls for the duration of a scoring call if ``tf32_matmul``.

        cuDNN already runs fp32 convolutions (the generator's) in TF32 by default; matmuls
        (CLIP's) are fp32 unless TF32 is on (``tf32_matmul_on``). With it, a paper-scale
        CMA-MAEGA iteration took 20.8 instead of 24.6 ms on an H200 (bench/README.md), at a
        10-bit mantissa's rounding (~1e-3) in CLIP's matmuls. Set here and restored after the
        call, not globally; off by default.
        """
        # already on (by any of torch's settings): nothing to set or restore
        if not (self.tf32_matmul and self.clip.device.type == "cuda") or tf32_matmul_on():
            yield
            return
        with tf32_matmul():
            yield

    @contextmanager
    def _deterministic(self) -> Iterator[None]:
        """``torch.use_deterministic_algorithms(True)`` for the duration of a scoring call if
        ``deterministic`` (restored after): cuDNN then picks deterministic convolution
        algorithms and attention its deterministic backward, so a seeded search on a GPU
        gives the same archive bit for bit on the same card and software (without it,
        jacobians differ in their last bits from run to run and a long search drifts apart).
        An op of the networks that has no deterministic kernel raises, naming itself. CLIP's
        resize is matmuls for this (``resize_square_matmul``). torch requires
        ``CUBLAS_WORKSPACE_CONFIG`` (set here to ``:4096:8`` unless set), but cuBLAS reads it
        once, at the process's first CUDA matmul, and a scorer's constructor already encodes
        its prompts: export ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` before starting Python
        (the notebooks' ``build_scorer`` sets it before building the generator, which is in
        time for a fresh process: :func:`set_cublas_workspace`). Off by default
        (deterministic kernels can be slower)."""
        if not self.deterministic:
            yield
            return
        if self.clip.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        was = (torch.are_deterministic_algorithms_enabled(),
               torch.is_deterministic_algorithms_warn_only_enabled())
        benchmark = torch.backends.cudnn.benchmark
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False  # the autotuner's choice can vary by run
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was[0], warn_only=was[1])
            torch.backends.cudnn.benchmark = benchmark

    def _autocast(self):
        """``torch.autocast`` to ``autocast``'s dtype during a scoring call (None: none).

        The networks' convolutions and matmuls (forward and backward) then run in half
        precision: about twice a GPU's tensor-core rate and half the memory traffic of TF32,
        at a coarser rounding (float16: a 10-bit mantissa, as TF32; bfloat16: 7 bits). The
        scores' math (angles, objective) stays float32, and so do the returned jacobians;
        StyleGAN2's split layers keep float16 in range as NVIDIA's code does. Opt-in, off by
        default: not float rounding in the float32 sense (bench/README.md has the errors,
        measured on random weights: the jacobians' error came from the forward pass's
        rounding, not from underflowing gradients, so there is no loss scaling). The
        weight-cast cache is off, as CUDA graphs need.
        """
        if self.autocast is None:
            return nullcontext()
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be None or one of {sorted(AUTOCAST_DTYPES)}, "
                             f"got {self.autocast!r}")
        if self.autocast == "float16" and self.clip.device.type == "cpu" and \
                not self._warned_cpu_float16:
            self._warned_cpu_float16 = True
            warnings.warn("autocast='float16' on a CPU is emulated: 6-9x slower than float32 "
                          "(a small StyleGAN2 + ViT, 2 cores; bfloat16 about as fast as "
                          "float32). Half precision is for GPUs; use None here", stacklevel=3)
        return torch.autocast(self.clip.device.type, dtype=AUTOCAST_DTYPES[self.autocast],
                              cache_enabled=False)

    @property
    def stochastic(self) -> bool:
        """Whether a call draws random numbers: CLIP cutouts or StyleGAN2's random noise."""
        return getattr(self.clip, "num_cutouts", 0) > 0 or \
            getattr(self.generator, "noise_mode", None) == "random"

    @contextmanager
    def _randomness(self, seed: int | None = None) -> Iterator[None]:
        """A stochastic scorer's draws (cutouts, noise) from torch's global RNGs, seeded per
        call from the scorer's own stream (``seed``; saved in checkpoints), or with ``seed``,
        and restored afterwards: a seeded search reproduces and resumes exactly on a CPU (on
        CUDA up to the rounding of nondeterministic backward kernels: README, "Conventions"),
        and the caller's RNG state is left as it was."""
        if not self.stochastic:
            yield
            return
        dev = self.clip.device
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()] \
            if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the CPU's, and the GPU's in use
            if seed is None:
                seed = int(self._call_rng.integers(2**63))
            torch.default_generator.manual_seed(seed)
            if devices:
                with torch.cuda.device(devices[0]):
                    torch.cuda.manual_seed(seed)
            yield

    def evaluate(self, latents, jacobian: bool = False, update_memory: bool = True,
                 whole_batch_norm: bool = False, allow_nonfinite: bool = False) -> Scores:
        """Objective and measures (and, if asked, their jacobians) of a batch of latents.

        ``whole_batch_norm``: the latent-norm penalty on the norm of the whole batch, the same
        for each latent in it, as the released code's start search computes it (no
        jacobians then; see ``SearchConfig.x0``). Latents whose images (or scores) come out
        NaN/inf raise :class:`NonFiniteScoresError`; with ``allow_nonfinite`` their rows are
        returned as they are, and the memory never takes them."""
        z = self._to_tensor(latents)
        if jacobian:
            self._require_gradients()
        if whole_batch_norm and jacobian:
            raise ValueError("whole_batch_norm is the released start search's penalty, which "
                             "takes no jacobians: call evaluate(..., jacobian=False)")
        with self._tf32(), self._autocast(), self._deterministic(), self._randomness():
            static = None if whole_batch_norm else self._static_call(jacobian, z)
            if static is not None:  # one CUDA graph replay (see _static_call)
                loss, out, emb, jac = static(z, self.memory)
            elif not jacobian:
                with torch.no_grad():
                    loss, out, emb = self._outputs(z, whole_batch_norm=whole_batch_norm)
                jac = None
            else:
                loss, out, emb, jac = self._with_jacobian(z)
        loss, out, emb = loss.detach(), out.detach(), emb.detach()
        out = out.cpu().numpy().astype(np.float64)
        jac = None if jac is None else jac.cpu().numpy().astype(np.float64)
        scores = Scores(objective=out[:, 0], measures=out[:, 1:], jacobian=jac,
                        loss=loss.cpu().numpy())
        bad = nonfinite_rows(scores)
        if bad.any() and not allow_nonfinite:
            raise NonFiniteScoresError(self._nonfinite_message(z, bad, jac is not None),
                                       bad)
        if update_memory and self.weights[2] > 0:
            self._remember(loss, emb, bad)
        return scores

    def _require_gradients(self) -> None:
        if not getattr(self.generator, "differentiable", True):
            raise ValueError(f"{getattr(self.generator, 'name', type(self.generator).__name__)}"
                             " is not differentiable: no jacobians of its scores. Search it "
                             "with a gradient-free algorithm (cma_mae, cma_me, map_elites or "
                             "random), not cma_maega")

    def _nonfinite_message(self, z: torch.Tensor, bad: np.ndarray, jacobian: bool) -> str:
        """Which latents scored NaN/inf, how far from the prior they lie, and what to do."""
        norms = z.detach().cpu().double().norm(dim=1).numpy()
        typical = float(self.generator.sample_prior(64, seed=0).cpu().double().norm(dim=1).mean())
        what = "scores or jacobians" if jacobian else "scores"
        near = bool((norms[bad] <= 1.5 * typical).all())
        advice = ("They lie near the prior, so the generator fails on ordinary latents: check "
                  "its weights and numerics (e.g. float16 overflow) on these latents" if near
                  else "If they lie far from the prior, keep the search near it: a larger "
                  "latent-norm weight (objective_weights[1]), a smaller sigma0 or lr; else "
                  "check the weights")
        return (f"non-finite {what} for {int(bad.sum())} of {len(bad)} latents (latent "
                f"norms {', '.join(f'{v:.3g}' for v in norms[bad][:4])}; prior latents have "
                f"~{typical:.3g}): the generator produced NaN/inf images there (or CLIP NaN "
                f"embeddings). {advice}. In a search, a rerun resumes from the last checkpoint "
                "and meets the same latents: change a setting and use a new output folder, or "
                "let the search skip such solutions (SearchConfig skip_nonfinite=True, profile "
                "key 'skip_nonfinite'; a resume may switch it on)")

    def measures_of(self, latents, batch_size: int = 256,
                    progress: bool | None = None) -> np.ndarray:
        """Measures (N, m) of any number of latents, in batches, without touching the memory.
        ``progress``: a progress bar (None: where there is more than one batch); lower
        ``batch_size`` for a generator of large images."""
        if isinstance(latents, torch.Tensor):  # possibly on a GPU: copy to the host first
            latents = latents.detach().cpu().numpy()
        latents = np.asarray(latents)
        check_batch_size(batch_size)
        if len(latents) == 0:
            return np.zeros((0, self.num_measures))
        starts = range(0, len(latents), batch_size)
        show = len(starts) > 1 if progress is None else progress
        return np.concatenate([self.evaluate(latents[i:i + batch_size],
                                             update_memory=False).measures
                               for i in tqdm(starts, desc="measures", unit="batch",
                                             leave=False, disable=not show)])

    def measures_of_images(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Measures (N, m) of images (N, 3, H, W) in [0, 1] that need not come from the
        generator (e.g. renders with known attributes, to check the CLIP). With random
        cutouts the same images and ``batch_size`` give the same measures on every call (a
        cutout's crop is drawn per batch, so another ``batch_size`` gives other crops)."""
        check_batch_size(batch_size)
        out = [torch.zeros(0, self.num_measures)]
        # random cutouts seeded from the scorer's seed, the same for each call (not the
        # caller's RNG, nor the stream a search's calls draw from)
        seed = self._fixed_seed(2)
        with torch.no_grad(), self._tf32(), self._autocast(), self._deterministic(), \
                self._randomness(seed):
            for x in images.split(batch_size):
                emb = at_least_fp32(self.clip.encode_image(x.to(self.clip.device)))
                out.append(torch.stack([-self._pair_gap(emb, k)
                                        for k in range(1, 1 + self.num_measures)], 1).cpu())
        return torch.cat(out).numpy().astype(np.float64)

    def _with_jacobian(self, z: torch.Tensor):
        """One forward pass and the (B, 1+m, d) jacobian: samples are independent, so
        d sum_b out[b, k] / d z[b] is row b of output k's jacobian.

        Four ways to run the 1+m backward passes, equal up to float rounding:

        * ``batched``: one vmapped backward (``torch.autograd.grad(is_grads_batched=True)``);
          ops without a batching rule there (convolutions) run slice by slice;
        * ``func``: one vmapped backward with ``torch.func`` (``vjp`` + ``vmap``), whose
          batching rules fold the 1+m passes of a convolution into one batched convolution;
          meant for devices where a small batch is latency-bound (GPUs);
        * ``loop``: one backward per output over the retained graph;
        * ``replicated``: the batch repeated once per output, one forward pass and one plain
          backward whose cotangent picks output i of copy i: no vmap, so every op runs at a
          (1+m)-times larger batch in both directions, which is nearly free where a small batch
          is latency-bound (GPUs) and costs (1+m) forward passes where it is not (CPUs). Needs
          a deterministic forward pass (no random cutouts or noise), so that copies agree.

        Which is fastest depends on the networks and the device (bench/README.md). ``auto``
        takes the generator's ``preferred_jacobian_mode`` (default ``batched``; a dict chooses
        by device type): a fixed rule, not a timing, so a seeded run is reproducible.
        """
        mode = self._resolved_mode()
        if mode == "replicated":
            return self._replicated_jacobian(z)
        if mode != "loop":
            try:
                return self._batched_jacobian(z) if mode == "batched" else self._func_jacobian(z)
            except RuntimeError as e:  # (torch.OutOfMemoryError included)
                if _out_of_memory(e):  # a full device is not a missing vmap rule
                    raise type(e)(
                        f"{e}\n\nOut of memory taking the jacobians of {len(z)} latent(s) "
                        f"in jacobian_mode {mode!r}, which runs the backward passes of all "
                        f"{1 + self.num_measures} outputs at once: set jacobian_mode='loop' "
                        "(one backward pass at a time, the memory of one) or a smaller "
                        "batch") from e
                if self.jacobian_mode != "auto":
                    raise
                # an op without a vmap rule: loop from now on (the same rule each run)
                warnings.warn(f"jacobian mode {mode!r} failed on these networks "
                              f"({type(e).__name__}: {str(e)[:200]}); scoring runs one "
                              "backward per output ('loop') from now on", stacklevel=3)
                self.jacobian_mode = "loop"
        z = z.detach().requires_grad_(True)
        loss, out, emb = self._outputs(z)
        k = out.shape[1]
        grads = [torch.autograd.grad(out[:, i].sum(), z, retain_graph=i < k - 1)[0]
                 for i in range(k)]
        return loss, out, emb, torch.stack(grads, dim=1)

    def _resolved_mode(self) -> str:
        mode = self.jacobian_mode
        if mode == "auto":
            mode = preferred_mode(self.generator, self.clip.device)
        if mode not in ("batched", "func", "loop", "replicated"):
            raise ValueError(f"jacobian_mode must be auto, batched, func, loop or replicated, "
                             f"got {mode!r}")
        return mode

    # --- static shapes: CUDA graphs ----------------------------------------------------------
    def _graphs_wanted(self, z: torch.Tensor) -> bool:
        """``cuda_graphs`` for this call: ``auto`` is on for CUDA latents, except for a
        generator without gradients (typically host code: numpy, a sampler's loop, which a
        graph cannot capture); True asks for them whatever the generator."""
        if self.cuda_graphs == "auto":
            return z.is_cuda and getattr(self.generator, "differentiable", True)
        return bool(self.cuda_graphs)

    def _static_call(self, jacobian: bool, z: torch.Tensor) -> StaticCall | None:
        """The captured call for this batch shape, or None to run eagerly.

        A search asks for the same small shapes again and again (CMA-MAEGA: jacobians at
        batch 1 per emitter, values at ``batch_size``), and at batch 1 StyleGAN2 + CLIP are
        launch-bound: hundreds of small kernels whose launches cost more than their math. A
        CUDA graph replays them with one launch. Used only where the call's work is fixed:
        no random cutouts (drawn on the host), a full (or unused) uniqueness memory, batches
        up to ``static_max_batch``, a jacobian mode other than ``loop``, and from a shape's
        second call.
        ``cuda_graphs``: ``auto`` (on for CUDA, but not for a generator without gradients),
        True (on any device: on a CPU the same static buffers run eagerly, which is what tests
        check), False. A graph holds the networks' tensors as they were at capture: after
        moving or casting the networks, or changing ``weights``, call
        :meth:`drop_static_calls` (or build a new scorer).

        ``compile_static``: the static calls of values and of the ``replicated`` jacobian mode
        run ``torch.compile``'d forward passes (and AOTAutograd's compiled backward), those of
        ``func`` the whole compiled jacobian (vjp and vmap in one graph): fewer, fused kernels
        inside the graph. ``batched`` cannot (autograd.grad breaks a compiled graph), nor can a
        stochastic scorer's jacobians. Compiling takes minutes the first time a shape comes
        back; each new compiled call is then checked once against the eager pass
        (``_check_compiled``). A mode whose compile fails or is far from eager runs
        uncompiled from then on (``uncompiled_modes``, with a warning); the others stay
        compiled.
        """
        if not self._graphs_wanted(z) or getattr(self.clip, "num_cutouts", 0) > 0 \
                or len(z) > self.static_max_batch:
            return None
        if self.weights[2] > 0 and len(self.memory) != self.memory_size:
            return None  # the memory still grows: its shape changes from call to call
        mode = self._resolved_mode() if jacobian else "values"
        if mode == "loop":
            return None
        # a graph keeps the kernels chosen at capture: one per matmul precision too
        # (a stochastic scorer's jacobians stay eager: its compiled calls cannot be checked)
        compiled = self.compile_static and mode not in self.uncompiled_modes and (
            mode == "values" or (mode in ("replicated", "func") and not self.stochastic))
        key = (mode, tuple(z.shape), tuple(self.memory.shape),
               z.is_cuda and tf32_matmul_on(), self.autocast,
               self.deterministic) + \
            (("compiled",) * compiled)
        if key not in self._static_calls:
            # capture a shape only when it comes back (a search's shapes do; the last,
            # shorter batch of measures_of does not): each graph holds its own memory pool
            self._shape_counts[key] = self._shape_counts.get(key, 0) + 1
            if self._shape_counts[key] < 2:
                return None
            if compiled and (why := compile_available(z.device)) is not None:
                warnings.warn(f"{why}; scoring runs without compiling", stacklevel=3)
                self.compile_static = False
                return self._static_call(jacobian, z)
            try:
                call = StaticCall(self._static_fn(mode, compiled), z, self.memory)
                # torch.compile has had silent wrong-gradient bugs. (A stochastic scorer's
                # compiled and eager calls draw different noise: not comparable; it compiles
                # values calls only, whose gradient-free pass such bugs do not touch)
                if compiled and not self.stochastic:
                    self._check_compiled(call, self._static_fn(mode, False))
                self._static_calls[key] = call
            except Exception as e:  # noqa: BLE001 - torch.compile's errors have many types
                if compiled:
                    warnings.warn(f"torch.compile of the {mode} scoring pass failed "
                                  f"({type(e).__name__}: {e}); {mode} calls run uncompiled, "
                                  f"the other compiled ones stay", stacklevel=3)
                    self._stop_compiling(mode)
                    self._shape_counts[key[:-1]] = 2  # captured uncompiled at once
                    return self._static_call(jacobian, z)
                if not isinstance(e, RuntimeError):
                    raise
                warnings.warn(f"CUDA graph capture failed ({e}); scoring runs eagerly",
                              stacklevel=3)  # an op that cannot be captured
                self.cuda_graphs = False
                return None
        return self._static_calls[key]

    # the compiled pass each mode's static calls run (see _static_fn)
    _COMPILED_PASS = {"values": "_outputs", "replicated": "_outputs", "func": "_func_jacobian"}

    def _stop_compiling(self, mode: str) -> None:
        """``mode`` runs uncompiled from now on; only its compiled calls go (each holds a
        graph's memory pool on CUDA). torch 2.11's bug broke compiled gradients, not
        values: a search then keeps its compiled values calls (measured 5.9 instead of
        8.9 ms on an H200)."""
        self.uncompiled_modes.add(mode)
        for k in [k for k in self._static_calls if k[0] == mode and k[-1] == "compiled"]:
            del self._static_calls[k]
        in_use = {p for m, p in self._COMPILED_PASS.items() if m not in self.uncompiled_modes}
        self._compiled = {k: f for k, f in self._compiled.items() if k in in_use}

    def _compiled_pass(self, name: str):
        """``torch.compile`` of the scoring pass (``_outputs``) or of the whole ``func``
        jacobian (``_func_jacobian``: vjp and vmap in one compiled graph), made once."""
        if name not in self._compiled:
            self._compiled[name] = torch.compile(getattr(self, name), dynamic=False)
        return self._compiled[name]

    def _static_fn(self, mode: str, compiled: bool):
        """``fn(z, memory)`` of a static call: values, or a jacobian mode, eager or
        compiled (values and ``replicated``: the compiled scoring pass and its compiled
        backward; ``func``: the compiled jacobian; ``batched``: never, autograd.grad breaks
        a compiled graph)."""
        outputs = self._compiled_pass("_outputs") if compiled and mode != "func" else \
            self._outputs
        if mode == "values":
            def fn(z, memory):
                with torch.no_grad():
                    return (*outputs(z, memory), None)
        elif mode == "replicated":
            def fn(z, memory):
                return self._replicated_jacobian(z, memory, outputs)
        else:
            jac_fn = self._batched_jacobian if mode == "batched" else \
                self._compiled_pass("_func_jacobian") if compiled else self._func_jacobian

            def fn(z, memory):
                return jac_fn(z, memory)
        return fn

    @staticmethod
    def _check_compiled(call: StaticCall, eager_fn) -> None:
        """Raise if a new compiled static call is far from the eager pass on its own buffers:
        torch 2.11's torch.compile returned zero jacobians through StyleGAN2's split layers
        (pytorch#180642, caught on an H200), with right values. A guard against broken
        compiles (``COMPILED_TOLERANCE``), not a precision check; once per captured shape."""
        got = [None if t is None else t.detach().clone()
               for t in call(call.inputs, call.memory)]  # (static outputs: copy first)
        ref = [None if t is None else t.detach()
               for t in eager_fn(call.inputs.clone(), call.memory.clone())]
        # per score (the objective is ~100 where measures are ~0.1), relative to the
        # score's norm over the batch, but at least 0.01 per sample: a measure near 0 (the
        # middle of its range) would turn half precision's rounding into a large ratio
        diff, size = (got[1] - ref[1]).double().norm(dim=0), ref[1].double().norm(dim=0)
        out_err = float((diff / size.clamp_min(0.01 * len(ref[1]) ** 0.5)).max())
        jac_err = 0.0 if got[3] is None else float(jacobian_row_errors(got[3], ref[3]).max())
        if not (out_err <= COMPILED_TOLERANCE and jac_err <= COMPILED_TOLERANCE):  # NaN too
            raise ValueError(f"the compiled scoring pass is far from the eager one (scores "
                             f"{out_err:.2g}, jacobian rows {jac_err:.2g} relative; a "
                             f"torch.compile bug: try another torch version)")

    @staticmethod
    def _cotangents(out: torch.Tensor) -> torch.Tensor:
        """(k, B, k): cotangent i selects output i of every sample."""
        b, k = out.shape
        return torch.eye(k, device=out.device, dtype=out.dtype)[:, None, :].expand(k, b, k)

    def _batched_jacobian(self, z: torch.Tensor, memory: torch.Tensor | None = None):
        z = z.detach().requires_grad_(True)
        loss, out, emb = self._outputs(z, memory)
        (jac,) = torch.autograd.grad(out, z, grad_outputs=self._cotangents(out),
                                     is_grads_batched=True)
        return loss, out, emb, jac.transpose(0, 1)

    def _func_jacobian(self, z: torch.Tensor, memory: torch.Tensor | None = None):
        def outputs(z):
            loss, out, emb = self._outputs(z, memory)
            return out, (loss, emb)

        out, vjp, (loss, emb) = torch.func.vjp(outputs, z.detach(), has_aux=True)
        (jac,) = torch.func.vmap(vjp)(self._cotangents(out))
        return loss, out, emb, jac.transpose(0, 1)

    def _replicated_jacobian(self, z: torch.Tensor, memory: torch.Tensor | None = None,
                             outputs=None):
        if getattr(self.clip, "num_cutouts", 0) > 0 or \
                getattr(self.generator, "noise_mode", None) == "random":
            raise ValueError("jacobian_mode='replicated' needs a deterministic forward pass: "
                             "this scorer draws random cutouts or generator noise per call; "
                             "use 'batched' or 'func'")
        b, k = len(z), 1 + self.num_measures
        copies = z.detach().repeat(k, 1).requires_grad_(True)  # copy i of every sample: k*b rows
        loss, out, emb = (outputs or self._outputs)(copies, memory)
        pick = torch.eye(k, device=out.device, dtype=out.dtype).repeat_interleave(b, dim=0)
        (grad,) = torch.autograd.grad(out, copies, grad_outputs=pick)
        return loss[:b], out[:b], emb[:b], grad.view(k, b, -1).transpose(0, 1)

    def evaluate_per_output(self, latents) -> Scores:
        """The released code's scheme: a separate forward+backward for every output.

        Kept as the reference for tests and the speed benchmark; same numbers as
        ``evaluate(latents, jacobian=True, update_memory=False)``.
        """
        self._require_gradients()
        z0 = self._to_tensor(latents)
        values, jacs = [], []
        for i in range(1 + self.num_measures):
            z = z0.clone().requires_grad_(True)
            with self._tf32(), self._autocast(), self._deterministic():
                images = self._decode(z)
                emb = at_least_fp32(self.clip.encode_image(images, check=False))
                if i == 0:
                    val = self._objective(self._objective_loss(emb, z))
                else:
                    val = -self._pair_gap(emb, i)
                (g,) = torch.autograd.grad(val.sum(), z)
            values.append(val.detach())
            jacs.append(g)
        out = torch.stack(values, 1)
        return Scores(objective=out[:, 0].cpu().numpy().astype(np.float64),
                      measures=out[:, 1:].cpu().numpy().astype(np.float64),
                      jacobian=torch.stack(jacs, 1).cpu().numpy().astype(np.float64))

    def _remember(self, loss: torch.Tensor, emb: torch.Tensor,
                  bad: np.ndarray | None = None) -> None:
        """Remember one random good (loss < 1; not ``bad``: NaN/inf scores or jacobians)
        embedding of the batch, FIFO of memory_size."""
        good = loss.cpu().numpy() < 1
        good = np.flatnonzero(good if bad is None else good & ~bad)
        if len(good) == 0:
            return
        i = int(self._rng.choice(good))
        self.memory = torch.cat([self.memory, emb[i:i + 1]])[-self.memory_size:]

    def drop_static_calls(self) -> None:
        """Forget the captured static calls (CUDA graphs and their memory pools, compiled
        passes' buffers): after changing the networks, or to free their GPU memory. Modes
        that ran uncompiled after a failed compile try compiling again."""
        self._static_calls.clear()
        self._shape_counts.clear()
        self.uncompiled_modes.clear()

    def reset(self) -> None:
        """Back to a fresh scorer's state: an empty uniqueness memory and its seeded choices.
        Every new search starts here, so a run never depends on the runs scored before it."""
        self.memory = self.memory.new_empty((0, self.memory.shape[1]))
        self._rng = np.random.default_rng(self._seed)
        self._call_rng = np.random.default_rng([self._seed, 1])

    # --- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a search checkpoint keeps of the scorer: the uniqueness memory (a numpy array) and
        the states of its two random generators (the memory's choices and the seeds of each
        call)."""
        return {"memory": self.memory.cpu().numpy(), "rng": self._rng.bit_generator.state,
                "call_rng": self._call_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`: the memory (onto CLIP's device) and the random states; an
        older checkpoint without ``call_rng`` leaves the call seeds' generator as it is."""
        self.memory = torch.as_tensor(state["memory"], device=self.clip.device)
        self._rng.bit_generator.state = state["rng"]
        if "call_rng" in state:  # (checkpoints before 2026-11-27 have none)
            self._call_rng.bit_generator.state = state["call_rng"]

    def settings(self) -> dict:
        """What scores depend on besides the prompts, weights and networks: a search records
        it, and a run resumes only under the same."""
        return {"memory_size": int(self.memory_size), "seed": self._seed,
                "cutouts": int(getattr(self.clip, "num_cutouts", 0)),
                "cutout_style": getattr(self.clip, "cutout_style", "project"),
                "noise_mode": getattr(self.generator, "noise_mode", None),
                "latent_norm_scale": self.latent_norm_scale,
                "objective_floor": self.objective_floor,
                "uniqueness_fill_scale": self.uniqueness_fill_scale,
                "clamp_images": self.clamp_images,
                "clip_precision": str(getattr(self.clip, "weights_dtype",
                                              torch.float32)).removeprefix("torch.")}


def clip_for_profile(p: dict, device: str | torch.device = "cpu") -> Clip:
    """The profile section's CLIP: ``clip``, ``clip_weights``, ``cutouts``, ``cutout_style``,
    ``clip_precision``."""
    p = with_earlier(p)
    return create_clip(p["clip"], weights=in_data_dir(p["clip_weights"]), device=device,
                       num_cutouts=p["cutouts"], cutout_style=p["cutout_style"],
                       precision=p["clip_precision"])


def set_cublas_workspace(p: dict, device: str | torch.device) -> None:
    """For a ``deterministic`` profile on CUDA, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless
    set), which deterministic cuBLAS matmuls need. cuBLAS reads it once, at the process's
    first CUDA matmul: call this before building the generator (StyleGAN2's constructor
    already runs its mapping network)."""
    if p.get("deterministic") and torch.device(device).type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def scorer_for_profile(generator: Generator, p: dict, device: torch.device) -> PromptScorer:
    """The profile section's CLIP (``clip``, ``clip_weights``, ``cutouts``) scoring
    ``generator`` with its objective prompts, measures and ``objective_weights``. (Build the
    generator after :func:`set_cublas_workspace`.)"""
    set_cublas_workspace(p, device)  # in time if the generator ran no CUDA matmul yet
    p = with_earlier(p)
    scorer = PromptScorer(generator, clip_for_profile(p, device), p["objective"], prompts(p),
                          weights=p["objective_weights"],
                          latent_norm_scale=p["latent_norm_scale"],
                          objective_floor=p["objective_floor"],
                          uniqueness_fill_scale=p["uniqueness_fill_scale"],
                          clamp_images=p["clamp_images"])
    scorer.tf32_matmul = bool(p.get("tf32_matmul", False))
    scorer.autocast = p.get("autocast")
    scorer.compile_static = bool(p.get("compile_static", False))
    scorer.deterministic = bool(p.get("deterministic", False))
    scorer._autocast()  # an unknown dtype fails here, before any search starts
    return scorer
