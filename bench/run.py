"""Benchmarks: scoring throughput (fused vs per-output), time-to-coverage of search
algorithms, IR-ResNet training throughput.

    python bench/run.py [--quick]
                        [--only scoring|components|search|iteration|training|loader|profile]

Writes bench/results/*.csv (with machine info) and prints a summary. Random weights are fine
for timing: throughput depends on the architecture, not on the values.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qdgs_lib.clip import PackedSelfAttention, create_clip  # noqa: E402
from qdgs_lib.generators.shapes_vae import ShapesVAE, load_shapes_vae  # noqa: E402
from qdgs_lib.generators.stylegan2 import StyleGAN2, StyleGAN2Generator  # noqa: E402
from qdgs_lib.generators.stylegan3 import StyleGAN3  # noqa: E402
from qdgs_lib.measures import grid, prompts, ranges  # noqa: E402
from qdgs_lib.profiles import get_profile  # noqa: E402
from qdgs_lib.scoring import (  # noqa: E402
    AUTOCAST_DTYPES,
    PromptScorer,
    jacobian_row_errors,
)
from qdgs_lib.search import QDSearch, SearchConfig  # noqa: E402
from qdgs_lib.utils import atomic_path, versions  # noqa: E402

# QDGS_BENCH_RESULTS: another folder for the result files (e.g. a GPU machine's outbox)
RESULTS = Path(os.environ.get("QDGS_BENCH_RESULTS", ROOT / "bench" / "results"))
# glibc maps big blocks (above a threshold that starts at 128 KiB and grows to at most 32 MiB)
# freshly and unmaps them on free, and trims the heap, so big temporary tensors page-fault afresh:
# a grouped-convolution StyleGAN2 forward pass on CPU took 270-820 ms instead of 220 ms. Keeping
# freed memory (as jemalloc/tcmalloc do) removes that; the benchmark re-executes itself with
# these settings unless --default-malloc is given.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
              "MALLOC_TOP_PAD_": str(1 << 30)}


def _malloc_tuned() -> bool:
    return all(os.environ.get(k) == val for k, val in MALLOC_ENV.items())


def machine(device: str | None = None) -> dict:
    """What every row carries: the device (``device``'s name: with several GPUs, the one the
    bench ran on, not the current one), CPU, threads, torch/CUDA versions, allocator setting,
    and the run it belongs to ($QDGS_BENCH_RUN: gpu_check.sh sets a UTC timestamp; the device
    command sets the commit)."""
    v = versions(device)
    return {"device": v["device"], "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": v["torch"],
            "cuda": torch.version.cuda or "",
            "malloc": "keeps freed memory" if _malloc_tuned() else "glibc default",
            "run": os.environ.get("QDGS_BENCH_RUN", "")}


def _time(fn, repeats: int) -> float:
    """Median seconds per call over ``repeats`` calls, after one warm-up call."""
    fn()  # warm-up (allocations, vmap rule lookup)
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def setups(device: str, quick: bool):
    """(name, scorer factory) for each generator + CLIP architecture."""
    shapes_p, faces_p = get_profile("default", "shapes"), get_profile("default", "faces")

    def shapes():
        try:
            vae = load_shapes_vae(device=device)
        except FileNotFoundError:
            vae = ShapesVAE().eval().to(device)
        clip = create_clip("qdgs-shapes-clip", device=device, pretrained=False)
        return PromptScorer(vae, clip, shapes_p["objective"], prompts(shapes_p))

    def stylegan_vit(packed_attention="auto"):
        torch.manual_seed(0)
        net = StyleGAN2().to(device)  # the paper's FFHQ-256 architecture, random weights
        gen = StyleGAN2Generator(net, num_std_samples=2000)
        clip = create_clip("ViT-B-32-quickgelu", device=device, pretrained=False,
                           packed_attention=packed_attention)
        return PromptScorer(gen, clip, faces_p["objective"], prompts(faces_p),
                            weights=faces_p["objective_weights"])

    def toy_faces():
        from qdgs_lib.generators.toy_faces import ToyFaces

        clip = create_clip("qdgs-faces-clip", device=device, pretrained=False)
        return PromptScorer(ToyFaces().to(device), clip, faces_p["objective"], prompts(faces_p),
                            weights=faces_p["objective_weights"])

    out = [("shapes-VAE + qdgs-shapes-clip", shapes), ("toy faces + qdgs-faces-clip", toy_faces)]
    out.append(("StyleGAN2-256 + ViT-B/32", stylegan_vit))
    return out


def paper_profile_scorer(device: str) -> PromptScorer:
    """StyleGAN2-256 + ViT-B/32 (random weights) as the ``paper`` profile scores them now:
    w+ latents, the half-norm latent penalty, the unfloored objective, unclamped faces, the
    whole image average-pooled, CLIP as clip.load gives it (float16 on CUDA): the released
    code's settings."""
    p = get_profile("paper", "faces")
    torch.manual_seed(0)
    gen = StyleGAN2Generator(StyleGAN2().to(device), num_std_samples=2000,
                             latent_space=p["latent_space"])
    clip = create_clip("ViT-B-32-quickgelu", device=device, pretrained=False,
                       cutout_style=p["cutout_style"], precision=p["clip_precision"])
    return PromptScorer(gen, clip, p["objective"], prompts(p), weights=p["objective_weights"],
                        latent_norm_scale=p["latent_norm_scale"],
                        objective_floor=p["objective_floor"],
                        uniqueness_fill_scale=p["uniqueness_fill_scale"],
                        clamp_images=p["clamp_images"])


def _fill_memory(scorer: PromptScorer) -> None:
    """A full uniqueness memory, as in a search's steady state (when the objective uses it)."""
    if scorer.weights[2] > 0:
        gen = scorer.generator
        z = gen.sample_prior(scorer.memory_size, seed=1)
        with torch.no_grad():  # in batches of 8: the peak GPU memory stays the search's
            scorer.memory = torch.cat([scorer.clip.encode_image(gen.decode(part))
                                       for part in z.split(8)])


def bench_scoring(device: str, quick: bool, only_setup: str | None = None) -> pd.DataFrame:
    """Solutions/s with jacobians: fused (one forward, 1+m backward passes; ``batched``,
    ``func`` and ``loop``) vs per-output (a forward and a backward per output, as the released
    code did).

    For StyleGAN2 the released scheme also ran NVIDIA's generator as it runs in eval mode
    (grouped "fused" modulated convolutions, whose backward computes per-sample weight
    gradients); ``per_output_released`` is that, ``per_output`` uses the same generator code as
    the fused scheme (split modulated convolutions with their hand-written backward), so the
    two speedups separate what the fused scheme and the generator's backward each contribute.
    """
    rows = []
    for name, make in setups(device, quick):
        if only_setup and only_setup not in name:
            continue
        try:
            scorer = make()
        except FileNotFoundError as e:  # e.g. a shipped CLIP left out of a copy of the repo
            print(f"skipped {name}: {e}", flush=True)
            continue
        gen = scorer.generator
        big = "StyleGAN2" in name
        # batch 1: what CMA-MAEGA asks jacobians for (one per emitter); 4..64: larger batches
        if quick:
            batch_sizes = [1, 4]
        elif big and device == "cpu":
            batch_sizes = [1, 4]  # StyleGAN2-256 + ViT-B/32: seconds per solution on 2 cores
        else:
            batch_sizes = [1, 4, 8, 16, 32, 64]
        repeats = 1 if quick else 3
        _fill_memory(scorer)
        for b in batch_sizes:
            z = gen.sample_prior(b, seed=0).cpu().numpy()
            t = {}
            scorer.cuda_graphs = False  # the three modes and the per-output scheme: eager
            for mode in ("batched", "func", "loop"):
                scorer.jacobian_mode = mode
                t[mode] = _time(lambda z=z, s=scorer: s.evaluate(z, jacobian=True,
                                                                 update_memory=False), repeats)
            graphed = float("nan")  # the auto mode as one captured CUDA graph per call
            if device.startswith("cuda") and b <= scorer.static_max_batch:
                scorer.jacobian_mode, scorer.cuda_graphs = "auto", True
                graphed = _time(lambda z=z, s=scorer: s.evaluate(z, jacobian=True,
                                                                 update_memory=False), repeats)
                scorer.cuda_graphs = False
                scorer.drop_static_calls()  # each graph holds a memory pool: free them
                torch.cuda.empty_cache()
            per = _time(lambda z=z, s=scorer: s.evaluate_per_output(z), repeats)
            per_released = per
            if hasattr(gen, "modconv"):
                gen.modconv = "fused"
                per_released = _time(lambda z=z, s=scorer: s.evaluate_per_output(z), repeats)
                gen.modconv = "auto"
            scorer.jacobian_mode = "auto"
            best = min(t.values())
            rows.append({"setup": name, "measures": scorer.num_measures, "batch": b,
                         "fused_batched_sol_per_s": b / t["batched"],
                         "fused_func_sol_per_s": b / t["func"],
                         "fused_loop_sol_per_s": b / t["loop"],
                         "fused_sol_per_s": b / best, "graphed_auto_sol_per_s": b / graphed,
                         "per_output_sol_per_s": b / per,
                         "per_output_released_sol_per_s": b / per_released,
                         "speedup": per / best, "speedup_vs_released": per_released / best,
                         "repeats": repeats, **machine(device)})
            print(f"{name:32s} B={b:3d}  fused {b / best:7.3f} sol/s (batched "
                  f"{b / t['batched']:.3f}, func {b / t['func']:.3f}, loop {b / t['loop']:.3f},"
                  f" graphed {b / graphed:.3f})"
                  f"  per-output "
                  f"{b / per:7.3f} (released {b / per_released:.3f})  x{per / best:.2f} "
                  f"(vs released x{per_released / best:.2f})", flush=True)
    return pd.DataFrame(rows)


def bench_components(device: str, quick: bool) -> pd.DataFrame:
    """Milliseconds per forward and per backward pass of StyleGAN2-256 (grouped vs split
    modulated convolutions; batch 1), of StyleGAN3-T and -R at 256 px (batch 1) and of
    ViT-B/32 (open_clip's attention modules vs PackedSelfAttention; batch 1 and 4): where the
    scoring time goes. The vmapped column is the scorer's backward: 1 + 4 cotangents in one
    pass."""
    name, make = setups(device, quick)[-1]
    scorer = make()
    gen, clip = scorer.generator, scorer.clip
    q = gen.sample_prior(1, seed=0)
    repeats = 1 if quick else 5
    rows = []

    def fwd_bwd(part, forward, x, cotangents=5, lean=False):
        """forward, one backward, and the scorer's backward: ``cotangents`` (1 + m outputs)
        in one vmapped pass (``is_grads_batched``). ``lean``: one graph at a time (one timed
        forward, one backward that frees it; no vmapped pass), for networks whose graph
        fills half the memory."""
        x = x.detach().requires_grad_(True)
        if lean:
            t0 = time.perf_counter()
            y = forward(x)
            fwd = time.perf_counter() - t0
            t0 = time.perf_counter()
            torch.autograd.grad(y, x, torch.randn_like(y))
            bwd, vmapped = time.perf_counter() - t0, float("nan")
            del y
        else:
            y = forward(x)
            g = torch.randn_like(y)
            gs = torch.randn(cotangents, *y.shape, device=y.device)
            fwd = _time(lambda: forward(x), repeats)
            bwd = _time(lambda: torch.autograd.grad(y, x, g, retain_graph=True), repeats)
            vmapped = _time(lambda: torch.autograd.grad(y, x, gs, retain_graph=True,
                                                        is_grads_batched=True), repeats)
        rows.append({"part": part, "batch": len(x), "forward_ms": 1e3 * fwd,
                     "backward_ms": 1e3 * bwd, f"backward_x{cotangents}_vmapped_ms":
                     1e3 * vmapped, "repeats": 1 if lean else repeats, **machine(device)})
        print(f"{part:42s} B={len(x)} forward {1e3 * fwd:7.1f} ms  backward {1e3 * bwd:7.1f} "
              f"ms  {cotangents} vmapped backward passes {1e3 * vmapped:7.1f} ms", flush=True)

    for mode in ("fused", "split"):
        gen.modconv = mode
        fwd_bwd(f"StyleGAN2-256 ({mode} modconv)", gen.decode, q)
    gen.modconv = "auto"
    # StyleGAN3 at 256 px as NVIDIA's train.py configures it (T: --cbase 32768 --cmax 512;
    # R: both doubled, 1x1 convolutions, radial filters), searched in w like StyleGAN2. On a
    # CPU T alone, lean: its graph alone takes 11 GB at batch 1 (the reference ops'
    # full-resolution intermediates); two graphs and the vmapped backward ran this 24 GB
    # machine out of memory
    configs = (("T", {}), ("R", {"channel_base": 65536, "channel_max": 1024,
                                 "conv_kernel": 1, "use_radial_filters": True}))
    for config, kw in configs[:1] if device == "cpu" else configs:
        torch.manual_seed(0)
        sg3 = StyleGAN2Generator(StyleGAN3(**kw).eval().to(device), num_std_samples=2000)
        fwd_bwd(f"StyleGAN3-{config}-256", sg3.decode, sg3.sample_prior(1, seed=0),
                lean=device == "cpu")
        del sg3
    with torch.no_grad():
        img = gen.decode(gen.sample_prior(4, seed=0))
    for packed in (False, True):  # open_clip's attention modules vs PackedSelfAttention
        pack = create_clip("ViT-B-32-quickgelu", device=device, pretrained=False,
                           packed_attention=packed)
        pack.load_state_dict(clip.state_dict())
        for b in (1, 4):
            fwd_bwd(f"ViT-B/32 image tower ({'packed' if packed else 'open_clip'} attention)",
                    lambda x, c=pack: c.encode_image(x, check=False), img[:b])
    return pd.DataFrame(rows)


def bench_search(device: str, quick: bool) -> pd.DataFrame:
    """Coverage reached per evaluation and per second, shapes VAE + shapes CLIP."""
    from qdgs_lib.shapes_poc import build_scorer

    p = get_profile("default", "shapes")
    iterations = 300 if quick else 2000
    rows = []
    tmp = Path(tempfile.mkdtemp())
    try:
        for alg in ["cma_maega", "cma_mae", "random"]:
            scorer = build_scorer(p, device)
            cfg = SearchConfig(dims=grid(p), ranges=ranges(p), algorithm=alg,
                               iterations=iterations, sigma0=p["sigma0"], lr=p["lr"], seed=0,
                               checkpoint_every=10**9)
            s = QDSearch(scorer, cfg, tmp / alg)
            s.run(progress=False)
            m = s.metrics()
            m["algorithm"] = alg
            rows.append(m)
            last = m.iloc[-1]
            print(f"{alg:10s} coverage {last.coverage:.3f} after {last.evaluations} evals, "
                  f"{last.seconds:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp)
    df = pd.concat(rows)
    for k, v in machine(device).items():
        df[k] = v
    return df


class _WallClockSearch(QDSearch):
    """A search that notes when each iteration's metrics row was written: the wall-clock
    period of an iteration (its step, the row, the progress bar), where ``metrics().seconds``
    counts the steps alone; and the time its scorer's calls took, by kind (each call ends
    with a copy to the host, so its time is the device's too)."""

    def __init__(self, scorer, cfg, outdir):
        super().__init__(scorer, cfg, outdir)
        self.scoring_s = {"jacobian": 0.0, "values": 0.0}
        self.logged_at, self.scoring_at = {}, {}  # by iteration
        evaluate = scorer.evaluate

        def timed(latents, jacobian=False, update_memory=True):
            t0 = time.perf_counter()
            try:
                return evaluate(latents, jacobian=jacobian, update_memory=update_memory)
            finally:
                self.scoring_s["jacobian" if jacobian else "values"] += time.perf_counter() - t0

        scorer.evaluate = timed  # an instance attribute: removed again by `release`

    def save_checkpoint(self) -> None:  # timing only: no pickle of two paper-scale archives
        pass  # (1.3 GB each, written at the end of every row: seconds, and disk)

    def start_latent(self):  # a fresh start empties the memory; fill it as in a steady state
        x0 = super().start_latent()
        _fill_memory(self.scorer)
        return x0

    def _log(self) -> None:
        if self.iteration == 1:  # in the warm-up: the archives' memory as in a steady state
            for archive in (self.result_archive, self.scheduler.archive):
                _prefault(archive)
        super()._log()
        self.logged_at[self.iteration] = time.perf_counter()
        self.scoring_at[self.iteration] = dict(self.scoring_s)

    def release(self) -> None:
        del self.scorer.evaluate


def _prefault(archive) -> None:
    """Touch every page of a pyribs archive's storage, leaving its values as they are.

    The storage is allocated but untouched (``np.empty``), so the first elite in each page
    (numpy asks for 2 MiB huge pages) pays for zeroing it: ~1 ms per page on this CPU, 3.7 ms
    per batch-4 ``add`` into an empty paper-scale archive (512 floats per cell) against 0.08
    ms once touched. A 60k-iteration search touches each page once (under 1 s in all); a
    short timed window right after the start would count it in every iteration.
    """
    store = getattr(archive, "_store", None)  # pyribs internals: skip if they change
    for arr in getattr(store, "_fields", {}).values():
        flat = arr.reshape(-1)  # a view (the fields are contiguous)
        step = max(1, 4096 // flat.itemsize)
        flat[::step] = flat[::step].copy()  # one write per 4 KiB page, same values


_PROBE_SEED = 123


def _one_jacobian(scorer: PromptScorer):
    z = scorer.generator.sample_prior(1, seed=_PROBE_SEED).cpu().numpy()
    return scorer.evaluate(z, jacobian=True, update_memory=False)


def _deviation_from_eager(scorer: PromptScorer, got) -> tuple[float, float]:
    """How far ``got`` (``_one_jacobian`` under a row's settings, as its search left the
    scorer: graphs captured, memory) is from an eager ``func`` call with torch's default
    settings: the largest jacobian row error (``jacobian_row_errors``), and the largest
    measure error."""
    names = ("jacobian_mode", "cuda_graphs", "tf32_matmul", "autocast", "deterministic")
    settings = {k: getattr(scorer, k) for k in names}
    for k, v in zip(names, ("func", False, False, None, False), strict=True):
        setattr(scorer, k, v)
    try:
        ref = _one_jacobian(scorer)
    finally:
        for k, v in settings.items():
            setattr(scorer, k, v)
    return (float(jacobian_row_errors(got.jacobian, ref.jacobian).max()),
            float(np.abs(got.measures - ref.measures).max()))


# a row's settings that are scorer attributes (``_scorer_settings``), not contexts
_SCORER_SETTINGS = {"compile", "deterministic",
                    *(f"autocast_{dtype}" for dtype in AUTOCAST_DTYPES)}


@contextmanager
def _extra_setting(extra: str | None):
    """cuDNN's autotuner, or SDPA restricted to its math backend, for the duration of a run.
    ``extra`` joins settings with ``+`` (``autocast_float16+compile``); ``compile`` and
    ``autocast_*`` are scorer attributes (``_iteration_row`` sets them): nothing to set here."""
    _scorer_settings(extra)  # (refuses two autocast settings)
    with ExitStack() as stack:
        for setting in (extra or "").split("+"):
            if not setting or setting in _SCORER_SETTINGS:
                continue
            if setting == "cudnn_benchmark":
                stack.enter_context(_cudnn_benchmark())
            elif setting == "math_attention":
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            else:
                raise ValueError(f"unknown setting {setting!r}")
        yield


@contextmanager
def _cudnn_benchmark():
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _scorer_settings(extra: str | None) -> tuple[bool, str | None, bool]:
    """(``compile_static``, ``autocast``, ``deterministic``) that a row's ``extra`` asks
    of the scorer."""
    settings = (extra or "").split("+")
    autocast = [x.removeprefix("autocast_") for x in settings if x.startswith("autocast_")]
    if len(autocast) > 1:
        raise ValueError(f"one autocast setting per row, got {extra!r}")
    return "compile" in settings, autocast[0] if autocast else None, "deterministic" in settings


def _iteration_row(scorer: PromptScorer, outdir: Path, warmup: int, timed: int, mode: str,
                   graphs: bool, tf32: bool, extra: str | None, label: str = "",
                   search_kw: dict | None = None) -> dict:
    """One timed paper-scale search on ``scorer`` with these settings (see bench_iteration);
    ``search_kw``: SearchConfig settings other than batch 4 (the paper profile's)."""
    cuda = scorer.clip.device.type == "cuda"
    scorer.jacobian_mode, scorer.cuda_graphs, scorer.tf32_matmul = mode, graphs, tf32
    scorer.compile_static, scorer.autocast, scorer.deterministic = _scorer_settings(extra)
    scorer.drop_static_calls()
    cfg = SearchConfig(**{"dims": (50, 25, 5, 25), "ranges": [(-0.1, 0.1)] * 4,
                          "iterations": warmup + timed, "batch_size": 4, "num_emitters": 1,
                          "x0_samples": 8, "seed": 0, "checkpoint_every": 10**9,
                          **(search_kw or {})})
    search = _WallClockSearch(scorer, cfg, outdir)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        t0 = time.perf_counter()
        with _extra_setting(extra):
            search.run(progress=False)
            got = _one_jacobian(scorer)  # as the search left it: graphs, memory, setting
        # what ran, not what was asked: a failed capture falls back to eager with a warning
        graphs_ran = scorer.cuda_graphs
        captured = sum(c.graph is not None for c in scorer._static_calls.values())
        # the modes whose static calls ran compiled: a mode whose compile failed or was far
        # from eager runs uncompiled (a warning), the others stay compiled
        compiled = " ".join(sorted({k[0] for k in scorer._static_calls if k[-1] == "compiled"}))
    finally:
        search.release()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    try:  # (a failing comparison must not lose the timings measured above)
        jac_err, measures_err = _deviation_from_eager(scorer, got)
    except Exception as e:  # noqa: BLE001 - report and keep the row
        print(f"comparison with eager failed: {type(e).__name__}: {e}", flush=True)
        jac_err = measures_err = float("nan")
    warmup_s = search.logged_at[warmup] - t0
    sec = search.metrics().set_index("iteration").seconds
    ms = 1e3 * (sec[warmup + timed] - sec[warmup]) / timed
    wall = 1e3 * (search.logged_at[warmup + timed] - search.logged_at[warmup]) / timed
    a, b = search.scoring_at[warmup], search.scoring_at[warmup + timed]
    jac_ms, values_ms = (1e3 * (b[k] - a[k]) / timed for k in ("jacobian", "values"))
    print(f"CMA-MAEGA paper-scale iteration{label}, {mode:7s} graphs={graphs_ran!s:5s} "
          f"({captured} captured{', compiled: ' + compiled if compiled else ''}) "
          f"{extra + ' ' if extra else ''}(warm-up {warmup_s:.0f} s) "
          f"tf32 matmul={tf32!s:5s}: {ms:7.1f} ms, {wall:7.1f} ms with logging = jacobian "
          f"call {jac_ms:.1f} + values call {values_ms:.1f} + pyribs and the rest "
          f"{wall - jac_ms - values_ms:.1f} (60k iterations: {wall * 60_000 / 3.6e6:.2f} h, "
          f"peak {peak:.1f} GiB; vs eager func: jacobian {jac_err:.1e}, measures "
          f"{measures_err:.1e})", flush=True)
    return {"jacobian_mode": mode, "cuda_graphs": graphs_ran, "graphs_captured": captured,
            "tf32_matmul": tf32 and cuda,
            "tf32_conv": torch.backends.cudnn.allow_tf32 and cuda, "extra": extra or "",
            "compiled": compiled,  # e.g. "func values"; "" where nothing ran compiled
            "autocast": scorer.autocast or "", "deterministic": scorer.deterministic,
            "ms_per_iteration": ms, "wall_ms_per_iteration": wall,
            "jacobian_call_ms": jac_ms, "values_call_ms": values_ms,
            "rest_ms": wall - jac_ms - values_ms,
            "jacobian_rel_err": jac_err, "measures_abs_err": measures_err,
            "iterations_timed": timed, "warmup_s": warmup_s,
            "hours_for_60k": wall * 60_000 / 3.6e6, "peak_gpu_gib": peak,
            "coverage": search.result_archive.stats.coverage,
            "latent_dim": scorer.solution_dim, "batch_size": cfg.batch_size,
            "selection_rule": cfg.selection_rule}


CANDIDATES = {  # name -> (extra setting, jacobian mode, tf32 matmuls); all with CUDA graphs
    "baseline": (None, "func", False),  # the same card's fp32 reference for the rows below
    "autocast_float16": ("autocast_float16", "func", False),
    "autocast_bfloat16": ("autocast_bfloat16", "func", False),
    "math_attention": ("math_attention", "func", False),
    "replicated": (None, "replicated", False),
    # deterministic kernels while scoring (bitwise-reproducible searches): what they cost
    "deterministic": ("deterministic", "func", False),
    # the paper profile as it now stands (the released code's): w+ latents (7,168 numbers,
    # archives of 9 GB each), batch 3 + 1, "filter" parents, its objective; fp32, graphed
    "paper_profile": (None, "func", False),
    # func with compile_static: the values calls compiled (measured right on an H200 before
    # the split layers' fix, run 7) and the whole func jacobian (vjp + vmap in one graph)
    "func+compile": ("compile", "func", False),
    "func+compile+tf32_matmul": ("compile", "func", True),
    "autocast_float16+compile": ("autocast_float16+compile", "replicated", False),
    "compile": ("compile", "replicated", False),
    # cuDNN's plan cache ignores the autotuner flag: plans cached by earlier rows would be
    # reused untuned, and tuned plans would leak into later rows. Run it in its own process
    # (gpu_check.sh --candidates does): --candidates cudnn_benchmark
    "cudnn_benchmark": ("cudnn_benchmark", "func", False),
}
PAPER_PROFILE_SEARCH = {k: get_profile("paper", "faces")[k]
                        for k in ("batch_size", "selection_rule")}
DEFAULT_CANDIDATES = [k for k in CANDIDATES if k != "cudnn_benchmark"]


def bench_iteration(device: str, quick: bool, candidates: bool | list[str] = False,
                    partial: str | None = None) -> pd.DataFrame:
    """Milliseconds per CMA-MAEGA iteration at the paper's scale: StyleGAN2-256 + ViT-B/32
    (random weights), objective + 4 measures with the paper's objective weights (a full
    uniqueness memory, as after a search's first iterations), the paper's 50x25x5x25
    archive over +-0.1, batch 4, one emitter; eager and CUDA-graphed, both vmapped jacobian
    modes, and graphed with ``PromptScorer.tf32_matmul`` (CLIP's matmuls in TF32; cuDNN
    convolutions use TF32 by default). Timed after warm-up iterations (graph captures, cuDNN
    autotuning). One scorer serves every row (its graphs are dropped between rows).

    ``candidates``: instead, graphed rows for the next steps. In fp32 semantics: cuDNN's
    autotuner for these fixed shapes; SDPA's math backend (its vmapped backward is batched
    matmuls, where the default kernels have no vmap rule and run cotangent by cotangent);
    the ``replicated`` jacobian mode (no vmap: every op at a 5x batch); and ``replicated``
    with ``compile_static`` (torch.compile'd forward and backward inside the graph; its
    compile time is in the warm-up iterations, and reported apart); ``func`` with
    ``compile_static`` (the values calls and the whole vmapped jacobian compiled; also with
    TF32 matmuls). In half precision: ``func`` under ``PromptScorer.autocast`` float16 and
    bfloat16 (their error against fp32 is in the row); and ``replicated`` compiled under
    float16 (``autocast_float16+compile``).

    Without ``candidates`` the last row is the host floor: the same search around two tiny
    networks (``_host_floor_scorer``), i.e. what pyribs, the scorer's host side and the loop
    cost per iteration whatever the networks.

    ``partial``: a results name to write the rows to after each row (a run cut short by a
    time limit keeps what it measured)."""
    scorer = setups(device, quick)[-1][1]()  # StyleGAN2-256 + ViT-B/32, the faces objective
    warmup, timed = (2, 3) if quick or device == "cpu" else (5, 50)
    cuda = device.startswith("cuda")
    # (candidate name, cuda graphs, tf32 matmuls, extra setting, jacobian modes)
    if not candidates:
        variants = [("", False, False, None, ("batched", "func"))]
        if cuda:
            variants += [("", True, False, None, ("batched", "func")),
                         ("", True, True, None, ("batched", "func"))]
    else:  # static calls (on a CPU: eager on static buffers, where compile_static applies);
        # the quick rows first, the minutes of compiling last
        names = DEFAULT_CANDIDATES if candidates is True else candidates
        variants = [(k, True, CANDIDATES[k][2], CANDIDATES[k][0], (CANDIDATES[k][1],))
                    for k in names]
    packed = any(isinstance(m, PackedSelfAttention) and (cuda or not m.cuda_only)
                 for m in scorer.clip.modules())
    rows = []
    tmp = Path(tempfile.mkdtemp())
    try:
        for name, graphs, tf32, extra, modes in variants:
            for mode in modes:
                paper = name == "paper_profile"
                try:
                    row = _iteration_row(
                        paper_profile_scorer(device) if paper else scorer,
                        tmp / f"{mode}_{len(rows)}", warmup, timed, mode, graphs, tf32, extra,
                        search_kw=PAPER_PROFILE_SEARCH if paper else None)
                except Exception as e:  # noqa: BLE001 - a candidate may fail (e.g. compiling)
                    if not candidates:
                        raise
                    print(f"CMA-MAEGA iteration {name or mode}: FAILED "
                          f"{type(e).__name__}: {e}", flush=True)
                    row = {"jacobian_mode": mode, "cuda_graphs": graphs, "extra": extra or "",
                           "tf32_matmul": tf32, "error": f"{type(e).__name__}: {e}"[:300]}
                # (candidate: the row's name in CANDIDATES; "" for the standard rows)
                rows.append({"candidate": name, **row, "scorer": "StyleGAN2-256 + ViT-B/32",
                             "packed_attention": packed, **machine(device)})
                if partial:
                    write(pd.DataFrame(rows), partial)
        if not candidates:  # the same loop around networks that cost next to nothing
            try:
                row = _iteration_row(_host_floor_scorer(device), tmp / "host_floor", warmup,
                                     100 if quick or device == "cpu" else 300, "func", cuda,
                                     False, None, " (host floor: toy networks)")
            except Exception as e:  # noqa: BLE001 - keep the paper-scale rows above
                print(f"host floor row: FAILED {type(e).__name__}: {e}", flush=True)
                row = {"error": f"{type(e).__name__}: {e}"[:300]}
            rows.append({**row, "scorer": "host floor (toy 512-d networks)", **machine(device)})
    finally:
        shutil.rmtree(tmp)
    return pd.DataFrame(rows)


def _host_floor_scorer(device: str) -> PromptScorer:
    """The paper's search around two tiny networks (tests/toys.py): latent 512 -> 3x8x8
    image -> 16-d embedding, the faces prompts and objective weights. Its iteration time is
    pyribs, the scorer's host-side work and the search loop: the floor under any network."""
    from tests.toys import ToyClip, ToyGenerator

    p = get_profile("default", "faces")
    return PromptScorer(ToyGenerator(latent_dim=512).to(device), ToyClip().to(device),
                        p["objective"], prompts(p), weights=p["objective_weights"])


def time_to_coverage(df: pd.DataFrame, targets=(0.1, 0.2, 0.3, 0.4)) -> pd.DataFrame:
    """Evaluations and seconds each algorithm needed to first reach each coverage target."""
    rows = []
    for alg, m in df.groupby("algorithm", sort=False):
        for t in targets:
            hit = m[m.coverage >= t]
            rows.append({"algorithm": alg, "coverage": t,
                         "evaluations": int(hit.evaluations.iloc[0]) if len(hit) else None,
                         "seconds": float(hit.seconds.iloc[0]) if len(hit) else None})
    return pd.DataFrame(rows)


def _plain_loop_ips(name: str, batch: int, precision: str, steps: int, device: str) -> float:
    """The ceiling: the same network, head and optimizer in a bare loop, the batch already on
    the GPU, no augmentation, no logging, no host sync until the end."""
    from qdgs_lib.models.heads import AdaFace
    from qdgs_lib.models.iresnet import build_iresnet
    from qdgs_lib.train import sgd_no_bn_decay

    net = build_iresnet(name).to(device).to(memory_format=torch.channels_last)
    head = AdaFace(net.embedding_dim, 100).to(device)
    opt = sgd_no_bn_decay([net, head], 0.1)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    x = torch.randn(batch, 3, net.input_size, net.input_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch, device=device) % 100

    def step():
        with torch.autocast("cuda", dtype=dtype):
            emb, norms = net(x)
            loss = torch.nn.functional.cross_entropy(head(emb.float(), norms.float(), y), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def bench_training(device: str, quick: bool) -> pd.DataFrame:
    """IR-ResNet + AdaFace training throughput (images/s) of ``RecognitionTrainer`` on uint8
    images (as decoded), with its augmentations. CPU: batch 32, fp32; ir_small at batch 64
    with and without channels_last and torch.compile (its compile is timed apart, in the
    warm-up epoch). GPU: IR-101 at the paper's batch 64 (fp16) and at 256 (bf16),
    channels_last, next to the bare-loop ceiling (``_plain_loop_ips``)."""
    from qdgs_lib.data.identities import TensorFaces
    from qdgs_lib.models.heads import AdaFace
    from qdgs_lib.models.iresnet import build_iresnet
    from qdgs_lib.train import RecognitionTrainer

    gpu = device.startswith("cuda")
    if not gpu:
        runs = [(n, 32, "fp32", True, False)
                for n in ["ir_small"] + ([] if quick else ["ir18", "ir50"])]
        runs += [("ir_small", 64, "fp32", False, False), ("ir_small", 64, "fp32", True, False),
                 ("ir_small", 64, "fp32", True, True)]
    elif quick:
        runs = [("ir_small", 64, "fp16", True, False)]
    else:
        runs = [("ir101", 64, "fp16", True, False), ("ir101", 64, "bf16", True, False),
                ("ir101", 256, "bf16", True, False)]  # IR-50: results/training_gpu.csv runs 1-3
    rows = []
    for name, batch, precision, channels_last, compile in runs:
        net = build_iresnet(name)
        steps = (2 if name != "ir_small" else 10) if not gpu else (5 if quick else 60)
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (batch * (steps + 1), 3, net.input_size, net.input_size),
                          dtype=torch.uint8, generator=g)
        y = torch.arange(len(x)) % 100
        tmp = Path(tempfile.mkdtemp())
        try:
            tr = RecognitionTrainer(net, AdaFace(net.embedding_dim, 100),
                                    TensorFaces(x[:batch], y[:batch]), tmp,
                                    batch_size=batch, device=device, progress=False,
                                    precision=precision, channels_last=channels_last,
                                    compile=compile)
            t0 = time.perf_counter()
            tr.train_epoch()  # warm-up (AMP, cudnn autotune, torch.compile)
            warmup = time.perf_counter() - t0
            tr.data = TensorFaces(x, y)
            if gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tr.train_epoch()
            if gpu:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        finally:
            shutil.rmtree(tmp)
        ips = (len(x) // batch) * batch / dt
        plain = _plain_loop_ips(name, batch, precision, steps, device) if gpu else float("nan")
        rows.append({"backbone": name, "input": net.input_size, "batch": batch,
                     "precision": precision, "channels_last": channels_last,
                     "compile": compile, "warmup_s": warmup, "images_per_s": ips,
                     "plain_loop_images_per_s": plain, "share_of_plain": ips / plain,
                     **machine(device)})
        print(f"{name:9s} {net.input_size}px batch {batch:3d} {precision} channels_last "
              f"{channels_last} compile {compile}: trainer {ips:8.1f} "
              f"images/s (bare loop {plain:8.1f}, {ips / plain:.0%})", flush=True)
        del tr, net
    return pd.DataFrame(rows)


def bench_augment(device: str, quick: bool) -> pd.DataFrame:
    """Images/s of AdaFace's augmentations alone (``face_augment`` on the device, as the
    trainer runs them), batch 64 of 112 px uint8 faces: each style at the paper's p = 0.2 and
    at p = 1 (every sample cropped, resized and jittered). The trainer's GPU must not wait on
    this either."""
    from qdgs_lib.augment import face_augment
    from qdgs_lib.utils import unit_range

    gpu = device.startswith("cuda")
    batches = 5 if quick else (50 if gpu else 20)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 112, 112), dtype=torch.uint8, generator=g).to(device)
    rows = []
    for style in ("project", "released"):
        for p in (0.2, 1.0):
            face_augment(unit_range(x), g, p=p, style=style)  # warm-up (cv2 weights cached)
            if gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(batches):
                face_augment(unit_range(x), g, p=p, style=style)
            if gpu:
                torch.cuda.synchronize()
            ips = batches * len(x) / (time.perf_counter() - t0)
            rows.append({"style": style, "p": p, "batch": len(x), "size": 112,
                         "batches": batches, "images_per_s": ips, **machine(device)})
            print(f"augment {style:8s} p {p}: {ips:9.0f} images/s", flush=True)
    return pd.DataFrame(rows)


def bench_loader(device: str, quick: bool) -> pd.DataFrame:
    """Images/s the streaming training sets deliver (decode + resize + collate), batch 64:
    InsightFace RecordIO and identity folders of 112x112 JPEGs, 0-2 DataLoader workers. The
    trainer's GPU must not wait on this (IR-101 + AdaFace: ~1,200-2,700 images/s on an H200)."""
    from torch.utils.data import DataLoader

    from qdgs_lib.data.identities import IdentityFolders, RecordIOFaces
    from qdgs_lib.data.recordio import write_insightface_set
    from qdgs_lib.plumbing import _images, _jpeg

    n = 512 if quick else 4096
    tmp = Path(tempfile.mkdtemp())
    try:
        images = [_jpeg(im) for im in _images(n, np.random.default_rng(0))]
        labels = np.arange(n) % 64
        write_insightface_set(tmp / "rec", images, labels)
        for k, (data, y) in enumerate(zip(images, labels, strict=True)):
            (tmp / "folders" / f"{y:03d}").mkdir(parents=True, exist_ok=True)
            (tmp / "folders" / f"{y:03d}" / f"{k:05d}.jpg").write_bytes(data)
        rows = []
        for name, ds in (("recordio", RecordIOFaces(tmp / "rec")),
                         ("identity folders", IdentityFolders(tmp / "folders"))):
            for workers in [w for w in (0, 1, 2, 4, 8) if w <= (os.cpu_count() or 1)]:
                loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers,
                                    pin_memory=device.startswith("cuda"),
                                    generator=torch.Generator().manual_seed(0))
                t0 = time.perf_counter()
                count = sum(len(y) for _, y in loader)
                ips = count / (time.perf_counter() - t0)
                rows.append({"dataset": name, "workers": workers, "batch": 64,
                             "images": count, "images_per_s": ips, **machine(device)})
                print(f"{name:17s} workers {workers}: {ips:8.0f} images/s", flush=True)
    finally:
        shutil.rmtree(tmp)
    return pd.DataFrame(rows)


def profile_scoring(device: str, batches: tuple[int, ...] = (1, 4)) -> str:
    """Where the time of one fused evaluation goes (StyleGAN2-256 + ViT-B/32, jacobians in the
    scorer's ``auto`` mode): torch.profiler's top operators by total time, as text, one table
    per batch size. The call runs eagerly (a graph replay hides its kernels): on a GPU the
    kernels' CUDA time is what a CUDA graph replays, the CPU time is launch overhead."""
    from torch.profiler import ProfilerActivity, profile

    name, make = setups(device, quick=True)[-1]
    scorer = make()
    _fill_memory(scorer)
    scorer.cuda_graphs = False
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    key = "cuda_time_total" if device != "cpu" else "cpu_time_total"
    tables = []
    for batch in batches:
        z = scorer.generator.sample_prior(batch, seed=0).cpu().numpy()
        scorer.evaluate(z, jacobian=True, update_memory=False)  # warm-up
        with profile(activities=acts) as prof:
            scorer.evaluate(z, jacobian=True, update_memory=False)
        table = prof.key_averages().table(sort_by=key, row_limit=25)
        tables.append(f"# {name}, batch {batch}, one eager fused evaluate with jacobians "
                      f"({scorer._resolved_mode()}), {machine(device)}\n{table}")
    return "\n".join(tables)


def write(df: pd.DataFrame, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    print("wrote", path)
    return path


def candidates_results_name(candidates: list[str] | None, tag: str) -> str:
    """The results file of ``--only iteration_candidates [--candidates ...]``: named after
    the candidates asked for, in letters, digits and ``_-`` only (a ``+``, as in
    ``autocast_float16+compile``, kept the file from coming back from a lent GPU machine)."""
    named = "_" + "_".join(candidates).replace("+", "-") if candidates else ""
    return f"iteration_candidates{named}_{tag}"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=["scoring", "components", "search",
                                                  "iteration", "training", "loader",
                                                  "augment", "profile",
                                                  "iteration_candidates"],
                    help="iteration_candidates (only when named): the next steps' rows, "
                         "with minutes of torch.compile")
    ap.add_argument("--setup", help="scoring: only the setups whose name contains this")
    ap.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=None,
                    help="iteration_candidates: these rows only (default: all but "
                         "cudnn_benchmark, which needs a process of its own); the file is "
                         "named after them")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--default-malloc", action="store_true",
                    help="keep glibc's default allocator settings (results get a suffix)")
    args = ap.parse_args()
    if not args.default_malloc and not _malloc_tuned():  # (before CUDA starts)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    tag = "gpu" if args.device.startswith("cuda") else "cpu"
    if args.default_malloc:
        tag += "_default-malloc"
    if args.quick:  # a smoke run never overwrites the real numbers
        tag += "_quick"
    failed = []

    def section(name: str, fn) -> None:
        """One section; a failure is reported and the next section still runs."""
        if not (args.only is None or name in args.only):
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - every section's results are worth keeping
            import traceback

            traceback.print_exc()
            print(f"SECTION {name} FAILED: {type(e).__name__}: {e}", flush=True)
            failed.append(name)

    def search():
        df = bench_search(args.device, args.quick)
        write(df, f"search_{tag}")
        summary = time_to_coverage(df)
        print(summary.to_string(index=False))
        write(summary, f"search_time_to_coverage_{tag}")

    def candidates():
        name = candidates_results_name(args.candidates, tag)
        write(bench_iteration(args.device, args.quick, candidates=args.candidates or True,
                              partial=name), name)

    def profile():
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"profile_{tag}.txt"
        path.write_text(profile_scoring(args.device))
        print("wrote", path)

    section("scoring", lambda: write(bench_scoring(args.device, args.quick, args.setup),
                                     f"scoring_{tag}"))
    section("components", lambda: write(bench_components(args.device, args.quick),
                                        f"components_{tag}"))
    section("search", search)
    section("iteration", lambda: write(bench_iteration(args.device, args.quick,
                                                       partial=f"iteration_{tag}"),
                                       f"iteration_{tag}"))
    if args.only is not None and "iteration_candidates" in args.only:  # only when named
        section("iteration_candidates", candidates)
    section("training", lambda: write(bench_training(args.device, args.quick),
                                      f"training_{tag}"))
    section("loader", lambda: write(bench_loader(args.device, args.quick), f"loader_{tag}"))
    section("augment", lambda: write(bench_augment(args.device, args.quick),
                                     f"augment_{tag}"))
    section("profile", profile)
    if failed:
        sys.exit(f"failed sections: {failed}")


if __name__ == "__main__":
    main()
