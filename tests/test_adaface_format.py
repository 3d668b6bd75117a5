"""AdaFace checkpoints: our IR-ResNets written in AdaFace's names and read back bitwise; PyTorch
Lightning files read as data (their classes inert, never run); bad files refused clearly."""

import argparse
import collections
import os
import pathlib
import sys
import types

import numpy as np
import pytest
import torch

from qdgs_lib import recognition
from qdgs_lib.adaface_format import (
    backbone_state,
    load_adaface_backbone,
    read_checkpoint,
    save_adaface_checkpoint,
)
from qdgs_lib.data.benchmarks import PairSet
from qdgs_lib.models.iresnet import build_iresnet
from qdgs_lib.utils import BadFileError


def _adaface_names_ir18() -> set[str]:
    """The state-dict names of AdaFace's ``net.build_model("ir_18")``, written out from its
    structure (input_layer; 8 BasicBlockIR with res_layer and, where the width changes, a
    conv shortcut_layer; output_layer BN2d-Dropout-Flatten-Linear-BN1d)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = {"input_layer.0.weight", "input_layer.2.weight",
             *(f"input_layer.1.{b}" for b in bn),
             *(f"output_layer.0.{b}" for b in bn), "output_layer.3.weight",
             "output_layer.3.bias",
             *(f"output_layer.4.{b}" for b in ("running_mean", "running_var",
                                               "num_batches_tracked"))}
    for i in range(8):
        r = f"body.{i}.res_layer"
        names |= {f"{r}.1.weight", f"{r}.3.weight", f"{r}.4.weight"}
        names |= {f"{r}.{j}.{b}" for j in (0, 2, 5) for b in bn}
        if i in (2, 4, 6):  # 64->128, 128->256, 256->512
            names |= {f"body.{i}.shortcut_layer.0.weight",
                      *(f"body.{i}.shortcut_layer.1.{b}" for b in bn)}
    return names


def _trained_like(name: str = "ir18", seed: int = 0) -> torch.nn.Module:
    """A backbone with non-trivial batch-norm statistics (as after training)."""
    torch.manual_seed(seed)
    net = build_iresnet(name)
    with torch.no_grad():
        for k, t in net.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.2 if "running_var" in k
                       else torch.randn_like(t) * 0.01)
    return net.eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return all(torch.equal(u, v) for u, v in zip(a(x), b(x), strict=True))


def test_round_trip_in_adafaces_names_is_bitwise(tmp_path):
    net = _trained_like()
    path = save_adaface_checkpoint(net, tmp_path / "ir18.ckpt")
    state = read_checkpoint(path)["state_dict"]
    assert {k.removeprefix("model.") for k in state} == _adaface_names_ir18()
    assert all(k.startswith("model.") for k in state)
    back = load_adaface_backbone(path)
    assert back.depth == 18 and not back.training
    assert _same_outputs(net, back)


def _fake_lightning_module():
    """A class from a module the reader cannot import (as Lightning's AttributeDict is here)."""
    names = ["fake_lightning", "fake_lightning.utilities", "fake_lightning.utilities.parsing"]
    mods = {n: types.ModuleType(n) for n in names}

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = names[-1]
    AttributeDict.__qualname__ = "AttributeDict"
    mods[names[-1]].AttributeDict = AttributeDict
    return mods, AttributeDict


def test_lightning_checkpoint_is_read_as_data(tmp_path, monkeypatch):
    net = _trained_like("ir34", seed=1)
    names = {k: v for k, v in save_and_read(net, tmp_path).items()}
    mods, AttributeDict = _fake_lightning_module()
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    head = torch.randn(512, 7)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1, momentum=0.9)
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [12, 20, 24])
    torch.save({"epoch": 25, "pytorch-lightning_version": "1.8.6",
                "state_dict": {**{f"model.{k}": v for k, v in names.items()},
                               "head.kernel": head, "head.batch_mean": torch.ones(1)},
                "hyper_parameters": AttributeDict(arch="ir_34", lr_milestones=[12, 20, 24],
                                                  args=argparse.Namespace(lr=0.01),
                                                  out=pathlib.PurePosixPath("/x/y"),
                                                  tags={"a", "b"}, blob=b"\x00\x01"),
                "optimizer_states": [opt.state_dict()], "lr_schedulers": [sched.state_dict()]},
               tmp_path / "last.ckpt")
    for n in mods:
        monkeypatch.delitem(sys.modules, n)
    ckpt = read_checkpoint(tmp_path / "last.ckpt")
    assert ckpt["lr_schedulers"][0]["milestones"] == collections.Counter({12: 1, 20: 1, 24: 1})
    hp = ckpt["hyper_parameters"]
    assert type(hp).__name__ == "AttributeDict" and hp["arch"] == "ir_34"
    assert not isinstance(hp, AttributeDict)  # an inert stand-in, not the file's class
    assert "fake_lightning.utilities.parsing" not in sys.modules
    assert torch.equal(ckpt["state_dict"]["head.kernel"], head)
    back = load_adaface_backbone(tmp_path / "last.ckpt")
    assert back.depth == 34 and _same_outputs(net, back)


def save_and_read(net, tmp_path) -> dict:
    """The AdaFace names and tensors of ``net`` (through our writer and reader)."""
    path = save_adaface_checkpoint(net, tmp_path / "plain.ckpt")
    return {k.removeprefix("model."): v for k, v in read_checkpoint(path)["state_dict"].items()}


def test_bare_state_dict_and_architectures(tmp_path):
    for name in ("ir18", "ir50"):
        net = build_iresnet(name)
        bare = {k.removeprefix("model."): v for k, v in save_and_read(net, tmp_path).items()}
        torch.save(bare, tmp_path / f"{name}.pt")
        assert backbone_state(read_checkpoint(tmp_path / f"{name}.pt"))[0] == name
    torch.save({"state_dict": {f"model.{k}": torch.nn.Parameter(v.float())
                               if v.is_floating_point() else v for k, v in bare.items()}},
               tmp_path / "params.ckpt")
    assert load_adaface_backbone(tmp_path / "params.ckpt").depth == 50


class _Runs:
    """Would run a shell command when unpickled by pickle's own loader."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


def _marker_writer(path):  # an importable function with a side effect
    pathlib.Path(path).write_text("ran")


@pytest.mark.parametrize("fn", [os.system, eval, getattr])
def test_a_checkpoint_that_calls_dangerous_code_is_refused(tmp_path, fn):
    marker = tmp_path / "ran"
    arg = f"touch {marker}" if fn is os.system else f"open({str(marker)!r}, 'w')"
    torch.save({"state_dict": {}, "x": _Runs(fn, arg)}, tmp_path / "evil.ckpt")
    with pytest.raises(BadFileError, match="may be malicious"):
        read_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_other_functions_in_a_checkpoint_are_never_called(tmp_path):
    net = build_iresnet("ir18")
    names = save_and_read(net, tmp_path)
    marker = tmp_path / "ran"
    torch.save({"state_dict": {f"model.{k}": v for k, v in names.items()},
                "callbacks": _Runs(_marker_writer, str(marker))}, tmp_path / "odd.ckpt")
    assert load_adaface_backbone(tmp_path / "odd.ckpt").depth == 18
    assert not marker.exists()
    _marker_writer(marker)  # (the function does write when called)
    assert marker.exists()


def _save_state(tmp_path, state: dict, name: str = "bad.ckpt"):
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("change, match", [
    (lambda s: s.update({"body.0.res_layer.6.se_block.fc1.weight": torch.ones(1)}), "IR-SE"),
    (lambda s: s.update({f"body.{i}.res_layer.0.weight": torch.ones(1) for i in range(8, 20)}),
     "20 residual blocks"),
    (lambda s: s.update({"output_layer.3.weight": torch.ones(512, 512 * 14 * 14)}),
     "output_layer|output.3.weight: \\(512, 100352\\)"),
    (lambda s: s.pop("body.3.res_layer.1.weight"), "1 tensors missing"),
    (lambda s: s.update({"extra.weight": torch.ones(1)}), "1 unexpected"),
    (lambda s: s["body.1.res_layer.1.weight"].view(-1).__setitem__(0, float("nan")),
     "non-finite"),
    (lambda s: s.update({"body.0.res_layer.1.weight": [1.0]}), "not tensors"),
    (lambda s: s.pop("input_layer.0.weight"), "no 'input_layer.0.weight'"),
])
def test_bad_state_dicts_say_what_is_wrong(tmp_path, change, match):
    state = save_and_read(build_iresnet("ir18"), tmp_path)
    change(state)
    with pytest.raises(BadFileError, match=match):
        load_adaface_backbone(_save_state(tmp_path, state))


def test_bad_files_say_what_they_should_be(tmp_path):
    with pytest.raises(FileNotFoundError, match="AdaFace checkpoint"):
        load_adaface_backbone(tmp_path / "missing.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(BadFileError, match="not a zip archive"):
        load_adaface_backbone(tmp_path / "text.ckpt")
    torch.save([torch.ones(2)], tmp_path / "list.ckpt")
    with pytest.raises(BadFileError, match="holds a list, not a dict"):
        load_adaface_backbone(tmp_path / "list.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "empty.ckpt")
    with pytest.raises(BadFileError, match="no state dict"):
        load_adaface_backbone(tmp_path / "empty.ckpt")
    good = save_adaface_checkpoint(build_iresnet("ir18"), tmp_path / "good.ckpt")
    (tmp_path / "cut.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BadFileError, match="cut.ckpt is not a zip archive.*cut short"):
        load_adaface_backbone(tmp_path / "cut.ckpt")


def test_only_adafaces_shapes_are_written(tmp_path):
    with pytest.raises(ValueError, match="IR-18/34/50/101 at full width"):
        save_adaface_checkpoint(build_iresnet("ir_small"), tmp_path / "small.ckpt")
    assert not list(tmp_path.iterdir())


def test_checkpoints_are_evaluated_like_notebook_03s_models(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    net = _trained_like()
    save_adaface_checkpoint(net, tmp_path / "ckpts" / "a.ckpt")
    g = torch.Generator().manual_seed(0)
    bench = PairSet("tiny", torch.randint(0, 256, (40, 3, 112, 112), dtype=torch.uint8,
                                          generator=g),
                    np.arange(20) % 2 == 0, groups=np.arange(20) % 2, group_names=["a", "b"])
    out = recognition.evaluate_checkpoints({"mine": "ckpts/a.ckpt"}, {"tiny": bench},
                                           device="cpu", progress=False)
    want = recognition.evaluate_recognizer(net, bench, device="cpu")
    assert out.checkpoint.tolist() == ["mine"] and out.architecture.tolist() == ["ir18"]
    assert {k: out[k].iloc[0] for k in want} == want
    with pytest.raises(FileNotFoundError, match="Relative paths are read under"):
        recognition.checkpoint_paths({"gone": "ckpts/gone.ckpt"})
    with pytest.raises(TypeError, match="label -> checkpoint path"):
        recognition.checkpoint_paths(["ckpts/a.ckpt"])


# --- hostile archives (a review's findings): hand-written pickles in torch's zip layout ------
def _u(s: str) -> bytes:  # BINUNICODE
    b = s.encode()
    return b"X" + len(b).to_bytes(4, "little") + b


def _archive(path, pkl: bytes, storages=None, compress=None):
    import zipfile

    with zipfile.ZipFile(path, "w", compression=compress or zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        for k, v in (storages or {}).items():
            z.writestr(f"archive/data/{k}", v)
    return path


def _tensor(key: str, numel: int, size: int) -> bytes:
    """_rebuild_tensor_v2(storage ("storage", FloatStorage, key, "cpu", numel), 0, (size,),
    (1,), False, OrderedDict())"""
    pid = b"(" + _u("storage") + b"ctorch\nFloatStorage\n" + _u(key) + _u("cpu") + \
        b"J" + numel.to_bytes(4, "little") + b"tQ"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00" + b"J"
            + size.to_bytes(4, "little") + b"\x85K\x01\x85\x89ccollections\nOrderedDict\n)R"
            + b"tR")


def test_deep_or_shared_tuples_are_refused_before_they_are_hashed(tmp_path):
    deep = b"\x80\x02}" + _u("a") + b"\x85" * 100_000 + b"K\x01s."  # a key 100,000 deep
    with pytest.raises(BadFileError, match="deep.ckpt: tuples nested 101 deep"):
        read_checkpoint(_archive(tmp_path / "deep.ckpt", deep))
    shared = b"\x80\x02}" + _u("a") + b"2\x86" * 40 + b"K\x01s."  # 2^40 items when hashed
    with pytest.raises(BadFileError, match="items counted with repeats"):
        read_checkpoint(_archive(tmp_path / "shared.ckpt", shared))


def test_compressed_entries_are_refused_unread(tmp_path):
    import zipfile

    bomb = b"\x80\x02" + b"}0" * 1_000_000 + b"}."  # 2 MB that deflate to a few KB
    path = _archive(tmp_path / "bomb.ckpt", bomb, compress=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 20_000
    with pytest.raises(BadFileError, match="compressed entries"):
        read_checkpoint(path)


def test_tensors_cannot_claim_more_than_the_file_holds(tmp_path):
    empty = b"\x80\x02}" + _u("w") + _tensor("0", 0, 1 << 28) + b"s."  # 1 GiB on 0 bytes
    with pytest.raises(BadFileError, match="not resizable"):
        read_checkpoint(_archive(tmp_path / "empty.ckpt", empty, {"0": b""}))
    small = b"\x80\x02}" + _u("w") + _tensor("0", 1, 1000) + b"s."
    with pytest.raises(BadFileError, match="not resizable"):
        read_checkpoint(_archive(tmp_path / "small.ckpt", small, {"0": b"\0" * 4}))
    lying = b"\x80\x02}" + _u("w") + _tensor("0", 1000, 10) + b"s."  # numel vs bytes
    with pytest.raises(BadFileError, match="4 bytes for 1000"):
        read_checkpoint(_archive(tmp_path / "lying.ckpt", lying, {"0": b"\0" * 4}))
    # a tensor's state set by BUILD (Tensor.__setstate__ would set_() any size)
    build = b"\x80\x02}" + _u("w") + _tensor("0", 1, 1) + b"(K\x00K\x01\x85K\x01\x85\x89tbs."
    with pytest.raises(BadFileError, match="sets a tensor's state"):
        read_checkpoint(_archive(tmp_path / "build.ckpt", build, {"0": b"\0" * 4}))


def test_odd_state_dicts_give_clear_errors(tmp_path):
    good = save_and_read(build_iresnet("ir18"), tmp_path)
    both = {**good, "stem.0.weight": torch.zeros_like(good["input_layer.0.weight"])}
    with pytest.raises(BadFileError, match="one would silently replace the other"):
        load_adaface_backbone(_save_state(tmp_path, both, "both.ckpt"))
    huge = {**good, "output_layer.3.weight": good["output_layer.3.weight"].double() * 1e40}
    with pytest.raises(BadFileError, match="non-finite values in \\['output.3.weight'\\]"):
        load_adaface_backbone(_save_state(tmp_path, huge, "huge.ckpt"))
    ints = {**good, "input_layer.0.weight": good["input_layer.0.weight"].long()}
    with pytest.raises(BadFileError, match="stem.0.weight holds torch.int64"):
        load_adaface_backbone(_save_state(tmp_path, ints, "ints.ckpt"))
    torch.save({"state_dict": {1: torch.ones(1)}}, tmp_path / "intkey.ckpt")
    with pytest.raises(BadFileError, match="keys that are not strings"):
        load_adaface_backbone(tmp_path / "intkey.ckpt")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_adaface_backbone(tmp_path)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "script.pt")
    with pytest.raises(BadFileError, match="TorchScript archive"):
        load_adaface_backbone(tmp_path / "script.pt")
    half = {k: v.half() if v.is_floating_point() else v for k, v in good.items()}
    assert load_adaface_backbone(_save_state(tmp_path, half, "half.ckpt")).depth == 18
