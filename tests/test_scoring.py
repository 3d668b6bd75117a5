import os
import warnings

import numpy as np
import pytest
import torch
from toys import ToyClip, ToyGenerator

from qdgs_lib.scoring import NonFiniteScoresError, PromptScorer, angdist


def make_scorer(weights=(1.0, 0.5, 0.2)):
    return PromptScorer(ToyGenerator(), ToyClip(), ("good | fine", "bad"),
                        [("a", "b"), ("c", "d"), ("e", "f")], weights=weights)


def two_measure_scorer(memory_size: int = 3) -> PromptScorer:
    """The faces objective's weights (a uniqueness memory) on the toys, a short memory."""
    return PromptScorer(ToyGenerator(), ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")],
                        weights=(1.0, 0.5, 0.2), memory_size=memory_size)


def search_calls(rng: np.random.Generator, repeats: int) -> list:
    """CMA-MAEGA's calls, ``repeats`` times: jacobians at batch 1, then values at batch 4."""
    return [(rng.normal(0, 0.5, (b, 4)), b == 1) for _ in range(repeats) for b in (1, 4)]


def test_auto_mode_falls_back_to_loop_with_a_warning_but_not_on_out_of_memory(monkeypatch):
    z = np.random.default_rng(0).normal(0, 0.5, (2, 4))
    sc = make_scorer()
    ref = sc.evaluate(z, jacobian=True, update_memory=False)
    sc.generator.preferred_jacobian_mode = "batched"

    def no_vmap_rule(z):
        raise RuntimeError("Batching rule not implemented for aten::something")

    monkeypatch.setattr(sc, "_batched_jacobian", no_vmap_rule)
    with pytest.warns(UserWarning, match="'batched' failed on these networks.*'loop'"):
        got = sc.evaluate(z, jacobian=True, update_memory=False)
    assert sc.jacobian_mode == "loop"
    np.testing.assert_allclose(got.jacobian, ref.jacobian, rtol=1e-4, atol=1e-5)

    for error in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                  RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 4611686018427387904 bytes")):  # a CPU's
        def full(z, error=error):
            raise error

        sc = make_scorer()
        sc.generator.preferred_jacobian_mode = "batched"
        monkeypatch.setattr(sc, "_batched_jacobian", full)
        with pytest.raises(type(error), match="memory") as err:
            sc.evaluate(z, jacobian=True, update_memory=False)
        assert sc.jacobian_mode == "auto"  # a full device is no reason to change the mode
        # the device's own words, then what to do
        assert str(error) in str(err.value) and err.value.__cause__ is error
        assert "jacobian_mode 'batched'" in str(err.value)
        assert "all 4 outputs at once: set jacobian_mode='loop'" in str(err.value)


def test_angdist_matches_acos():
    x = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    expected = torch.arccos((x @ y.T).clamp(-1, 1))
    assert torch.allclose(angdist(x, y), expected, atol=1e-5)


def test_fused_jacobian_equals_per_output_and_finite_differences():
    sc = make_scorer()
    sc.memory = sc.clip.encode_image(sc.generator.decode(torch.randn(5, 4))).detach()
    z = np.random.default_rng(0).normal(0, 0.5, (6, 4))
    fused = sc.evaluate(z, jacobian=True, update_memory=False)
    ref = sc.evaluate_per_output(z)
    assert fused.jacobian.shape == (6, 4, 4)
    np.testing.assert_allclose(fused.objective, ref.objective, rtol=1e-5)
    np.testing.assert_allclose(fused.measures, ref.measures, atol=1e-6)
    np.testing.assert_allclose(fused.jacobian, ref.jacobian, rtol=1e-4, atol=1e-4)
    for mode in ("batched", "func", "loop", "replicated"):
        sc.jacobian_mode = mode
        other = sc.evaluate(z, jacobian=True, update_memory=False)
        np.testing.assert_allclose(other.jacobian, ref.jacobian, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(other.objective, fused.objective, rtol=1e-6)
    sc.jacobian_mode = "fast"
    with pytest.raises(ValueError, match="jacobian_mode"):
        sc.evaluate(z, jacobian=True)
    # auto: the generator's preferred mode
    sc.jacobian_mode = "auto"
    sc.generator.preferred_jacobian_mode = "loop"
    auto = sc.evaluate(z, jacobian=True, update_memory=False)
    np.testing.assert_allclose(auto.jacobian, ref.jacobian, rtol=1e-4, atol=1e-4)
    # central differences, in float64 arithmetic on the toy models
    sc.generator.double()
    sc.clip.double()
    sc._targets = [(p.double(), n.double()) for p, n in sc._targets]
    sc.memory = sc.memory.double()
    sc._to_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float64)
    eps = 1e-6
    fd = np.zeros_like(fused.jacobian)
    for j in range(4):
        d = np.zeros_like(z)
        d[:, j] = eps
        a, b = sc.evaluate(z + d, update_memory=False), sc.evaluate(z - d, update_memory=False)
        fd[:, 0, j] = (a.objective - b.objective) / (2 * eps)
        fd[:, 1:, j] = (a.measures - b.measures) / (2 * eps)
    np.testing.assert_allclose(fused.jacobian, fd, rtol=1e-3, atol=1e-3)


def test_objective_is_nonnegative_and_measures_have_sign_of_prompt():
    sc = make_scorer()
    z = np.random.default_rng(1).normal(0, 3, (64, 4))
    s = sc.evaluate(z)
    assert (s.objective >= 0).all() and np.isfinite(s.objective).all()
    # measure > 0 exactly when the image is closer to the positive prompt
    emb = sc.clip.encode_image(sc.generator.decode(torch.as_tensor(z, dtype=torch.float32)))
    pos, neg = sc.clip.encode_text(["a"]), sc.clip.encode_text(["b"])
    closer = (emb @ pos.T > emb @ neg.T).squeeze(1).numpy()
    assert ((s.measures[:, 0] > 0) == closer).all()


def test_uniqueness_memory_is_bounded_and_penalizes_repeats():
    """(Its first-in-first-out order: test_objective_and_search.py.)"""
    sc = make_scorer()
    sc.memory_size = 3
    z = np.random.default_rng(2).normal(0, 0.3, (4, 4))
    for _ in range(5):
        sc.evaluate(z)
    assert len(sc.memory) == 3
    # an image already in memory is less unique -> lower objective than without the memory
    with_mem = sc.evaluate(z, update_memory=False).objective
    sc.memory = sc.memory[:0]
    without = sc.evaluate(z, update_memory=False).objective
    assert (with_mem < without).any()


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros(4), np.full((2, 4), np.nan)])
def test_bad_latents_raise_clear_errors(bad):
    with pytest.raises(ValueError, match="latents"):
        make_scorer().evaluate(bad)


def test_prompts_must_be_pairs():
    with pytest.raises(ValueError, match="pairs"):
        PromptScorer(ToyGenerator(), ToyClip(), ("only one",), [("a", "b")])
    with pytest.raises(ValueError, match="at least one measure"):
        PromptScorer(ToyGenerator(), ToyClip(), ("a", "b"), [])


def test_prompt_pairs_must_name_two_ends():
    """A pair of one prompt twice scores every image 0 (the helper's probe got ranges of
    (-0.0, 0.05) and a constant objective); a measure pair given twice is one axis twice."""
    with pytest.raises(ValueError, match="measure 1 pair's two prompts are the same"):
        PromptScorer(ToyGenerator(), ToyClip(), ("g", "b"), [("a", "b"), ("c", "c | c")])
    with pytest.raises(ValueError, match="objective pair's two prompts are the same"):
        PromptScorer(ToyGenerator(), ToyClip(), (["g", "h"], "h | g"), [("a", "b")])
    with pytest.raises(ValueError, match="measure 0 pair's"):  # CLIP's tokenizer: the same
        PromptScorer(ToyGenerator(), ToyClip(), ("g", "b"), [("A cat.", "a  cat.")])
    with pytest.warns(UserWarning, match="same prompt pair"):
        PromptScorer(ToyGenerator(), ToyClip(), ("g", "b"), [("a", "b"), ("b", "a")])
    with pytest.raises(TypeError, match="a prompt is a string.*got 1"):
        PromptScorer(ToyGenerator(), ToyClip(), ("g", "b"), [(1, 2)])
    with pytest.raises(ValueError, match=r"shape \(B >= 1, 4\), got \(0, 4\)"):
        make_scorer().evaluate(np.zeros((0, 4)))


class NaNGenerator(ToyGenerator):
    def decode(self, z):
        return super().decode(z) * torch.nan


def test_nan_images_raise_a_clear_error():
    sc = PromptScorer(NaNGenerator(), ToyClip(), ("a", "b"), [("c", "d"), ("e", "f")])
    z = np.zeros((2, 4))
    for jacobian in (False, True):
        with pytest.raises(ValueError, match="NaN/inf images"):
            sc.evaluate(z, jacobian=jacobian)


def test_latents_that_give_nan_images_are_named_with_their_norms():
    """A generator that breaks far from its prior: the error counts the bad latents, gives
    their norms next to the prior's, and says how to keep a search near the prior."""
    class FarNaN(ToyGenerator):
        def decode(self, z):
            img = super().decode(z)
            far = (z.norm(dim=1) > 3)[:, None, None, None]
            return torch.where(far, torch.nan, img)

    sc = PromptScorer(FarNaN(), ToyClip(), ("a", "b"), [("c", "d")])
    z = np.zeros((4, 4))
    z[2] = 5.0  # norm 10
    for jacobian, what in ((False, "scores"), (True, "scores or jacobians")):
        with pytest.raises(ValueError, match=rf"non-finite {what} for 1 of 4 latents \(latent "
                           r"norms 10; prior latents have ~0.\d+\).*latent-norm weight"):
            sc.evaluate(z, jacobian=jacobian)
    # near the prior the generator itself is at fault: no search advice
    with pytest.raises(ValueError, match=r"latents \(latent norms 0;.*near the prior, so the "
                       r"generator fails on ordinary latents") as e:
        PromptScorer(NaNGenerator(), ToyClip(), ("a", "b"), [("c", "d")]).measures_of(z[:1])
    assert "latent-norm weight" not in str(e.value)


def test_preferred_jacobian_mode_by_device_type():
    from qdgs_lib.generators.stylegan2 import StyleGAN2Generator
    from qdgs_lib.scoring import preferred_mode

    gen = ToyGenerator()
    assert preferred_mode(gen, torch.device("cpu")) == "batched"
    gen.preferred_jacobian_mode = {"cpu": "loop", "cuda": "func"}
    assert preferred_mode(gen, torch.device("cpu")) == "loop"
    assert preferred_mode(gen, "cuda") == "func" and preferred_mode(gen, "mps") == "batched"
    # StyleGAN2: func on CPU and CUDA (bench/README.md: H200, graphed iterations)
    rule = StyleGAN2Generator.preferred_jacobian_mode
    assert rule == {"cpu": "func", "cuda": "func"}


def _run_calls(sc, calls):
    rows = []
    for z, jacobian in calls:
        s = sc.evaluate(z, jacobian=jacobian)
        rows.append((s.objective, s.measures, s.jacobian, s.loss, sc.memory.clone()))
    return rows


@pytest.mark.parametrize("mode", ["batched", "func", "replicated"])
def test_static_calls_equal_eager_calls_while_the_memory_fills_and_changes(mode):
    """CMA-MAEGA's shapes (jacobians at batch 1, values at batch 4) through static buffers
    (on CUDA: captured graphs) give the eager numbers, also after the memory is full and its
    contents change, and nothing is captured while the memory still grows."""
    calls = search_calls(np.random.default_rng(0), 6)
    runs = []
    for graphs in (False, True):
        sc = two_measure_scorer()
        sc._remember = lambda loss, emb, bad=None, sc=sc: setattr(  # remember every batch's first
            sc, "memory", torch.cat([sc.memory, emb[:1]])[-sc.memory_size:])
        sc.jacobian_mode, sc.cuda_graphs = mode, graphs
        runs.append(_run_calls(sc, calls))
        if graphs:
            assert {k[0] for k in sc._static_calls} == {mode, "values"}
            assert all(k[2] == (3, 16) for k in sc._static_calls)  # only with a full memory
    for eager, static in zip(*runs, strict=True):
        for a, b in zip(eager, static, strict=True):
            if a is None:
                assert b is None
            else:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_static_calls_are_skipped_where_the_work_is_not_fixed():
    sc = make_scorer(weights=(1.0, 0.5, 0.0))
    sc.cuda_graphs = True
    z = np.zeros((1, 4))
    sc.jacobian_mode = "loop"  # one backward per output: not captured
    sc.evaluate(z, jacobian=True)
    sc.static_max_batch = 2
    sc.evaluate(np.zeros((3, 4)))  # too large
    assert sc._static_calls == {}
    sc.evaluate(z)
    assert sc._static_calls == {}  # a shape seen once is not captured
    sc.evaluate(z)
    # False: no TF32; None: no autocast
    assert list(sc._static_calls) == [("values", (1, 4), (0, 16), False, None, False)]
    sc.cuda_graphs = "auto"  # on the CPU: eager
    sc._static_calls.clear()
    sc.evaluate(z)
    sc.evaluate(z)
    assert sc._static_calls == {}


_TF32_ROUTES = {  # each way a user can switch CUDA matmuls to TF32 (or keep them fp32)
    "default": "pass",
    "allow_tf32 = False": "torch.backends.cuda.matmul.allow_tf32 = False",
    "allow_tf32 = True": "torch.backends.cuda.matmul.allow_tf32 = True",
    "set_float32_matmul_precision('high')": "torch.set_float32_matmul_precision('high')",
    # torch >= 2.9's settings: once one is set in a process that never set allow_tf32,
    # reading allow_tf32 raises (the scorer read it on every CUDA call)
    "matmul.fp32_precision = 'ieee'": "torch.backends.cuda.matmul.fp32_precision = 'ieee'",
    "matmul.fp32_precision = 'tf32'": "torch.backends.cuda.matmul.fp32_precision = 'tf32'",
    "backends.fp32_precision = 'tf32'": "torch.backends.fp32_precision = 'tf32'",
}


def check_tf32_route(name: str) -> None:
    """Set TF32 by route ``name``; the scorer's TF32 switch then reads it without error, is on
    inside a CUDA call only, and leaves the setting (and the user's way to read it) as it was,
    also after an error."""
    from types import SimpleNamespace

    from qdgs_lib.scoring import PromptScorer
    from qdgs_lib.utils import tf32_matmul_on

    exec(_TF32_ROUTES[name])
    start = tf32_matmul_on()
    assert start == ("True" in name or "high" in name or "'tf32'" in name), name
    cuda = SimpleNamespace(tf32_matmul=True, clip=SimpleNamespace(device=torch.device("cuda")))
    with PromptScorer._tf32(cuda):
        assert tf32_matmul_on() is True
    assert tf32_matmul_on() is start
    with pytest.raises(KeyError), PromptScorer._tf32(cuda):
        raise KeyError
    assert tf32_matmul_on() is start
    for other in (SimpleNamespace(tf32_matmul=False, clip=cuda.clip),
                  SimpleNamespace(tf32_matmul=True,
                                  clip=SimpleNamespace(device=torch.device("cpu")))):
        with PromptScorer._tf32(other):
            assert tf32_matmul_on() is start
    if "fp32_precision" not in name:  # the user's own reads work as before
        assert torch.backends.cuda.matmul.allow_tf32 is start


@pytest.fixture
def restore_tf32():
    """torch's matmul precision settings as they were before the test."""
    matmul = torch.backends.cuda.matmul
    new_api = hasattr(matmul, "fp32_precision")
    saved = (matmul.fp32_precision, torch.backends.fp32_precision) if new_api \
        else matmul.allow_tf32
    yield
    if new_api:
        torch.backends.fp32_precision, matmul.fp32_precision = saved[1], saved[0]
    else:
        matmul.allow_tf32 = saved


@pytest.mark.parametrize("name", [n for n in _TF32_ROUTES if "fp32_precision" not in n])
def test_tf32_is_set_for_the_call_only_and_on_cuda_only(name, restore_tf32):
    """``tf32_matmul`` switches CUDA matmuls to TF32 inside a scoring call and restores
    torch's setting after it; off CUDA, and when False, nothing moves."""
    check_tf32_route(name)


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                    reason="torch < 2.9 has no fp32_precision setting")
def test_tf32_switch_works_with_torchs_newer_setting():
    """The same with torch's newer ``fp32_precision`` settings, in a fresh process: torch
    refuses reads of ``allow_tf32`` after them only where ``allow_tf32`` was never set, which
    other tests in this process may have done."""
    import subprocess
    import sys

    routes = [n for n in _TF32_ROUTES if "fp32_precision" in n or n == "default"]
    code = ("import sys\nimport torch\nsys.path[:0] = ['tests']\n"
            "from test_scoring import check_tf32_route\n"
            f"for name in {routes!r}:\n"
            "    check_tf32_route(name)\n"
            "    torch.backends.fp32_precision = 'none'\n"
            "    torch.backends.cuda.matmul.fp32_precision = 'none'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.mark.parametrize("key", ["tf32_matmul", "compile_static", "deterministic"])
@pytest.mark.parametrize("section", ["shapes", "faces"])
def test_profiles_switch_scoring_settings_on_the_scorer(key, section):
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.scoring import scorer_for_profile

    assert get_profile("paper", section)[key] is False  # opt-in everywhere
    for on in (False, True):
        p = get_profile("default", section, **{key: on})
        sc = scorer_for_profile(ToyGenerator(), {**p, "clip": "qdgs-shapes-clip"}, "cpu")
        assert getattr(sc, key) is on


def test_replicated_mode_refuses_a_random_forward_pass():
    sc = make_scorer()
    sc.jacobian_mode = "replicated"
    sc.clip.num_cutouts = 2  # random crops per call: the copies would see different images
    with pytest.raises(ValueError, match="deterministic forward pass.*'batched' or 'func'"):
        sc.evaluate(np.zeros((1, 4)), jacobian=True)
    sc.clip.num_cutouts = 0
    sc.generator.noise_mode = "random"
    with pytest.raises(ValueError, match="deterministic forward pass"):
        sc.evaluate(np.zeros((1, 4)), jacobian=True)


@pytest.mark.parametrize("mode", ["replicated", "func"])
@pytest.mark.parametrize("autocast", [None, "bfloat16"])
def test_compiled_static_calls_give_the_eager_numbers(autocast, mode):
    """``compile_static`` with the replicated mode (static calls of values at batch 4 and
    jacobians at batch 1 run torch.compile'd forward and backward passes) or the ``func``
    mode (the whole vjp + vmap compiled), equal to the
    eager calls up to float rounding (fused kernels round differently); also under
    ``autocast`` (the bench's compiled float16 candidate; bfloat16 here, CPU's fast one),
    where the compiled calls keep half precision's numbers: within bfloat16's rounding of
    eager bfloat16's (measured: objective 4e-4 relative, once the generator's latent check
    stopped breaking the compiled graph), while float32's jacobians differ by > 1e-2."""
    from qdgs_lib.utils import compile_available

    if (why := compile_available(torch.device("cpu"))) is not None:
        pytest.skip(why)
    calls = search_calls(np.random.default_rng(0), 4)
    runs = []
    for compiled, dtype in ((False, None), (False, autocast), (True, autocast)):
        sc = two_measure_scorer()
        latents = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
        sc.memory = sc.clip.encode_image(sc.generator.decode(latents)).detach()
        sc.jacobian_mode, sc.cuda_graphs, sc.compile_static = mode, True, compiled
        sc.autocast = dtype
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs.append([sc.evaluate(z, jacobian=j, update_memory=False) for z, j in calls])
        if compiled:
            assert sc.compile_static is True  # (kept by the check against eager)
            kept = {k[0] for k in sc._static_calls if k[-1] == "compiled"}
            if mode == "func" and kept == {"values"}:
                # torch 2.6.0 compiles this whole vjp + vmap to wrong jacobians (rows 100%
                # off); the check against eager caught it and func runs uncompiled. Never
                # on the torch versions this project runs (2.11.0, 2.14.1)
                assert torch.__version__ < "2.11" and set(sc._compiled) == {"_outputs"}
                assert any("far from the eager one" in str(w.message) for w in caught)
            else:
                assert kept == {mode, "values"}
                assert set(sc._compiled) == {"_outputs"} | ({"_func_jacobian"}
                                                            if mode == "func" else set())
            assert {k[4] for k in sc._static_calls} == {autocast}
    fp32, runs = runs[0], runs[1:]
    if autocast is not None:  # half precision did run, compiled too
        for r in runs:
            assert max(np.abs(a.jacobian - b.jacobian).max()
                       for a, b in zip(r, fp32, strict=True) if a.jacobian is not None) > 1e-2
    # float32: float rounding; bfloat16: within its rounding (8 bits: 2**-8 = 3.9e-3), since
    # a whole compiled pass fuses elementwise ops and skips intermediate bfloat16 roundings
    # that eager calls make (inductor's default)
    rtol = 1e-5 if autocast is None else 2**-8
    for eager, comp in zip(*runs, strict=True):
        np.testing.assert_allclose(comp.objective, eager.objective, rtol=rtol)
        np.testing.assert_allclose(comp.measures, eager.measures, rtol=rtol, atol=1e-6 if
                                   autocast is None else 2**-8 * np.abs(eager.measures).max())
        if eager.jacobian is not None:
            scale = np.abs(eager.jacobian).max()
            np.testing.assert_allclose(comp.jacobian, eager.jacobian,
                                       rtol=1e-4 if autocast is None else 2**-6,
                                       atol=1e-5 if autocast is None else 2**-6 * scale)



def _forged_compile(monkeypatch, change):
    """torch.compile replaced by ``change(fn)``: a "compiled" pass that is wrong on purpose."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: change(fn))
    monkeypatch.setattr("qdgs_lib.scoring.compile_available", lambda device: None)


def _doubled_gradients(fn):
    """Same values, jacobians doubled: through the pass's gradients (``_outputs``, what
    ``replicated`` differentiates) or on the returned jacobian (``_func_jacobian``)."""
    def call(z, memory=None):
        res = fn(2 * z - z.detach(), memory)
        return res if len(res) == 3 else (*res[:3], 2 * res[3])
    return call


def _falls_back_to_uncompiled(monkeypatch, change, warning: str) -> PromptScorer:
    """A replicated scorer whose compile is forged by ``change``: its second jacobian call
    warns ``warning``, stops compiling that mode, keeps graphs, captures the call
    uncompiled and returns the eager jacobian."""
    _forged_compile(monkeypatch, change)
    ref, sc = (make_scorer(weights=(1.0, 0.5, 0.0)) for _ in range(2))
    sc.jacobian_mode = ref.jacobian_mode = "replicated"
    sc.cuda_graphs, sc.compile_static = True, True
    z = np.random.default_rng(0).normal(0, 0.5, (1, 4))
    sc.evaluate(z, jacobian=True)
    with pytest.warns(UserWarning, match=warning):
        got = sc.evaluate(z, jacobian=True)
    assert sc.uncompiled_modes == {"replicated"} and sc.cuda_graphs is True
    assert sc.compile_static is True  # (still asked for: the other modes compile)
    assert [k[-1] == "compiled" for k in sc._static_calls] == [False]  # uncompiled capture
    np.testing.assert_allclose(got.jacobian, ref.evaluate(z, jacobian=True).jacobian, rtol=1e-6)
    return sc


def test_a_failing_compile_falls_back_to_uncompiled_static_calls(monkeypatch):
    """torch.compile can fail late (no Triton, an op it cannot trace): the scorer warns,
    stops compiling and captures the same call uncompiled, keeping its graphs."""
    def broken_compile(fn):
        def call(*a, **k):
            raise AssertionError("backend failed")  # not a RuntimeError: any error type
        return call

    _falls_back_to_uncompiled(monkeypatch, broken_compile,
                              "torch.compile of the replicated.*failed.*uncompiled")


def test_a_compiled_pass_far_from_eager_is_not_used(monkeypatch):
    """torch 2.11's torch.compile returned zero jacobians through StyleGAN2's split layers
    with right values (pytorch#180642). A new compiled static call is checked once against
    the eager pass on its buffers; one that is far off (here: a "compiled" pass whose
    gradients are twice the true ones, values unchanged) is dropped with a warning, and the
    call is captured uncompiled."""
    sc = _falls_back_to_uncompiled(monkeypatch, _doubled_gradients,
                                   "far from the eager one.*jacobian rows 1 relative")
    # values only: the doubled gradients do not matter, the compiled call is kept
    for _ in range(2):
        sc.evaluate(np.zeros((3, 4)))
    assert [k[0] for k in sc._static_calls if k[-1] == "compiled"] == ["values"]

def test_jacobian_errors_are_relative_to_each_row_unless_it_is_zero():
    from qdgs_lib.scoring import jacobian_row_errors

    ref = np.zeros((2, 3, 4))
    ref[:, 1] = 1.0   # norm 2
    ref[:, 2] = 1e-3  # norm 2e-3, small but not ~0: relative to its own norm
    ref[0, 0, 0] = 5e-19  # ~0 (a saturated objective): relative to 1e-6 of the largest row
    got = ref.copy()
    got[1, 1, 0] += 0.02  # row 1: 0.02 / 2 in sample 1 (the largest over the batch)
    got[0, 2, 0] += 2e-5  # row 2: 2e-5 / 2e-3
    got[0, 0, 0] = 0.0  # rounding noise on the ~0 row: 5e-19 / (1e-6 * 2), not 1
    err = jacobian_row_errors(got, ref).numpy()
    assert np.allclose(err, [2.5e-13, 1e-2, 1e-2])
    assert np.array_equal(jacobian_row_errors(ref, ref).numpy(), [0, 0, 0])



def test_a_compiled_pass_with_nan_gradients_is_not_used(monkeypatch):
    """NaN compares false with everything: max(err, nan) took the finite one and kept a
    compiled call whose jacobians were NaN (every later call then raised)."""
    def nan_gradients(fn):
        def call(z, memory=None):
            if z.requires_grad:
                z.register_hook(lambda g: torch.full_like(g, float("nan")))
            return fn(z, memory)
        return call

    # (the fallback's jacobian equals the eager one: finite)
    _falls_back_to_uncompiled(monkeypatch, nan_gradients,
                              "far from the eager one.*jacobian rows nan")


def test_a_compiled_pass_with_one_wrong_measure_is_not_used(monkeypatch):
    """Scores are compared one by one: a measure off by 0.05 is far off, though the
    objective (~100 here) is right and would hide it in a comparison of all scores."""
    def shifted_measure(fn):
        def call(z, memory=None):
            loss, out, emb = fn(z, memory)
            return loss, out + torch.tensor([0.0, 0.05, 0.0, 0.0]), emb
        return call

    _forged_compile(monkeypatch, shifted_measure)
    sc = make_scorer(weights=(1.0, 0.5, 0.0))
    sc.cuda_graphs, sc.compile_static = True, True
    z = np.random.default_rng(0).normal(0, 0.5, (4, 4))
    assert np.abs(sc.evaluate(z).objective).min() > 10 * 0.05
    with pytest.warns(UserWarning, match="far from the eager one"):
        sc.evaluate(z)
    assert sc.uncompiled_modes == {"values"}
    assert [(k[0], k[-1] == "compiled") for k in sc._static_calls] == [("values", False)]


def test_the_compiled_check_allows_rounding_of_a_measure_near_zero():
    """A measure near 0 (the middle of its range) rounded by half precision: 5e-4 off, well
    within rounding, is not a broken compile; each score counts at least 0.01 per sample."""
    sc = make_scorer(weights=(1.0, 0.5, 0.0))
    ref_out = torch.tensor([[60.0, 1e-4, 0.05, -0.03]])
    got_out = ref_out + torch.tensor([[0.0, 5e-4, 0.0, 0.0]])

    class Call:  # a static call's interface: buffers, and outputs from them
        inputs, memory = torch.zeros(1, 4), torch.zeros(0, 16)

        def __call__(self, inputs, memory):
            return torch.zeros(1), got_out, torch.zeros(1, 16), None

    sc._check_compiled(Call(), lambda z, m: (torch.zeros(1), ref_out, torch.zeros(1, 16), None))
    got_out[0, 1] += 0.01  # 1e-2 off: the measure's whole scale
    with pytest.raises(ValueError, match="far from the eager one"):
        sc._check_compiled(Call(), lambda z, m: (torch.zeros(1), ref_out, torch.zeros(1, 16),
                                                  None))


@pytest.mark.parametrize("mode", ["replicated", "func"])
def test_a_dropped_jacobian_compile_keeps_the_compiled_values_calls(monkeypatch, mode):
    """Values calls compiled (and checked), then the jacobian's compile is far from eager
    (torch 2.11's bug: compiled gradients wrong, compiled values right): only the jacobian
    mode runs uncompiled; the values calls stay compiled (the faster half of an H200
    iteration), and the jacobian's compiled pass goes where no mode uses it."""
    _forged_compile(monkeypatch, _doubled_gradients)
    sc = make_scorer(weights=(1.0, 0.5, 0.0))
    sc.jacobian_mode, sc.cuda_graphs, sc.compile_static = mode, True, True
    rng = np.random.default_rng(0)
    for _ in range(2):
        sc.evaluate(rng.normal(0, 0.5, (3, 4)))
    assert [k[-1] for k in sc._static_calls] == ["compiled"]  # values: passed the check
    sc.evaluate(rng.normal(0, 0.5, (1, 4)), jacobian=True)
    with pytest.warns(UserWarning, match=f"{mode} scoring pass.*far from the eager one"):
        sc.evaluate(rng.normal(0, 0.5, (1, 4)), jacobian=True)
    assert sc.uncompiled_modes == {mode}
    assert sorted((k[0], k[-1] == "compiled") for k in sc._static_calls) == [
        (mode, False), ("values", True)]
    assert set(sc._compiled) == {"_outputs"}  # (func's compiled jacobian is gone)
    for _ in range(2):  # both kept: no new capture, no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sc.evaluate(rng.normal(0, 0.5, (3, 4)))
            sc.evaluate(rng.normal(0, 0.5, (1, 4)), jacobian=True)
    assert len(sc._static_calls) == 2


def test_a_stochastic_scorer_compiles_values_without_the_eager_comparison(monkeypatch):
    """Random generator noise: a compiled and an eager call draw different noise, so the
    check against eager would report a broken compile where there is none. Such a scorer
    compiles only values calls (its jacobian modes are vmapped ones) and skips the check."""
    class NoisyGenerator(ToyGenerator):
        noise_mode = "random"

        def decode(self, z):
            img = super().decode(z)
            return torch.rand_like(img)  # all noise: the scores move a lot

    _forged_compile(monkeypatch, lambda fn: fn)  # "compiled" = eager
    sc = PromptScorer(NoisyGenerator(), ToyClip(), ("good", "bad"), [("a", "b")],
                      weights=(1.0, 0.5, 0.0))
    assert sc.stochastic
    sc.cuda_graphs, sc.compile_static = True, True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            sc.evaluate(np.zeros((3, 4)))
    assert sc.compile_static is True
    assert [k[0] for k in sc._static_calls if k[-1] == "compiled"] == ["values"]
    sc.jacobian_mode = "func"  # compiled for a deterministic scorer; unchecked here: eager
    for _ in range(2):
        sc.evaluate(np.zeros((1, 4)), jacobian=True)
    assert sorted(k[0] for k in sc._static_calls if k[-1] != "compiled") == ["func"]
    # the same scorer without the skip would have dropped it: the two calls differ a lot
    call = next(iter(sc._static_calls.values()))
    with pytest.raises(ValueError, match="far from the eager one"):
        sc._check_compiled(call, sc._static_fn("values", sc._outputs))


def _small_stylegan_scorer(packed_attention: bool) -> PromptScorer:
    """A 32-pixel StyleGAN2 (random weights; split layers for jacobians) and the faces ViT,
    with the faces prompts and objective weights."""
    from qdgs_lib.clip import create_clip
    from qdgs_lib.generators.stylegan2 import StyleGAN2, StyleGAN2Generator
    from qdgs_lib.measures import prompts
    from qdgs_lib.profiles import get_profile

    torch.manual_seed(0)
    gen = StyleGAN2Generator(StyleGAN2(img_resolution=32, channel_base=1024).eval(),
                             num_std_samples=200)
    clip = create_clip("qdgs-faces-clip", device="cpu", packed_attention=packed_attention)
    p = get_profile("default", "faces")
    return PromptScorer(gen, clip, p["objective"], prompts(p), weights=p["objective_weights"])


@pytest.mark.parametrize("mode", ["batched", "func", "loop", "replicated"])
def test_autocast_scores_stay_close_to_float32(mode):
    """``autocast="bfloat16"`` (float16 on a CPU is emulated and slow; CUDA's float16 is in
    tests/test_devices.py) in every jacobian mode: the vmapped ones run through open_clip's
    layer norms and StyleGAN2's split layers; the numbers move (half precision did run), by
    little (measured: measures <= 13% of their spread over prior samples, jacobian rows at
    cosine >= 0.972 with float32's; bfloat16 keeps 7 mantissa bits); the outputs,
    embeddings and jacobians come back in float32."""
    sc = _small_stylegan_scorer(packed_attention=mode == "func")  # packed: CUDA's default
    sc.jacobian_mode = mode
    z = sc.generator.sample_prior(2, seed=3).numpy()
    spread = sc.evaluate(sc.generator.sample_prior(64, seed=5).numpy(),
                         update_memory=False).measures.std(0)
    ref = sc.evaluate(z, jacobian=True, update_memory=False)
    sc.autocast = "bfloat16"
    got = sc.evaluate(z, jacobian=True, update_memory=False)
    with sc._autocast():
        _, out, emb, jac = sc._with_jacobian(torch.as_tensor(z, dtype=torch.float32))
    assert out.dtype == emb.dtype == jac.dtype == torch.float32
    assert np.isfinite(got.jacobian).all()
    assert np.abs(got.measures - ref.measures).max() > 0  # half precision ran
    assert (np.abs(got.measures - ref.measures) / spread).max() < 0.3
    assert np.abs(got.objective - ref.objective).max() < 0.5  # objective: ~0..100
    cos = (got.jacobian * ref.jacobian).sum(2) / (
        np.linalg.norm(got.jacobian, axis=2) * np.linalg.norm(ref.jacobian, axis=2))
    assert cos.min() > 0.95, cos


def test_autocast_has_its_own_static_calls_and_checks_its_dtype():
    """Graphs keep the kernels of their capture: each autocast setting gets its own static
    calls, which give that setting's eager numbers; an unknown dtype is refused (also from a
    profile, before any search)."""
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.scoring import scorer_for_profile

    calls = search_calls(np.random.default_rng(0), 3)
    eager, static = two_measure_scorer(), two_measure_scorer()
    latents = torch.randn(3, 4)
    for sc in (eager, static):
        sc.memory = sc.clip.encode_image(sc.generator.decode(latents)).detach()
        sc.jacobian_mode, sc.autocast = "func", "bfloat16"
    eager.autocast = None
    static.cuda_graphs = True
    fp32 = eager.evaluate(calls[0][0], jacobian=True, update_memory=False)
    eager.autocast = "bfloat16"
    assert np.abs(eager.evaluate(calls[0][0], jacobian=True, update_memory=False).jacobian
                  - fp32.jacobian).max() > 0  # bfloat16 ran
    for z, j in calls:
        a = eager.evaluate(z, jacobian=j, update_memory=False)
        b = static.evaluate(z, jacobian=j, update_memory=False)
        np.testing.assert_array_equal(b.measures, a.measures)
    assert {k[4] for k in static._static_calls} == {"bfloat16"}
    static.autocast = None
    static.evaluate(*calls[0][:1], jacobian=True, update_memory=False)
    static.evaluate(*calls[0][:1], jacobian=True, update_memory=False)
    assert {k[4] for k in static._static_calls} == {"bfloat16", None}

    static.autocast = "float64"
    with pytest.raises(ValueError, match="autocast must be None or one of.*bfloat16"):
        static.evaluate(calls[0][0])
    p = get_profile("default", "shapes", autocast="half")
    with pytest.raises(ValueError, match="autocast must be"):
        scorer_for_profile(ToyGenerator(), {**p, "clip": "qdgs-shapes-clip"}, "cpu")
    p = get_profile("default", "shapes", autocast="float16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sc = scorer_for_profile(ToyGenerator(), {**p, "clip": "qdgs-shapes-clip"}, "cpu")
        sc.evaluate(calls[0][0])
        sc.evaluate(calls[0][0])
    slow = [w for w in caught if "float16" in str(w.message) and "slower" in str(w.message)]
    assert sc.autocast == "float16" and len(slow) == 1  # warned once per scorer


@pytest.mark.parametrize("world", ["shapes", "faces"])
def test_the_offline_scorers_run_under_autocast(world):
    """The profile key reaches the offline default's scorers (shapes VAE, toy faces; their
    own CLIPs) and they score under bfloat16 on a CPU: the images reach CLIP's antialiased
    resize in float32 (it has no CPU kernel for half precision)."""
    from qdgs_lib.face_synthesis import build_scorer as faces_scorer
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.shapes_poc import build_scorer as shapes_scorer

    build = shapes_scorer if world == "shapes" else faces_scorer
    sc = build(get_profile("smoke", world, autocast="bfloat16"), "cpu")
    assert sc.autocast == "bfloat16"
    z = sc.generator.sample_prior(3, seed=1).numpy()
    got = sc.evaluate(z, jacobian=True, update_memory=False)
    sc.autocast = None
    ref = sc.evaluate(z, jacobian=True, update_memory=False)
    assert np.isfinite(got.jacobian).all() and not np.array_equal(got.measures, ref.measures)
    cos = (got.jacobian * ref.jacobian).sum(2) / (
        np.linalg.norm(got.jacobian, axis=2) * np.linalg.norm(ref.jacobian, axis=2))
    assert cos.min() > 0.95, cos


def test_latent_check_leaves_a_compiled_pass_whole():
    """The latent check's data-dependent branch and CUDA capture flag stay out of compiled
    code: a graph break there made torch.compile recompile inside a CUDA graph capture (the
    compiled candidates then ran uncompiled). fullgraph=True fails on any break."""
    gen = ToyGenerator()
    z = gen.sample_prior(3)
    compiled = torch.compile(gen.decode, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(z), gen.decode(z))
    with pytest.raises(ValueError, match="NaN or inf"):   # eager calls still check
        gen.decode(z.index_fill(0, torch.tensor([1]), float("nan")))


def test_cuda_graph_capture_happens_on_the_inputs_gpu(monkeypatch):
    """torch.cuda.graph's default capture stream lives on the current GPU (0 unless set): a
    cuda:1 scorer must capture on a stream of cuda:1, inside a device guard. Simulated with
    stand-ins for torch.cuda's pieces (no GPU here); the real capture runs in test_devices."""
    import contextlib

    from qdgs_lib import scoring

    seen = {"device": [], "capture stream": None}

    class Stream:
        def __init__(self, device=None):
            self.device = torch.device(device) if device is not None else torch.device("cuda:0")

        def wait_stream(self, other):
            pass

    @contextlib.contextmanager
    def guard(device):
        seen["device"].append(torch.device(device))
        yield

    @contextlib.contextmanager
    def graph(g, stream=None, **kw):
        seen["capture stream"] = stream.device if stream is not None else torch.device("cuda:0")
        yield

    class Inputs:
        is_cuda, device = True, torch.device("cuda:1")

        def clone(self):
            return self

    for name, value in {"Stream": Stream, "current_stream": Stream, "device": guard,
                        "stream": lambda s: contextlib.nullcontext(), "graph": graph,
                        "CUDAGraph": object}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    scoring.StaticCall(lambda z, m: (), Inputs(), Inputs())
    assert seen["capture stream"] == torch.device("cuda:1")
    assert seen["device"] == [torch.device("cuda:1")]


def test_run_record_names_the_run_device(monkeypatch):
    from qdgs_lib.utils import versions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: f"GPU {d}")
    assert versions("cuda:1")["device"] == "GPU cuda:1"
    assert versions("cpu")["device"] == "cpu"   # a CPU run on a GPU machine


# aten ops that have no deterministic CUDA kernel (torch.use_deterministic_algorithms'
# list of ops that raise: differentiated interpolation, pooling, padding, grid sampling...)
_NONDETERMINISTIC_ON_CUDA = ("upsample_", "_upsample_", "avg_pool3d", "adaptive_avg_pool",
                             "adaptive_max_pool", "fractional_max_pool", "max_unpool",
                             "reflection_pad", "grid_sampler", "embedding_bag", "ctc_loss",
                             "nll_loss2d", "put_", "histc", "bincount", "median", "kthvalue")


def test_scoring_jacobians_need_no_op_without_a_deterministic_cuda_kernel():
    """Every op that a scoring call with jacobians dispatches (a StyleGAN2 whose images CLIP
    resizes, 32 -> 64 px), in every mode: none is one of the ops that CUDA runs only
    nondeterministically (their backward adds with atomics). The antialiased resize's
    backward was one (``_upsample_bilinear2d_aa_backward``): seeded GPU searches could not
    reproduce; CLIP now resizes with matmuls. The deterministic setting's CUDA test checks
    bitwise equality itself (tests/test_devices.py)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    sc = _small_stylegan_scorer(packed_attention=False)
    z = sc.generator.sample_prior(2, seed=0).numpy()
    assert sc.generator.decode(torch.as_tensor(z)).shape[-1] != sc.clip.image_size  # resized
    for mode in ("batched", "func", "replicated", "loop"):
        sc.jacobian_mode = mode
        with Ops() as ops:
            sc.evaluate(z, jacobian=True, update_memory=False)
        assert "convolution_backward" in ops.names and "mm" in ops.names  # (recorded)
        bad = sorted(n for n in ops.names if n.startswith(_NONDETERMINISTIC_ON_CUDA) and
                     ("backward" in n or not n.startswith(("upsample_", "_upsample_"))))
        assert not bad, (mode, bad)


def test_deterministic_scoring_sets_torch_for_the_call_only(monkeypatch):
    """``deterministic``: torch's deterministic algorithms (and no cuDNN autotuner) inside
    each scoring call, torch's settings restored after; its static calls are captured apart
    (other kernels); an op without a deterministic kernel raises, naming itself."""
    seen = []

    class Recording(ToyGenerator):
        put = False

        def decode(self, z):
            seen.append((torch.are_deterministic_algorithms_enabled(),
                         torch.backends.cudnn.benchmark))
            img = super().decode(z)
            if self.put:  # Tensor.put_ (accumulate=False) has no deterministic kernel
                img = img.clone()
                img.put_(torch.tensor([0, 0]), torch.tensor([0.5, 0.5]))
            return img

    sc = PromptScorer(Recording(), ToyClip(), ("good", "bad"), [("a", "b")],
                      weights=(1.0, 0.5, 0.0))
    z = np.random.default_rng(0).normal(0, 0.5, (2, 4))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    seen.clear()  # (the scorer's own checks decoded)
    sc.evaluate(z, jacobian=True)
    sc.deterministic = True
    sc.evaluate(z, jacobian=True)
    sc.evaluate(z)
    sc.measures_of(z)
    assert seen[0] == (False, True) and set(seen[1:]) == {(True, False)}
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    sc.generator.put = True
    with pytest.raises(RuntimeError, match="put_.*deterministic"):
        sc.evaluate(z)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after an error too
    sc.generator.put = False
    sc.cuda_graphs = True
    for flag in (False, True, False, True):
        sc.deterministic = flag
        sc.evaluate(z)
    assert sorted(k[-1] for k in sc._static_calls) == [False, True]


@pytest.mark.parametrize("module", ["shapes_poc", "face_synthesis"])
def test_cublas_workspace_is_set_before_the_generator_is_built(module, monkeypatch):
    """cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` once, at the first CUDA matmul, and
    StyleGAN2's constructor already runs its mapping network: a deterministic profile on CUDA
    sets it before building the generator (it used to be set after, too late)."""
    import importlib

    from qdgs_lib.profiles import get_profile

    mod = importlib.import_module(f"qdgs_lib.{module}")
    seen = {}

    def build_generator(p, device):
        seen[p["deterministic"]] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        raise KeyboardInterrupt  # stop here: no CUDA to build on

    monkeypatch.setattr(mod, "build_generator", build_generator)
    monkeypatch.setattr(mod, "resolve_device", lambda device: torch.device("cuda"))
    section = "shapes" if module == "shapes_poc" else "faces"
    for deterministic in (False, True):
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        p = get_profile("paper", section, deterministic=deterministic)
        with pytest.raises(KeyboardInterrupt):
            mod.build_scorer(p, "cuda")
    assert seen == {False: None, True: ":4096:8"}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_the_scorer_itself_refuses_one_nonfinite_latent(monkeypatch, value):
    """In a compiled pass or a CUDA graph replay the generator's own latent check does not run
    (simulated here: is_compiling() True): the scorer's host-side check must refuse one NaN/inf
    coordinate among finite latents, before the networks run on it."""
    sc = make_scorer()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    z = np.zeros((3, 4))
    z[1, 2] = value
    with pytest.raises(ValueError, match="latents contain NaN or inf"):
        sc.evaluate(z)


def test_allow_nonfinite_returns_the_rows_and_keeps_them_from_the_memory():
    """evaluate(allow_nonfinite=True) hands NaN rows back (a search skips them) instead of
    raising; the uniqueness memory keeps filling from the finite ones (a NaN image's loss is
    NaN, never remembered; a NaN jacobian alone: the next test)."""
    class HalfNaN(ToyGenerator):
        def decode(self, z):
            img = super().decode(z)
            return torch.where((z[:, 0] > 1)[:, None, None, None], torch.nan, img)

    sc = PromptScorer(HalfNaN(), ToyClip(), ("a", "b"), [("c", "d"), ("e", "f")],
                      weights=(1.0, 0.0, 0.2))
    z = np.zeros((4, 4))
    z[[0, 2], 0] = 5.0
    with pytest.raises(NonFiniteScoresError, match="2 of 4 latents") as e:
        sc.evaluate(z)
    assert e.value.rows.tolist() == [True, False, True, False]
    for jacobian in (False, True):
        for _ in range(20):
            s = sc.evaluate(z, jacobian=jacobian, allow_nonfinite=True)
            assert np.isnan(s.objective[[0, 2]]).all() and np.isfinite(s.objective[[1, 3]]).all()
        assert np.isfinite(sc.memory.numpy()).all() and len(sc.memory) > 0


def test_a_row_with_a_nan_jacobian_only_stays_out_of_the_memory():
    class NaNGradient(ToyGenerator):  # finite images; sqrt of a negative: a NaN gradient
        def decode(self, z):
            img = super().decode(z)
            t = 0.1 - self.check_latents(z)[:, 0]
            return img + 0 * torch.where(t < 0, 0 * t, t.sqrt())[:, None, None, None]

    sc = PromptScorer(NaNGradient(), ToyClip(), ("a", "b"), [("c", "d"), ("e", "f")],
                      weights=(1.0, 0.0, 0.2))
    z = np.zeros((1, 4))
    z[0, 0] = 0.3
    s = sc.evaluate(z, jacobian=True, allow_nonfinite=True)
    assert np.isfinite(s.objective).all() and not np.isfinite(s.jacobian).all()
    assert len(sc.memory) == 0
    sc.evaluate(np.zeros((1, 4)), jacobian=True)  # the same scorer takes a finite row
    assert len(sc.memory) == 1
