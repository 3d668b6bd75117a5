import math
import warnings

import numpy as np
import pytest
import torch

from qdgs_lib.augment import face_augment
from qdgs_lib.data.identities import TensorFaces
from qdgs_lib.models.heads import AdaFace, ArcFace, CosFace, build_head
from qdgs_lib.models.iresnet import IResNet, build_iresnet
from qdgs_lib.train import RecognitionTrainer, sgd_no_bn_decay


def test_iresnet_shapes_and_unit_embeddings():
    net = build_iresnet("ir_small").eval()
    emb, norm = net(torch.rand(2, 3, 64, 64))
    assert emb.shape == (2, 128) and norm.shape == (2, 1)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="64x64"):
        net(torch.rand(1, 3, 112, 112))
    ir50 = IResNet(50)
    # stem + 2 per block (24 blocks) + conv shortcuts where channels change (stages 2-4)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in ir50.modules()) == 1 + 2 * 24 + 3
    assert ir50.output[3].in_features == 512 * 7 * 7


def test_adaface_margin_matches_hand_computation():
    head = AdaFace(2, 2, m=0.4, h=0.333, s=64.0)
    head.eval()  # fixed statistics: batch_mean 20, batch_std 100
    with torch.no_grad():
        head.kernel.copy_(torch.eye(2))
    theta = 0.7
    emb = torch.tensor([[math.cos(theta), math.sin(theta)]])
    norm = torch.tensor([[53.0]])
    logits = head(emb, norm, torch.tensor([0]))
    z = max(-1.0, min(1.0, (53.0 - 20.0) / (100.0 + 1e-3) * 0.333))
    expected_target = 64 * (math.cos(theta - 0.4 * z) - (0.4 + 0.4 * z))
    expected_other = 64 * math.sin(theta)  # cos of the angle to the other center
    assert logits[0, 0].item() == pytest.approx(expected_target, rel=1e-5)
    assert logits[0, 1].item() == pytest.approx(expected_other, rel=1e-5)


def test_adaface_updates_norm_statistics_in_training():
    head = AdaFace(4, 3)
    head.train()
    head(torch.nn.functional.normalize(torch.randn(8, 4), dim=1), torch.full((8, 1), 30.0),
         torch.zeros(8, dtype=torch.long))
    assert head.batch_mean.item() == pytest.approx(0.99 * 20 + 0.01 * 30)
    assert head.batch_std.item() == pytest.approx(0.99 * 100)


def test_arcface_and_cosface_margins():
    emb = torch.tensor([[1.0, 0.0]])
    arc, cos = ArcFace(2, 2, m=0.5), CosFace(2, 2, m=0.4)
    for h in (arc, cos):
        with torch.no_grad():
            h.kernel.copy_(torch.tensor([[math.cos(0.3), 1.0], [math.sin(0.3), 0.0]]))
    y = torch.tensor([0])
    assert arc(emb, None, y)[0, 0].item() == pytest.approx(64 * math.cos(0.8), rel=1e-4)
    assert cos(emb, None, y)[0, 0].item() == pytest.approx(64 * (math.cos(0.3) - 0.4), rel=1e-4)
    with pytest.raises(ValueError, match="unknown head 'sphereface'"):
        build_head("sphereface", 2, 2)


def test_no_weight_decay_on_batchnorm():
    net = build_iresnet("ir_small")
    opt = sgd_no_bn_decay([net], lr=0.1)
    no_decay = {id(p) for p in opt.param_groups[1]["params"]}
    bn = [p for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    assert bn and all(id(p) in no_decay for p in bn)
    assert opt.param_groups[1]["weight_decay"] == 0 and opt.param_groups[0]["weight_decay"] > 0


def tiny_task(n_ids=4, per_id=8):
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(n_ids, 3, 1, 1, generator=g)
    x = (protos.repeat_interleave(per_id, 0) + 0.05 * torch.randn(n_ids * per_id, 3, 64, 64,
                                                                   generator=g)).clamp(0, 1)
    return x, torch.arange(n_ids).repeat_interleave(per_id)


def make_trainer(outdir, seed=0, channels_last=None):
    torch.manual_seed(seed)
    x, y = tiny_task()
    return RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), TensorFaces(x, y),
                              outdir, lr=0.05, milestones=(3,), batch_size=16, progress=False,
                              channels_last=channels_last)


def test_loss_decreases_on_a_tiny_set(tmp_path):
    rows = make_trainer(tmp_path).run(6)
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_resume_gives_the_same_state_as_an_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full")
    full.run(3)
    part = make_trainer(tmp_path / "part")
    part.run(2)  # "killed" after epoch 2
    resumed = make_trainer(tmp_path / "part", seed=123)  # fresh process, other init
    resumed.run(3)
    assert resumed.epoch == 3
    for (k, a), b in zip(full.backbone.state_dict().items(),
                         resumed.backbone.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    import pandas as pd
    assert list(pd.read_csv(tmp_path / "part" / "log.csv").epoch) == [1, 2, 3]


def test_face_augment_is_seeded_and_keeps_shape():
    x = torch.rand(5, 3, 64, 64)
    a = face_augment(x, torch.Generator().manual_seed(1), p=1.0)
    b = face_augment(x, torch.Generator().manual_seed(1), p=1.0)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_margin_heads_start_with_unit_class_centres():
    """AdaFace's init (uniform, then each column renormed to 1): with the normalized kernel in
    the logits, large centres would turn ~100x slower per SGD step."""
    for head in (AdaFace(512, 7), ArcFace(512, 7), CosFace(512, 7)):
        norms = head.kernel.detach().norm(dim=0)
        assert torch.allclose(norms, torch.ones(7), atol=1e-5)


def test_face_augment_flips_half_the_batch_and_nothing_else_at_p0():
    x = torch.rand(200, 3, 8, 8)
    out = face_augment(x, torch.Generator().manual_seed(0), p=0.0)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same ^ flipped).all())  # each image as it was, or mirrored
    assert 70 < int(flipped.sum()) < 130  # p = 0.5 (binomial sd 7)
    assert torch.equal(face_augment(x, torch.Generator().manual_seed(0), p=0.0, flip=False), x)


def test_crop_boxes_follow_random_resized_crop():
    from qdgs_lib.augment import _resized_crop_box

    g = torch.Generator().manual_seed(0)
    areas = []
    for _ in range(500):
        top, left, h, w = _resized_crop_box(112, 112, g)
        assert 0 <= top and top + h <= 112 and 0 <= left and left + w <= 112
        assert 3 / 4 - 0.03 <= w / h <= 4 / 3 + 0.03
        areas.append(h * w / 112**2)
    assert 0.19 <= min(areas) < 0.3 and max(areas) > 0.9


def test_face_augment_crop_keeps_the_box_in_place_on_black():
    """Only crops: every image is the original inside one box and black around it."""
    x = 0.1 + 0.9 * torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = face_augment(x, torch.Generator().manual_seed(3), p=(1.0, 0.0, 0.0), flip=False)
    for img, orig in zip(out, x, strict=True):
        inside = img[0] > 0
        rows, cols = inside.any(1).nonzero().flatten(), inside.any(0).nonzero().flatten()
        box = inside[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert bool(box.all())  # one filled rectangle, not resized
        assert 0.15 < box.numel() / 32**2 <= 1.0
        assert torch.equal(img[:, inside], orig[:, inside]) and img[:, ~inside].eq(0).all()


def test_face_augment_low_resolution_blurs_but_keeps_flat_images():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((16, 3, 32, 32), 0.3)
    out = face_augment(flat, g, p=(0.0, 1.0, 0.0), flip=False)
    assert torch.allclose(out, flat, atol=1e-6)  # every interpolation keeps a constant
    noise = torch.rand(16, 3, 32, 32, generator=g)
    out = face_augment(noise, g, p=(0.0, 1.0, 0.0), flip=False)
    assert 0 <= out.min() and out.max() <= 1
    assert out.std() < noise.std()  # detail is lost on the way down


def test_color_jitter_equals_torchvision():
    from torchvision.transforms import functional as TF

    from qdgs_lib.augment import color_jitter

    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        factors = [1.4, 0.6, 1.3]
        ref = img
        for k in order:
            ref = fns[k](ref, factors[k])
        assert torch.allclose(color_jitter(img, order, factors), ref, atol=1e-6)


def test_log_rows_survive_a_kill_between_log_and_checkpoint(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path)
    saves = []

    def save_then_die():
        if tr.epoch == 2:
            raise KeyboardInterrupt  # killed after epoch 2's row, before its checkpoint
        saves.append(tr.epoch)
        RecognitionTrainer.save(tr)

    monkeypatch.setattr(tr, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        tr.run(3)
    rows = make_trainer(tmp_path).run(3)  # resumes after epoch 1, trains 2 and 3 again
    import pandas as pd

    assert saves == [1] and [r["epoch"] for r in rows] == [2, 3]
    assert list(pd.read_csv(tmp_path / "log.csv").epoch) == [1, 2, 3]


def test_the_log_names_the_rate_each_epoch_trained_at(tmp_path):
    rows = make_trainer(tmp_path).run(4)  # lr 0.05, milestone 3
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.05, 0.05, 0.005])


def test_asking_for_fewer_epochs_than_the_checkpoint_is_refused(tmp_path):
    make_trainer(tmp_path).run(2)
    with pytest.raises(ValueError, match="at epoch 2, past the 1"):
        make_trainer(tmp_path).run(1)
    assert make_trainer(tmp_path).run(2) == []  # the same count: already done


def test_ranks_draw_their_own_augmentations_on_one_order(tmp_path):
    """Under DDP every rank takes its share of one permutation, but its own augmentation and
    dropout draws (a shared seed would give sample i of each rank's batch the same crop)."""
    tr = make_trainer(tmp_path)
    tr.world = 2
    orders, draws, dropout = [], [], []
    for rank in (0, 1):
        tr.rank = rank
        order, g = tr._epoch_order()
        orders.append(order)
        draws.append(torch.rand(8, generator=g))
        dropout.append(torch.rand(8))
    full = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(orders[0], full[0::2]) and torch.equal(orders[1], full[1::2])
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(dropout[0], dropout[1])


def test_resume_refuses_another_process_count(tmp_path):
    make_trainer(tmp_path).run(1)
    st = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    st["settings"]["processes"] = 2
    torch.save(st, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="processes"):
        make_trainer(tmp_path).run(2)
    del st["settings"]["processes"]  # written before the key existed: one process
    torch.save(st, tmp_path / "checkpoint.pt")
    assert make_trainer(tmp_path).run(2)[0]["epoch"] == 2


def test_single_process_distributed_matches_plain_training(tmp_path):
    """torchrun with one process: nothing to synchronize (no DDP wrapper), the plain run's
    weights; two processes: tests/test_ddp.py."""
    import torch.distributed as dist

    plain = make_trainer(tmp_path / "plain")
    plain.run(2)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        ddp = make_trainer(tmp_path / "ddp")
        assert not isinstance(ddp.model, torch.nn.parallel.DistributedDataParallel)
        ddp.run(2)
    finally:
        dist.destroy_process_group()
    for (k, a), b in zip(plain.backbone.state_dict().items(),
                         ddp.backbone.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k


def test_the_loader_leaves_the_global_rng_alone(tmp_path):
    """Dropout masks are seeded per epoch from the global RNG; a DataLoader iterator draws its
    worker seed from it unless given its own generator, which would change every result."""
    tr = make_trainer(tmp_path)
    state = torch.get_rng_state()
    batches = list(tr._loader([[0, 1, 2], [3, 4, 5]]))
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(batches[1][0], tr.data.images[3:6])


def test_in_memory_batches_keep_the_memory_layout(tmp_path):
    """Images read from HWC files are channels_last-strided; a batch must be one indexing of
    the tensor (same strides, hence the same float rounding in the convolutions), not a stack
    of items, or results change with the data pipeline."""
    hwc = torch.rand(16, 64, 64, 3)
    x = hwc.permute(0, 3, 1, 2)
    tr = RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4),
                            TensorFaces(x, torch.arange(16) % 4), tmp_path, progress=False)
    (xb, yb), = list(tr._loader([[3, 1, 2]]))
    ref = x[torch.tensor([3, 1, 2])]
    assert torch.equal(xb, ref) and xb.stride() == ref.stride() and yb.tolist() == [3, 1, 2]


def test_a_uint8_set_trains_exactly_as_its_float_copy(tmp_path):
    """pretrain_protocol holds the synthetic sets as uint8 (a quarter of the memory); the
    trainer's per-batch scaling must give the weights that the float set read from the same
    files gives, bit for bit (same values and memory layout, augmentations included)."""
    g = torch.Generator().manual_seed(0)
    hwc = torch.randint(0, 256, (16, 64, 64, 3), dtype=torch.uint8, generator=g)
    x8 = hwc.permute(0, 3, 1, 2)  # as read_identity_dataset(..., torch.uint8) returns it
    states = []
    for x in (x8, x8.float() / 255):
        torch.manual_seed(0)
        tr = RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4),
                                TensorFaces(x, torch.arange(16) % 4), tmp_path / str(x.dtype),
                                lr=0.05, milestones=(3,), batch_size=8, progress=False,
                                device="cpu")
        tr.run(2)
        states.append(tr.backbone.state_dict())
    for k, a in states[0].items():
        assert torch.equal(a, states[1][k]), k


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_failed_compile_trains_eagerly_with_the_eager_numbers(where, tmp_path):
    """torch 2.7's inductor writes C++ that g++ refuses for IR-ResNets on AVX-512 CPUs (at the
    backward's compile, in the first step's loss.backward()). A compile that fails, in the
    forward or the backward, warns; the step's batch-norm and AdaFace statistics and RNG are
    restored and it runs again eagerly: the epoch equals an eager trainer's bitwise."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    class InductorError(RuntimeError):  # (inductor's own class, matched by name)
        pass

    def broken(graph, inputs):
        raise InductorError("CppCompileError: conflicting declaration 'float tmp_acc0_arr [2]'")

    backend = broken if where == "forward" else aot_autograd(
        fw_compiler=lambda graph, inputs: make_boxed_func(graph.forward), bw_compiler=broken)
    x, y = tiny_task()
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        tr = RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4),
                                TensorFaces(x[:32], y[:32]), tmp_path / str(compiled),
                                lr=0.05, milestones=(3,), batch_size=8, progress=False,
                                device="cpu", compile=compiled)
        if compiled:
            tr.model._compiled_forward = torch.compile(tr.backbone.forward, backend=backend)
            with pytest.warns(UserWarning, match="torch.compile failed .*runs eagerly"):
                log = tr.train_epoch()
            assert tr.model._compiled_forward is None and not tr.compiled
        else:
            log = tr.train_epoch()
        runs.append((log, {k: v.clone() for k, v in tr.model.state_dict().items()}))
    assert runs[0][0] == runs[1][0]
    for k, v in runs[0][1].items():
        assert torch.equal(v, runs[1][1][k]), k


def test_compiled_training_matches_eager_up_to_rounding(tmp_path):
    # torch.compile (inductor on this CPU): for the same weights, batch and dropout seed, the
    # loss of eager, and gradients as close to float64's as eager's are (fp32 rounding through
    # 8 BatchNorms leaves ~0.5% in some tensors either way); a trainer's epoch within
    # rounding of the eager one, and the same checkpoint layout, so eager resumes compiled
    from qdgs_lib.train import BackboneAndHead, _compile_failure

    torch.manual_seed(0)
    x, y = tiny_task()
    net, head = build_iresnet("ir_small").train(), AdaFace(128, 4).train()

    def loss_and_grads(model, dtype=torch.float32):
        net.zero_grad()
        torch.manual_seed(1)  # the dropout masks
        loss = torch.nn.functional.cross_entropy(model(x[:16].to(dtype), y[:16]), y[:16])
        loss.backward()
        return loss.item(), [q.grad.double().clone() for q in net.parameters()]

    eager_loss, eager = loss_and_grads(lambda a, b: BackboneAndHead(net, head)(a, b)[1])
    compiled_model = BackboneAndHead(net, head, compile=True)
    try:
        comp_loss, comp = loss_and_grads(lambda a, b: compiled_model(a, b)[1])
    except Exception as e:  # torch 2.7 on AVX-512 CPUs: the trainer trains eagerly (above)
        if not _compile_failure(e):
            raise
        pytest.skip(f"this torch cannot compile ir_small here: {str(e).splitlines()[0]}")
    net.double(), head.double()
    ref_loss, ref = loss_and_grads(lambda a, b: head(*net(a), b), torch.float64)
    assert math.isclose(eager_loss, comp_loss, rel_tol=1e-5) and \
        math.isclose(ref_loss, comp_loss, rel_tol=1e-5), (eager_loss, comp_loss, ref_loss)
    # tensors with a real gradient (a bias before a BatchNorm has ~1e-15: pure rounding)
    real = [i for i, g in enumerate(ref) if g.norm() > 1e-6]
    assert len(real) > 50

    def worst(grads):
        return max(float((grads[i] - ref[i]).norm() / ref[i].norm()) for i in real)

    assert worst(comp) <= 3 * worst(eager) + 1e-6, (worst(comp), worst(eager))

    # The trainer's default layout is channels_last. torch 2.11's compiled dropout draws its
    # mask in the tensor's logical order where eager draws in memory order: on channels_last
    # another draw of the same masks' distribution (measured on 2.11.0, CPU: one step's loss
    # 29.62 against eager's 28.59, and equal to an NCHW run's); 2.14 draws in eager's order.
    layout = None if torch.__version__ >= "2.14" else False

    def trainer(outdir, batch, compile):
        torch.manual_seed(0)
        return RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), TensorFaces(x, y),
                                  outdir, lr=0.05, milestones=(3,), batch_size=batch,
                                  progress=False, compile=compile, channels_last=layout)

    # one step (the whole set in one batch): the logged loss is that of the same initial
    # weights, batch, augmentations and dropout, so it agrees to float rounding
    one_eager, one_comp = trainer(tmp_path / "e1", 32, False), trainer(tmp_path / "c1", 32, True)
    assert one_comp.compiled
    a, b = one_eager.run(1)[0], one_comp.run(1)[0]
    assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5), (a, b)
    # two steps: the second starts from weights one SGD step (lr 0.05) apart by rounding,
    # which the loss amplifies (measured 0.2% at 1 thread, less at 2): close, not equal
    rows_eager = make_trainer(tmp_path / "eager", channels_last=layout).run(1)
    rows = trainer(tmp_path / "compiled", 16, True).run(1)
    assert math.isclose(rows_eager[0]["loss"], rows[0]["loss"], rel_tol=1e-2), (rows_eager, rows)
    resumed = make_trainer(tmp_path / "compiled", channels_last=layout)
    assert resumed.load() and resumed.epoch == 1


def test_compile_without_a_compiler_warns_and_trains_eagerly(tmp_path, monkeypatch):
    from qdgs_lib.train import compile_available

    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ / clang++ here
    why = compile_available(torch.device("cpu"))
    assert why is not None and "C++ compiler" in why
    x, y = tiny_task()
    with pytest.warns(UserWarning, match=r"C\+\+ compiler.*eagerly"):
        tr = RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), TensorFaces(x, y),
                                tmp_path / "run", batch_size=16, progress=False, compile=True)
    assert not tr.compiled and tr.model._compiled_forward is None
    # eager: the backbone is registered once (its keys are not repeated under another name)
    assert all(k.startswith(("backbone.", "head.")) for k in tr.model.state_dict())


def test_resume_refuses_other_settings_and_a_fresh_start_starts_a_fresh_log(tmp_path):
    import pandas as pd

    make_trainer(tmp_path).run(1)
    x, y = tiny_task()
    other_data = TensorFaces(x[:24], y[:24])  # 3 identities instead of 4
    # (a same-size set of other images: only a data_id tells it apart)
    for kwargs in ({"lr": 0.5}, {"seed": 7}, {"data": other_data}, {"data_id": "other"}):
        args = {"data": TensorFaces(x, y), "lr": 0.05, "seed": 0, **kwargs}
        tr = RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), args.pop("data"),
                                tmp_path, milestones=(3,), batch_size=16, progress=False,
                                **args)
        with pytest.raises(ValueError, match="other settings or data"):
            tr.run(2)
    # a checkpoint written before data ids were recorded resumes whatever the id (unknown)
    st = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del st["settings"]["data_id"]
    torch.save(st, tmp_path / "checkpoint.pt")
    assert make_trainer(tmp_path).load()
    tr = RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), TensorFaces(x, y),
                            tmp_path, lr=0.05, milestones=(3,), batch_size=16, progress=False,
                            data_id="some digest")
    assert tr.load()
    # the advice: delete the checkpoints; the rerun's log then holds this run's epochs only
    for f in tmp_path.glob("checkpoint*.pt"):
        f.unlink()
    make_trainer(tmp_path).run(2)
    assert list(pd.read_csv(tmp_path / "log.csv").epoch) == [1, 2]


def test_datasets_the_head_cannot_learn_are_refused(tmp_path):
    x, y = tiny_task()
    with pytest.raises(ValueError, match="at least 2"):
        RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 1),
                           TensorFaces(x[:8], y[:8]), tmp_path, progress=False)
    with pytest.raises(ValueError, match="head has 3 classes but the dataset 4"):
        RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 3), TensorFaces(x, y),
                           tmp_path, progress=False)


def test_a_cpu_checkpoint_resumes_with_fp16_loss_scaling(tmp_path):
    """A run written without loss scaling (CPU, fp32 or bf16: an empty scaler state) resumes
    where fp16 scaling is on (CUDA's default); it was refused as "another model"."""
    make_trainer(tmp_path).run(1)
    tr = make_trainer(tmp_path)
    tr.scaler = torch.amp.GradScaler("cpu", enabled=True)  # stands in for CUDA fp16's scaler
    assert tr.load() and tr.epoch == 1


def test_resume_in_another_precision_warns(tmp_path):
    make_trainer(tmp_path).run(1)  # fp32 on the CPU ("auto")
    x, y = tiny_task()
    tr = RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), TensorFaces(x, y),
                            tmp_path, lr=0.05, milestones=(3,), batch_size=16, progress=False,
                            precision="bf16")
    with pytest.warns(UserWarning, match="trained in fp32 up to epoch 1; it resumes in bf16"):
        assert tr.load()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_trainer(tmp_path).load()  # the same precision: nothing to say


def test_pretrain_protocol_refuses_finished_models_of_other_settings_or_data(tmp_path):
    import pandas as pd

    from qdgs_lib import recognition
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.sampling import write_image_dataset

    def synthetic(seed):
        x, y = tiny_task()
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]
        write_image_dataset(tmp_path / "set", x, [f"id{int(i)}" for i in y],
                            manifest=pd.DataFrame({"identity": y.numpy()}), overwrite=True)
        return {"qdgs": tmp_path / "set"}

    r = get_profile("smoke", "recognition", real_identities=4, real_views=2, batch=8)
    run = tmp_path / "run"
    sets = synthetic(0)
    first = recognition.pretrain_protocol(r, sets, run, progress=False)
    files = sorted((run / "models").glob("*.safetensors"))
    assert [f.name for f in files] == ["none_seed0.safetensors", "qdgs_seed0.pretrained"
                                       ".safetensors", "qdgs_seed0.safetensors"]
    stamps = [f.stat().st_mtime_ns for f in files]
    # finished: reused (numpy seeds too: the records are JSON)
    again = recognition.pretrain_protocol(r, sets, run, seeds=np.arange(1), progress=False)
    assert again.equals(first) and [f.stat().st_mtime_ns for f in files] == stamps
    longer = {**r, "real_epochs": 2}
    with pytest.raises(ValueError, match=r"none_seed0.safetensors was trained with other .*"
                                         r"'epochs': \(1, 2\)"):
        recognition.pretrain_protocol(longer, sets, run, progress=False)
    # the pretraining stage's own epochs are in its record (and so in the real stage's init)
    longer_pre = {**r, "pretrain_epochs": r["pretrain_epochs"] + 1}
    with pytest.raises(ValueError, match=r"qdgs_seed0.safetensors was trained with other"):
        recognition.pretrain_protocol(longer_pre, sets, run, progress=False)
    with pytest.raises(ValueError, match="qdgs_seed0.safetensors was trained with other"):
        recognition.pretrain_protocol(r, synthetic(1), run, progress=False)  # a rewritten set
    # the advice: delete the finished stages of the old set; the rest is kept
    for f in (run / "models").glob("qdgs_*"):
        f.unlink()
    recognition.pretrain_protocol(r, sets, run, progress=False)
    assert files[0].stat().st_mtime_ns == stamps[0]
    # a model saved before the records were kept is reused, with a warning
    recognition.save_weights(recognition.load_backbone(r, files[0]), files[0])
    with pytest.warns(UserWarning, match="no training record"):
        recognition.pretrain_protocol(r, {}, run, progress=False)


def test_models_and_checkpoints_of_the_old_digest_format_count_as_the_same_data(tmp_path):
    """Files written before tensor_digest (2026-11-27) name a synthetic set by the sha256 of
    its labels and float32 images: same data, so reused and resumed, not refused."""
    import hashlib
    import json

    import pandas as pd
    from safetensors.torch import load_file, save_file

    from qdgs_lib import recognition
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.sampling import read_identity_dataset, write_image_dataset

    x, y = tiny_task()
    write_image_dataset(tmp_path / "set", x, [f"id{int(i)}" for i in y],
                        manifest=pd.DataFrame({"identity": y.numpy()}))
    r = get_profile("smoke", "recognition", real_identities=4, real_views=2, batch=8)
    run = tmp_path / "run"
    recognition.pretrain_protocol(r, {"qdgs": tmp_path / "set"}, run, progress=False)
    images, labels, _ = read_identity_dataset(tmp_path / "set")  # float32, as read then
    h = hashlib.sha256(labels.numpy().tobytes())
    for chunk in images.split(1024):
        h.update(chunk.contiguous().numpy().tobytes())
    old = h.hexdigest()
    files = sorted((run / "models").glob("qdgs_*.safetensors"))
    for f in files:  # as the older qdgs wrote them
        with recognition.safe_open(str(f), "pt") as g:
            meta = g.metadata()
        new = json.loads(meta[recognition._RECORD_KEY])["data" if "pretrained" in f.name
                                                        else "init"]
        new = new["sha256"] if "sha256" in new else new["data"]["sha256"]
        meta[recognition._RECORD_KEY] = meta[recognition._RECORD_KEY].replace(new, old)
        save_file(load_file(str(f)), str(f), metadata=meta)
    stamps = [f.stat().st_mtime_ns for f in files]
    recognition.pretrain_protocol(r, {"qdgs": tmp_path / "set"}, run, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # an interrupted stage's checkpoint: the trainer takes its old id as the same data
    legacy = recognition._LegacyDigests(*[{"qdgs": d} for d in (TensorFaces(
        *read_identity_dataset(tmp_path / "set", torch.uint8)[:2]), new)])
    stage = tmp_path / "stage"
    assert legacy.ids(new, stage) == [new]  # nothing to resume: not computed
    torch.manual_seed(0)
    RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), TensorFaces(x, y), stage,
                       milestones=(3,), batch_size=16, progress=False, data_id=old).run(1)
    assert legacy.ids(new, stage) == [new, old]
    for ids, ok in (([new, old], True), (["other", "ids"], False)):
        tr = RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4), TensorFaces(x, y),
                                stage, milestones=(3,), batch_size=16, progress=False,
                                data_id=ids)
        if ok:
            assert tr.load() and tr.settings["data_id"] == new
        else:
            with pytest.raises(ValueError, match="other settings or data"):
                tr.load()


def test_models_table_is_the_same_file_wherever_the_run_folder_lies(tmp_path):
    """notebook 04 records the sha256 of models.csv: absolute paths in it made the record
    depend on where the repository was checked out."""
    import pandas as pd

    from qdgs_lib import recognition

    tables = []
    for where in ("a", "b/c"):
        run = tmp_path / where
        models = pd.DataFrame({"pretraining": ["none"], "seed": [0],
                               "model": [str(run / "models" / "none_seed0.safetensors")]})
        recognition.save_models_table(models, run / "models.csv")
        tables.append((run / "models.csv").read_bytes())
        back = recognition.read_models_table(run / "models.csv")
        assert back.model.tolist() == [str((run / "models" / "none_seed0.safetensors")
                                            .resolve())]
    assert tables[0] == tables[1] and b"models/none_seed0.safetensors" in tables[0]
    # a table written with absolute paths (before 2026-11-28) still reads
    old = tmp_path / "old.csv"
    pd.DataFrame({"pretraining": ["none"], "seed": [0], "model": ["/x/m.safetensors"]}).to_csv(
        old, index=False)
    assert recognition.read_models_table(old).model.tolist() == ["/x/m.safetensors"]
    with pytest.raises(FileNotFoundError, match="run notebooks/03_pretraining.ipynb first"):
        recognition.read_models_table(tmp_path / "none.csv")


def test_adaface_keeps_its_norm_statistics_in_eval():
    head = AdaFace(4, 3).eval()
    head(torch.nn.functional.normalize(torch.randn(8, 4), dim=1), torch.full((8, 1), 30.0),
         torch.zeros(8, dtype=torch.long))
    assert head.batch_mean.item() == 20.0 and head.batch_std.item() == 100.0


def test_resume_restores_the_learning_rate_schedule(tmp_path):
    """milestones=(3,): the rate drops after epoch 3 in the resumed run too (a scheduler left
    fresh by the resume would keep 0.05 and drop three epochs late)."""
    full = make_trainer(tmp_path / "full")
    full.run(3)
    make_trainer(tmp_path / "part").run(2)
    resumed = make_trainer(tmp_path / "part", seed=123)
    resumed.run(3)
    assert resumed.sched.state_dict() == full.sched.state_dict()
    assert resumed.opt.param_groups[0]["lr"] == full.opt.param_groups[0]["lr"] \
        == pytest.approx(0.005)


def test_each_epoch_has_its_own_sample_order_and_a_resume_repeats_it(tmp_path):
    t = make_trainer(tmp_path)
    first, _ = t._epoch_order()
    t.epoch = 1
    second, _ = t._epoch_order()
    assert not torch.equal(first, second)
    assert sorted(second.tolist()) == list(range(len(t.data)))
    t.epoch = 0
    assert torch.equal(t._epoch_order()[0], first)
