"""The training scripts of the offline assets checkpoint and resume: a run killed midway and
rerun ends with the weights of an uninterrupted run; other settings are refused."""

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(monkeypatch, name, argv, kill_after=None):
    module = _script(name)

    class KillingTqdm(module.tqdm):   # a kill after `kill_after` steps of the loop
        def __iter__(self):
            for i, item in enumerate(super().__iter__()):
                if kill_after is not None and i == kill_after:
                    raise KeyboardInterrupt
                yield item

    monkeypatch.setattr(module, "tqdm", KillingTqdm)
    monkeypatch.setattr(sys, "argv", [name, *argv])
    module.main()


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("name, argv", [
    ("train_shapes_vae", ["--steps", "6", "--batch", "4", "--checkpoint-every", "2"]),
    ("train_clip", ["--model", "qdgs-shapes-clip", "--steps", "6", "--batch", "8",
                    "--checkpoint-every", "2"]),
])
def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch, name, argv):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    whole, resumed = tmp_path / "whole.safetensors", tmp_path / "resumed.safetensors"
    _run(monkeypatch, name, [*argv, "--out", str(whole)])
    assert not list(tmp_path.glob("whole.safetensors.ckpt*"))   # removed with the weights
    with pytest.raises(KeyboardInterrupt):
        _run(monkeypatch, name, [*argv, "--out", str(resumed)], kill_after=5)
    assert not resumed.exists() and Path(f"{resumed}.ckpt").exists()
    with pytest.raises(ValueError, match=r"other settings \(\['lr'\]"):
        _run(monkeypatch, name, [*argv, "--out", str(resumed), "--lr", "0.1"])
    _run(monkeypatch, name, [*argv, "--out", str(resumed)])
    assert _sha(resumed) == _sha(whole)


def test_the_oracle_script_resumes_after_its_finished_members(tmp_path, monkeypatch):
    """Killed while training its second member, the oracle script keeps the first; a rerun
    loads it, trains the rest and writes the oracle of an uninterrupted run (each member
    seeds itself); a rerun with other settings refuses the saved member."""
    def run(args):
        monkeypatch.setattr(sys, "argv", ["train_shapes_oracle", *args])
        _script("train_shapes_oracle").main()

    argv = ["--renders", "40", "--epochs", "1", "--size", "32", "--seeds", "0", "1"]
    whole, resumed = tmp_path / "whole.safetensors", tmp_path / "resumed.safetensors"
    run([*argv, "--out", str(whole)])
    assert not list(tmp_path.glob("whole.safetensors.member*"))  # removed with the oracle
    module = _script("train_shapes_oracle")
    trained = []

    def killed_on_the_second(seed, *a, **k):
        if trained:
            raise KeyboardInterrupt
        trained.append(seed)
        return original(seed, *a, **k)

    original = module.train_member
    monkeypatch.setattr(module, "train_member", killed_on_the_second)
    monkeypatch.setattr(sys, "argv", ["x", *argv, "--out", str(resumed)])
    with pytest.raises(KeyboardInterrupt):
        module.main()
    assert not resumed.exists() and Path(f"{resumed}.member0.safetensors").exists()
    with pytest.raises(ValueError, match="member0.safetensors was trained with other settings"):
        run(["--renders", "48", *argv[2:], "--out", str(resumed)])
    run([*argv, "--out", str(resumed)])
    # the same tensors bit for bit, and the same metadata (compared as dicts: safetensors
    # writes a multi-key metadata map in an order that varies from write to write)
    from safetensors import safe_open

    with safe_open(str(whole), "pt") as f, safe_open(str(resumed), "pt") as g:
        assert f.metadata() == g.metadata() and sorted(f.keys()) == sorted(g.keys())
        for k in f.keys():
            x, y = f.get_tensor(k), g.get_tensor(k)
            assert x.dtype == y.dtype and x.shape == y.shape
            assert x.flatten().view(torch.uint8).equal(y.flatten().view(torch.uint8)), k


def test_check_against_released_says_what_it_needs(tmp_path, capsys):
    """Without a clone of the released code it names the missing files and where to get them
    (the checks themselves need that clone: README, "Checked against the reference code")."""
    module = _script("check_against_released")
    (tmp_path / "qdgs").mkdir()
    (tmp_path / "qdgs" / "discriminator.py").write_text("")
    with pytest.raises(SystemExit) as e:
        module.main(["--released", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "facial_recognition/AdaFace/net.py" in err and "qdgs/discriminator.py" not in err
    assert "github.com/Cylumn/qd-generative-sampling" in err


def test_check_against_stylegan3_says_what_it_needs(tmp_path, capsys):
    """Without a clone of NVIDIA's StyleGAN3 code it names the file it needs and where to get
    it (the check itself needs that clone: README, "Checked against the reference code")."""
    module = _script("check_against_stylegan3")
    with pytest.raises(SystemExit) as e:
        module.main(["--nvidia", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "training/networks_stylegan3.py not found" in err
    assert "github.com/NVlabs/stylegan3" in err


def test_check_against_transformers_says_what_it_needs(monkeypatch, capsys):
    """Without transformers installed it says to install it (the check itself needs it:
    README, "Checked against the reference code")."""
    module = _script("check_against_transformers")
    monkeypatch.setitem(sys.modules, "transformers", None)  # (import fails, as uninstalled)
    assert module.main([]) == 2
    assert "pip install transformers" in capsys.readouterr().err
