"""The notebooks' library steps on every available device: CPU always, CUDA when present
(skipped otherwise). On a GPU machine: `make test-devices`."""

import pytest
import torch

from qdgs_lib import face_synthesis, recognition, shapes_poc
from qdgs_lib.profiles import get_profile
from qdgs_lib.search import archive_frame, run_search
from qdgs_lib.utils import resolve_device, save_weights

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


def test_resolve_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a device name"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU here.*device='auto'"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():  # torch would fail later, less clearly
        with pytest.raises(ValueError, match="'mps' asked for, but this torch .* cannot use"):
            resolve_device("mps")


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_steps(device, tmp_path):
    p = get_profile("smoke", "shapes", iterations=3, x0_samples=4, n_train=64, n_test=64,
                    train_epochs=1, finetune_epochs=1)
    scorer = shapes_poc.build_scorer(p, device)
    assert scorer.clip.device.type == device and scorer.generator.device.type == device
    qd = run_search(scorer, p, "cma_maega", tmp_path / "qd", progress=False)
    qd_set = shapes_poc.qdgs_set(scorer, archive_frame(qd.result_archive), p)
    rnd_set = shapes_poc.random_set(scorer, len(qd_set["labels"]), p)
    assert qd_set["images"].device.type == "cpu" and len(rnd_set["labels"]) > 0
    results = shapes_poc.classifier_protocol(p, {"qdgs": qd_set}, progress=False,
                                             device=device)
    assert set(results.finetune) == {"none", "qdgs"} and results["mean"].between(0, 1).all()
    audit = shapes_poc.label_audit(p, {"qdgs": qd_set}, device=device)
    assert 0 <= audit.loc["qdgs", "CLIP label = oracle"] <= 1
    assert 0 <= audit.loc["qdgs", "CLIP color = pixels"] <= 1


@pytest.mark.parametrize("device", DEVICES)
def test_face_steps(device, tmp_path):
    p = get_profile("smoke", "faces", iterations=3, x0_samples=4, dataset_solutions=8,
                    offsets=2)
    scorer = face_synthesis.build_scorer(p, device)
    assert scorer.clip.device.type == device and scorer.generator.device.type == device
    prior = scorer.generator.sample_prior(16, seed=0)
    assert prior.device.type == device
    assert scorer.measures_of(prior).shape == (16, 4)  # a device tensor is accepted
    qd = run_search(scorer, p, "cma_maega", tmp_path / "qd", progress=False)
    sets = face_synthesis.build_datasets(scorer, archive_frame(qd.result_archive), p,
                                         tmp_path, progress=False)
    r = get_profile("smoke", "recognition", real_identities=8, real_views=2, batch=8,
                    benchmark_pairs=20)
    models = recognition.pretrain_protocol(r, sets, tmp_path / "rec", device=device, progress=False)
    assert list(models.pretraining) == ["none", *sets]
    bench = recognition.load_benchmark(r, root=tmp_path / "bench")
    net = recognition.load_backbone(r, models.model.iloc[-1])
    res = recognition.evaluate_recognizer(net, bench, device=device)
    assert 0 <= res["all"] <= 1 and len(bench.group_names) == 4
    assert not (tmp_path / "rec" / "train" / "qdgs_seed0_real" / "checkpoint.pt").exists()


def test_channels_last_weights_save_as_safetensors(tmp_path):
    """The CUDA failure of issue 13 on any device: channels_last weights are not contiguous,
    which safetensors refuses; save_weights writes contiguous CPU copies."""
    from safetensors.torch import load_file, save_file

    from qdgs_lib.models.iresnet import build_iresnet

    net = build_iresnet("ir_small").to(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="non contiguous"):
        save_file(net.state_dict(), str(tmp_path / "raw.safetensors"))
    save_weights(net, tmp_path / "w.safetensors")
    loaded = load_file(str(tmp_path / "w.safetensors"))
    for k, v in net.state_dict().items():
        assert torch.equal(loaded[k], v), k


def test_trainer_on_channels_last_returns_savable_weights(tmp_path):
    from qdgs_lib.data.identities import TensorFaces
    from qdgs_lib.models.heads import AdaFace
    from qdgs_lib.models.iresnet import build_iresnet
    from qdgs_lib.train import RecognitionTrainer

    x, y = torch.rand(16, 3, 64, 64), torch.arange(16) % 4
    tr = RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), TensorFaces(x, y),
                            tmp_path, batch_size=8, progress=False, channels_last=True)
    tr.run(1)
    assert tr.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    save_weights(tr.backbone, tmp_path / "b.safetensors")  # raised before the fix


def _paper_networks(device: str = "cuda"):
    """The paper's faces profile, StyleGAN2-256 and ViT-B/32 on ``device``: random weights,
    seeded."""
    from qdgs_lib.clip import create_clip
    from qdgs_lib.generators.stylegan2 import StyleGAN2, StyleGAN2Generator

    p = get_profile("paper", "faces")
    torch.manual_seed(0)
    gen = StyleGAN2Generator(StyleGAN2().to(device), num_std_samples=500)
    clip = create_clip("ViT-B-32-quickgelu", device=device, pretrained=False)
    return p, gen, clip


def _paper_scorer_pair(device: str = "cuda"):
    """Two scorers on one generator and CLIP (``_paper_networks``) with the paper's objective
    weights and a uniqueness memory of 4, and a full memory for them (set it on each)."""
    from qdgs_lib.measures import prompts
    from qdgs_lib.scoring import PromptScorer

    p, gen, clip = _paper_networks(device)
    scorers = [PromptScorer(gen, clip, p["objective"], prompts(p), weights=(1.0, 0.5, 0.2),
                            memory_size=4) for _ in range(2)]
    memory = clip.encode_image(gen.decode(gen.sample_prior(4, seed=1))).detach()
    return gen, scorers, memory


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("mode", ["batched", "func", "replicated"])
def test_cuda_graphs_give_the_eager_numbers_on_the_paper_architectures(mode):
    """StyleGAN2-256 + ViT-B/32 (random weights), the paper's objective weights with a full
    uniqueness memory: captured graphs (jacobians at batch 1, values at batch 4) against
    eager calls, up to float rounding, over calls whose memory contents change."""
    import numpy as np

    from qdgs_lib.scoring import jacobian_row_errors

    gen, scorers, memory = _paper_scorer_pair()
    rng = np.random.default_rng(0)
    for graphs, sc in zip((False, True), scorers, strict=True):
        sc.jacobian_mode, sc.cuda_graphs, sc.memory = mode, graphs, memory.clone()
    for step in range(3):
        for b in (1, 4):
            z = gen.sample_prior(b, seed=10 * step + b).cpu().numpy()
            eager, graphed = (sc.evaluate(z, jacobian=b == 1) for sc in scorers)
            np.testing.assert_allclose(graphed.objective, eager.objective, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(graphed.measures, eager.measures, rtol=1e-4, atol=1e-5)
            if b == 1:  # per output, the error relative to the row's size: float rounding
                # gave up to 2e-4 (batched) and 1e-3 (func) of the largest entry on an H200;
                # a stale input or memory would give ~1. (A ~0 row, as the objective's with
                # random weights, is compared at 1e-6 of the largest row: jacobian_row_errors)
                err = jacobian_row_errors(graphed.jacobian, eager.jacobian).max()
                assert err <= 1e-2, err
            torch.testing.assert_close(scorers[1].memory, scorers[0].memory)
        noise = torch.as_tensor(rng.normal(0, 0.1, memory.shape), device="cuda").float()
        for sc in scorers:  # new contents, same shape: replayed with the new memory
            sc.memory = torch.nn.functional.normalize(sc.memory + noise, dim=1)
    assert {k[0] for k in scorers[1]._static_calls} == {mode, "values"}
    assert all(c.graph is not None for c in scorers[1]._static_calls.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("mode", ["replicated", "func"])
def test_compiled_static_calls_match_eager_on_the_paper_architectures(mode):
    """``compile_static`` on StyleGAN2-256 + ViT-B/32 inside CUDA graphs (jacobians at batch
    1: the compiled pass's backward, or the whole compiled ``func`` jacobian; values at batch
    4): kept by the scorer's check against eager (torch 2.11 compiled the split layers'
    jacobians to zero before their forward lost its in-place ops: bench/README.md, run 7),
    and within TF32 convolutions' rounding of eager calls of the same mode (an H200 gave
    1.4e-2 between compiled and eager decodes)."""
    import re
    import warnings

    import numpy as np

    from qdgs_lib.scoring import jacobian_row_errors
    from qdgs_lib.utils import compile_available

    if (why := compile_available(torch.device("cuda"))) is not None:
        pytest.skip(why)
    gen, (eager, comp), memory = _paper_scorer_pair()
    for sc, compiled in ((eager, False), (comp, True)):
        sc.jacobian_mode, sc.memory = mode, memory.clone()
        sc.cuda_graphs, sc.compile_static = compiled, compiled
    with warnings.catch_warnings(record=True) as seen:  # (a dropped compile warns)
        warnings.simplefilter("always")
        for step in range(3):
            for b in (1, 4):
                z = gen.sample_prior(b, seed=10 * step + b).cpu().numpy()
                ref, got = (sc.evaluate(z, jacobian=b == 1, update_memory=False)
                            for sc in (eager, comp))
                print(f"batch {b}: measures {np.abs(got.measures - ref.measures).max():.1e}"
                      + ("" if b == 4 else ", jacobian rows "
                         f"{jacobian_row_errors(got.jacobian, ref.jacobian).max():.1e}"))
                np.testing.assert_allclose(got.measures, ref.measures, rtol=1e-3, atol=1e-3)
                if b == 1:
                    assert jacobian_row_errors(got.jacobian, ref.jacobian).max() <= 5e-2
    # the scorer's own warnings when it stops compiling (check, failure, no compiler)
    assert not [str(w.message) for w in seen
                if re.search(r"scoring (pass|runs) .*compil|compiled scoring", str(w.message))]
    assert comp.compile_static is True
    assert {k[0] for k in comp._static_calls if k[-1] == "compiled"} == {mode, "values"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_deterministic_searches_reproduce_bit_for_bit_on_the_paper_architectures(tmp_path):
    """``deterministic`` on StyleGAN2-256 + ViT-B/32 (random weights; on CUDA with graphs,
    ``func`` jacobians): two scorers give equal values, jacobians and memories bit for bit
    over calls whose memory changes, and two seeded searches equal archives. Without the
    setting, CUDA's convolution and attention backward kernels may add in any order, and
    the antialiased resize's backward (CLIP's, before it became matmuls) did. (On a CPU
    this passes too, in 2.5 minutes: kept to CUDA, where it tells something.)"""
    device = "cuda"
    import numpy as np

    from qdgs_lib.search import QDSearch, SearchConfig

    gen, scorers, memory = _paper_scorer_pair(device)
    for sc in scorers:
        sc.deterministic, sc.jacobian_mode, sc.memory = True, "func", memory.clone()
    for step in range(3):
        for b in (1, 4, 1):
            z = gen.sample_prior(b, seed=10 * step + b).cpu().numpy()
            a, c = (sc.evaluate(z, jacobian=b == 1) for sc in scorers)
            assert np.array_equal(a.objective, c.objective)
            assert np.array_equal(a.measures, c.measures)
            assert b > 1 or np.array_equal(a.jacobian, c.jacobian)
            assert torch.equal(scorers[0].memory, scorers[1].memory)
    if device == "cuda":  # graphs were captured (a failed capture turns them off, warning)
        calls = scorers[1]._static_calls
        assert scorers[1].cuda_graphs is not False and {k[0] for k in calls} == {"func",
                                                                                 "values"}
        assert all(c.graph is not None for c in calls.values())
    cfg = SearchConfig(dims=(5, 5, 5, 5), ranges=[(-0.1, 0.1)] * 4, iterations=6,
                       batch_size=4, x0_samples=4, seed=3)
    frames = []
    for i, sc in enumerate(scorers):
        search = QDSearch(sc, cfg, tmp_path / f"run{i}")
        frames.append(archive_frame(search.run(progress=False)))
    assert len(frames[0]) > 0
    assert frames[0].equals(frames[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_packed_attention_gives_the_stock_numbers_on_vit_b32():
    """On CUDA, ``create_clip``'s default (``auto``) packs ViT-B/32's self-attention: its
    embeddings and vmapped jacobians (batch 1 and 4, as a search asks) equal open_clip's own
    modules up to float rounding."""
    from qdgs_lib.clip import PackedSelfAttention, create_clip

    torch.manual_seed(0)
    stock = create_clip("ViT-B-32-quickgelu", device="cuda", pretrained=False,
                        packed_attention=False)
    torch.manual_seed(0)
    packed = create_clip("ViT-B-32-quickgelu", device="cuda", pretrained=False)
    assert sum(isinstance(m, PackedSelfAttention) for m in packed.modules()) == 12
    for batch in (1, 4):
        x = torch.rand(batch, 3, 256, 256, device="cuda")
        out = []
        for clip in (stock, packed):
            z = x.clone().requires_grad_(True)
            emb = clip.encode_image(z, check=False)
            cot = torch.eye(emb.shape[1], device="cuda")[:5, None, :].expand(5, *emb.shape)
            (jac,) = torch.autograd.grad(emb, z, cot.contiguous(), is_grads_batched=True)
            out.append((emb.detach(), jac))
        (emb, jac), (emb_p, jac_p) = out
        torch.testing.assert_close(emb_p, emb, rtol=1e-4, atol=1e-5)
        err = (jac_p - jac).flatten(2).norm(dim=2)
        assert (err <= 1e-3 * jac.flatten(2).norm(dim=2) + 1e-30).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_tf32_scores_stay_close_to_fp32_on_the_paper_architectures():
    """``tf32_matmul`` (CLIP's matmuls in TF32; StyleGAN2's convolutions already are): on
    StyleGAN2-256 + ViT-B/32 (random weights, the paper's objective weights) the measures move
    by a small share of their spread over prior samples, and each jacobian row keeps its
    direction; torch's own setting is untouched after the calls."""
    import numpy as np

    from qdgs_lib.measures import prompts
    from qdgs_lib.scoring import PromptScorer
    from qdgs_lib.utils import tf32_matmul_on

    p, gen, clip = _paper_networks()
    sc = PromptScorer(gen, clip, p["objective"], prompts(p), weights=(1.0, 0.5, 0.2))
    before = tf32_matmul_on()
    z = gen.sample_prior(16, seed=3).cpu().numpy()
    out = {}
    for tf32 in (False, True):
        sc.tf32_matmul = tf32
        values = sc.evaluate(z, update_memory=False)
        jac = sc.evaluate(z[:4], jacobian=True, update_memory=False).jacobian
        out[tf32] = values.measures, values.objective, jac
        assert tf32_matmul_on() == before
    (m, obj, jac), (m32, obj32, jac32) = out[False], out[True]
    measure_err = (np.abs(m32 - m).max(0) / m.std(0)).max()
    cos = (jac * jac32).sum(2) / (np.linalg.norm(jac, axis=2) * np.linalg.norm(jac32, axis=2))
    print(f"TF32 vs fp32: measures {measure_err:.2e} of their spread, objective "
          f"{np.abs(obj32 - obj).max():.2e} (spread {obj.std():.2e}), jacobian rows' "
          f"cosine >= {cos.min():.6f}")
    assert measure_err < 0.02 and cos.min() > 0.99
    if torch.cuda.get_device_capability() >= (8, 0):  # TF32 exists: it must have been used
        assert measure_err > 0 and cos.min() < 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_autocast_scores_on_the_paper_architectures():
    """``PromptScorer.autocast`` float16 / bfloat16 on StyleGAN2-256 + ViT-B/32 (random
    weights, the prompt term alone: no memory to fill), as a search runs them (``func``, CUDA
    graphs): finite, the graphed calls give the eager calls' numbers, and the scores stay
    near float32's (printed: what the bench's candidate rows trade for their speed)."""
    import numpy as np

    from qdgs_lib.measures import prompts
    from qdgs_lib.scoring import PromptScorer

    p, gen, clip = _paper_networks()
    sc = PromptScorer(gen, clip, p["objective"], prompts(p), weights=(1.0, 0.0, 0.0))
    sc.jacobian_mode = "func"
    z = gen.sample_prior(16, seed=3).cpu().numpy()
    ref = sc.evaluate(z, update_memory=False).measures
    ref_jac = sc.evaluate(z[:1], jacobian=True, update_memory=False).jacobian
    for dtype, max_err, min_cos in (("float16", 0.1, 0.98), ("bfloat16", 0.3, 0.95)):
        sc.autocast = dtype
        sc.cuda_graphs = False
        eager = sc.evaluate(z[:1], jacobian=True, update_memory=False)
        sc.cuda_graphs = True
        for _ in range(3):  # the second call captures, the third replays
            graphed = sc.evaluate(z[:1], jacobian=True, update_memory=False)
        assert any(k[4] == dtype for k in sc._static_calls)
        np.testing.assert_allclose(graphed.measures, eager.measures, rtol=1e-3, atol=1e-4)
        err = np.linalg.norm(graphed.jacobian - eager.jacobian, axis=2)
        assert (err <= 1e-2 * np.linalg.norm(eager.jacobian, axis=2)).all()
        m = sc.evaluate(z, update_memory=False).measures
        jac = graphed.jacobian
        assert np.isfinite(m).all() and np.isfinite(jac).all()
        measure_err = (np.abs(m - ref).max(0) / ref.std(0)).max()
        cos = (jac * ref_jac).sum(2) / (np.linalg.norm(jac, axis=2) *
                                        np.linalg.norm(ref_jac, axis=2))
        print(f"autocast {dtype} vs fp32: measures {measure_err:.2e} of their spread, "
              f"jacobian rows' cosine >= {cos.min():.6f}")
        assert measure_err < max_err and cos.min() > min_cos


@pytest.mark.parametrize("device", DEVICES)
def test_trainer_precisions(device, tmp_path):
    from qdgs_lib.data.identities import TensorFaces
    from qdgs_lib.models.heads import AdaFace
    from qdgs_lib.models.iresnet import build_iresnet
    from qdgs_lib.train import RecognitionTrainer

    x = (torch.rand(16, 3, 64, 64) * 255).to(torch.uint8)  # decoded images stay uint8
    data = TensorFaces(x, torch.arange(16) % 4)
    for precision in ("bf16", "fp32"):
        tr = RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), data,
                                tmp_path / precision, batch_size=8, device=device,
                                progress=False, precision=precision)
        (row,) = tr.run(1)
        assert tr.amp == (precision == "bf16") and not tr.scaler.is_enabled()
        assert torch.isfinite(torch.tensor(row["loss"])) and 0 <= row["train_acc"] <= 1
    with pytest.raises(ValueError, match="precision must be"):
        RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), data, tmp_path,
                           precision="half")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_uint8_images_scale_on_cuda_to_the_cpus_values():
    """uint8 sets are scaled on the training device; CUDA divides by a host scalar as a
    multiplication by 1/255 (one bit off for about half the bytes): unit_range must not."""
    from qdgs_lib.utils import unit_range

    x = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(unit_range(x.cuda()).cpu(), x.float() / 255)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_released_augmentations_on_cuda_match_the_cpus():
    """The released style on the training device: crop and PIL's jitter are integer-valued
    float32 steps, bitwise the CPU's; the resizes are float32 matmuls, which round
    differently per device (within a level, up to 5 after the jitter, as against OpenCV)."""
    from qdgs_lib.augment import face_augment
    from qdgs_lib.utils import unit_range

    x = torch.randint(0, 256, (64, 3, 112, 112), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    for p, bound in (((1.0, 0.0, 1.0), 0), (0.5, 5)):
        want = face_augment(unit_range(x), torch.Generator().manual_seed(1), p=p,
                            style="released")
        got = face_augment(unit_range(x.cuda()), torch.Generator().manual_seed(1), p=p,
                           style="released").cpu()
        diff = ((got - want).abs() * 255).round()
        assert diff.max() <= bound and diff.mean() < 0.05, (p, diff.max(), diff.mean())


@pytest.mark.parametrize("device", DEVICES)
def test_the_released_settings_on_every_device(device, tmp_path):
    """The paper profiles' released-code settings: CLIP as clip.load gives it (float16 on
    CUDA), pooled, unclamped faces scored with jacobians (a CUDA graph from a shape's second
    call, once the uniqueness memory is full), the released start; the released shapes sets
    and training rotation."""
    import numpy as np

    from qdgs_lib.clip import create_clip
    from qdgs_lib.generators.stylegan2 import StyleGAN2, StyleGAN2Generator
    from qdgs_lib.measures import prompts
    from qdgs_lib.scoring import PromptScorer
    from qdgs_lib.search import QDSearch, SearchConfig
    from qdgs_lib.utils import at_least_fp32

    torch.manual_seed(0)
    gen = StyleGAN2Generator(StyleGAN2(img_resolution=32, channel_base=1024).eval(),
                             num_std_samples=200, latent_space="w+").to(device)
    clip = create_clip("qdgs-faces-clip", device=device, precision="released",
                       cutout_style="released")
    assert clip.weights_dtype == (torch.float16 if device == "cuda" else torch.float32)
    p = get_profile("paper", "faces")
    scorer = PromptScorer(gen, clip, p["objective"], prompts(p), weights=p["objective_weights"],
                          latent_norm_scale=0.5, objective_floor=False,
                          uniqueness_fill_scale=True, clamp_images=False, memory_size=4)
    # a full uniqueness memory: only then are a shape's calls captured (CUDA graphs on CUDA;
    # on a CPU, cuda_graphs=True runs the same static buffers eagerly)
    with torch.no_grad():
        scorer.memory = at_least_fp32(clip.encode_image(gen.decode(gen.sample_prior(4, seed=1))))
    scorer.cuda_graphs = True
    z = gen.sample_prior(2, seed=0).cpu().numpy()
    first = scorer.evaluate(z[:1], jacobian=True, update_memory=False)
    again = scorer.evaluate(z[:1], jacobian=True, update_memory=False)  # captured here
    assert len(scorer._static_calls) == 1
    assert np.isfinite(first.jacobian).all() and np.isfinite(again.jacobian).all()
    np.testing.assert_allclose(again.measures, first.measures, atol=1e-3)
    np.testing.assert_allclose(again.jacobian, first.jacobian,
                               atol=1e-2 * np.abs(first.jacobian).max())
    cfg = SearchConfig(dims=(2,) * 4, ranges=((-0.1, 0.1),) * 4, iterations=2, x0="released",
                       x0_samples=16, x0_truncation=0.7, batch_size=3, selection_rule="filter")
    start = QDSearch(scorer, cfg, tmp_path / "search").start_latent()
    assert start.shape == (gen.latent_dim,) and np.isfinite(start).all()
    ps = get_profile("paper", "shapes", n_train=16, n_test=16, train_epochs=1,
                     finetune_epochs=1, batch=8, image_size=32, seeds=[0], bias_levels=[0.9],
                     classifier="project")
    rows = shapes_poc.classifier_protocol(ps, {}, progress=False, device=device)
    assert len(rows) == 1 and rows["finetune"].tolist() == ["none"]


@pytest.mark.parametrize("device", DEVICES)
def test_stylegan3_scores_on_every_device(device):
    """A StyleGAN3 (config T, random weights) scored with jacobians on ``device`` by the faces
    CLIP: eagerly, then from a shape's second call as a CUDA graph (on a CPU the same static
    buffers run eagerly): the same numbers, and on a GPU the CPU's to TF32 rounding."""
    import copy

    import numpy as np

    from qdgs_lib.clip import create_clip
    from qdgs_lib.generators.stylegan2 import StyleGAN2Generator
    from qdgs_lib.generators.stylegan3 import StyleGAN3
    from qdgs_lib.measures import prompts
    from qdgs_lib.scoring import PromptScorer
    from qdgs_lib.utils import at_least_fp32

    torch.manual_seed(0)
    net = StyleGAN3(img_resolution=32, channel_base=1024, channel_max=32, num_layers=6).eval()
    p = get_profile("paper", "faces")

    def scores(dev, graphs):
        gen = StyleGAN2Generator(copy.deepcopy(net), num_std_samples=200).to(dev)
        sc = PromptScorer(gen, create_clip("qdgs-faces-clip", device=dev), p["objective"],
                          prompts(p), weights=p["objective_weights"], memory_size=4)
        with torch.no_grad():  # a full memory: only then are a shape's calls captured
            sc.memory = at_least_fp32(sc.clip.encode_image(gen.decode(gen.sample_prior(4,
                                                                                       seed=1))))
        # CUDA's mode on every device (a CPU's, loop, is never captured)
        sc.cuda_graphs, sc.jacobian_mode = graphs, "func"
        z = gen.sample_prior(2, seed=0).cpu().numpy()
        return [sc.evaluate(z, jacobian=True, update_memory=False) for _ in range(2)], sc

    (eager, _), sc = scores(device, False)
    (first, captured), sc = scores(device, True)
    assert len(sc._static_calls) == 1
    for s in (first, captured):
        np.testing.assert_allclose(s.measures, eager.measures, atol=1e-5)
        np.testing.assert_allclose(s.jacobian, eager.jacobian,
                                   atol=1e-4 * np.abs(eager.jacobian).max())
    assert np.abs(eager.jacobian).max() > 0 and np.isfinite(eager.jacobian).all()
    if device != "cpu":
        (cpu, _), _ = scores("cpu", False)
        np.testing.assert_allclose(eager.measures, cpu.measures,
                                   atol=1e-2 * np.abs(cpu.measures).max())
