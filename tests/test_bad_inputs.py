"""Bad input never turns into a silent wrong result, and every bad file is named with what to
do (issue 16). Each test feeds a file or value the tests write themselves."""

import json
import pickle
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from toys import ToyClip, ToyGenerator, interrupt_at

from qdgs_lib.data.benchmarks import read_bin, write_bin
from qdgs_lib.profiles import get_profile, parse_overrides
from qdgs_lib.sampling import write_identity_dataset, write_image_dataset
from qdgs_lib.utils import BadFileError


# --- silent wrong results ----------------------------------------------------------------------
def test_non_finite_images_are_refused_with_their_solutions(tmp_path):
    def decode(z):
        x = torch.full((len(z), 3, 8, 8), 0.5)
        x[z[:, 0] > 5] = float("nan")  # solutions 2 and 4 diverge
        return x

    z = np.zeros((5, 2), np.float32)
    z[[2, 4], 0] = 9
    with pytest.raises(ValueError, match=r"non-finite .* solution\(s\) \[2, 4\]"):
        write_identity_dataset(tmp_path / "ids", decode, z, np.arange(5), np.zeros((1, 2)),
                               progress=False)
    assert not (tmp_path / "ids" / "manifest.csv").exists()
    images = torch.rand(3, 3, 8, 8)
    images[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"image\(s\) \[1\]"):
        write_image_dataset(tmp_path / "img", images, ["a", "b", "a"])
    assert not (tmp_path / "img").exists()


def test_identities_must_match_the_solutions(tmp_path):
    z = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="one identity per solution"):
        write_identity_dataset(tmp_path / "d", lambda z: torch.rand(len(z), 3, 8, 8), z,
                               np.arange(3), np.zeros((1, 2)), progress=False)


@pytest.mark.parametrize("label", ["../../x", "a/b", "..", ""])
def test_class_labels_cannot_leave_the_dataset_folder(tmp_path, label):
    with pytest.raises(ValueError, match="cannot be a folder name"):
        write_image_dataset(tmp_path / "ds" / "inner", torch.rand(2, 3, 8, 8), ["ok", label])
    assert not any(tmp_path.rglob("*.png"))


def _bin(path, issame, images=None):
    import io

    from PIL import Image
    imgs = images if images is not None else [np.full((16, 16, 3), 20 * i, np.uint8)
                                              for i in range(2 * len(issame))]
    data = []
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        data.append(buf.getvalue())
    path.write_bytes(pickle.dumps((data, issame), protocol=2))
    return path


def test_bin_labels_must_be_bool_like(tmp_path):
    ok = read_bin(_bin(tmp_path / "ok.bin", [True, np.bool_(False), 1, 0]), image_size=None)
    assert ok.issame.tolist() == [True, False, True, False]
    for bad, shown in (("no", "'no'"), (None, "None"), (2, "2"), (0.5, "0.5")):
        with pytest.raises(BadFileError, match=rf"issame label 1 is {shown}"):
            read_bin(_bin(tmp_path / "bad.bin", [True, bad]), image_size=None)


def test_bin_structure_errors_name_the_file(tmp_path):
    path = tmp_path / "x.bin"
    for obj, match in ((5, "pair of lists"), (([], []), "no pairs"),
                       (([b"a"], [True]), "1 images for 1 pairs"),
                       (([5, 6], [True]), "expected encoded image bytes")):
        path.write_bytes(pickle.dumps(obj))
        with pytest.raises(BadFileError, match=match) as err:
            read_bin(path)
        assert str(path) in str(err.value)
    mixed = [np.zeros((16, 16, 3), np.uint8), np.zeros((20, 20, 3), np.uint8)]
    _bin(path, [True], mixed)
    with pytest.raises(BadFileError, match="different sizes"):
        read_bin(path, image_size=None)
    assert read_bin(path, image_size=12).images.shape == (2, 3, 12, 12)


def test_shipped_weights_are_checked_against_their_recorded_sha256(tmp_path, monkeypatch):
    from qdgs_lib.generators.shapes_vae import load_shapes_vae
    from qdgs_lib.paths import weights_dir

    for f in weights_dir().glob("shapes_vae.safetensors*"):
        shutil.copy(f, tmp_path / f.name)
    record = json.loads((tmp_path / "shapes_vae.safetensors.json").read_text())
    assert len(record["sha256"]) == 64
    load_shapes_vae(tmp_path / "shapes_vae.safetensors", device="cpu")  # intact: loads
    raw = bytearray((tmp_path / "shapes_vae.safetensors").read_bytes())
    raw[-100] ^= 0x01  # one flipped bit inside a tensor: a valid file with a wrong weight
    (tmp_path / "shapes_vae.safetensors").write_bytes(bytes(raw))
    with pytest.raises(BadFileError, match="sha256 differs.*git checkout"):
        load_shapes_vae(tmp_path / "shapes_vae.safetensors", device="cpu")


def test_run_record_holds_the_sha256_of_its_inputs(tmp_path, monkeypatch):
    from qdgs_lib import notebook
    from qdgs_lib.paths import weights_dir
    from qdgs_lib.utils import sha256_file

    monkeypatch.setenv("QDGS_RUNS_DIR", str(tmp_path))
    run = notebook.start("01_shapes_poc", "smoke", "shapes", '{"iterations": 3}', "cpu")
    cfg = json.loads((run.run_dir / "config.json").read_text())["config"]
    clip = weights_dir() / "qdgs-shapes-clip.safetensors"
    # paths inside the repository are recorded relative to it (the record is portable)
    assert cfg["inputs"]["data/weights/qdgs-shapes-clip.safetensors"]["sha256"] == \
        sha256_file(clip)
    assert cfg["iterations"] == 3 and cfg["device"] == "cpu"
    # inputs from earlier notebooks join the record; the copy beside the figures is written
    # when the notebook has run through, so an interrupted run leaves the old one in place
    fig_record = run.fig_dir / "01_shapes_poc_config.json"
    assert not fig_record.exists()
    earlier = tmp_path / "models.csv"
    earlier.write_text("pretraining,seed\nnone,0\n")
    run.record_inputs([earlier], seeds=[0])
    assert run.finish() == fig_record
    cfg = json.loads(fig_record.read_text())["config"]
    assert cfg["inputs"][str(earlier)]["sha256"] == sha256_file(earlier) and cfg["seeds"] == [0]
    assert "data/weights/qdgs-shapes-clip.safetensors" in cfg["inputs"]
    # every figure names its profile and assets
    from qdgs_lib import plots
    assert plots._FOOTER == ("qdgs - profile smoke: the project's shapes VAE, CLIP "
                             "qdgs-shapes-clip (the project's own small CLIP)")
    # ... the files it was given, not the offline default's (the paper's footer once named
    # the project's VAE)
    from qdgs_lib import paths
    from qdgs_lib.notebook import provenance
    from qdgs_lib.profiles import get_profile

    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path / "data"))
    paper = get_profile("paper", "shapes")
    assert provenance("paper", "shapes", paper).startswith(
        "qdgs - profile paper: shapes VAE pretrained/vae-shapes.pt (in the released code's "
        "format), CLIP ViT-B-32-quickgelu")  # (no such file here: not known to be released)
    vae = tmp_path / "data" / "pretrained" / "vae-shapes.pt"
    vae.parent.mkdir(parents=True)
    vae.write_bytes(b"the released bytes")
    monkeypatch.setitem(paths.RELEASED_SHA256, "vae-shapes.pt", sha256_file(vae))
    assert provenance("paper", "shapes", paper).startswith(
        "qdgs - profile paper: the released code's shapes VAE, CLIP ViT-B-32-quickgelu")
    own = get_profile("paper", "faces", stylegan_weights="mine/ffhq.safetensors")
    assert "StyleGAN2 mine/ffhq.safetensors" in provenance("paper", "faces", own)
    assert "StyleGAN2-FFHQ-256" in provenance("paper", "faces", get_profile("paper", "faces"))


# --- errors that name the file and the next step ------------------------------------------------
@pytest.fixture(scope="module")
def stylegan_pickle(tmp_path_factory):
    from qdgs_lib.generators.stylegan2 import StyleGAN2
    from qdgs_lib.nvidia_format import write_network_pickle

    torch.manual_seed(0)
    net = StyleGAN2(z_dim=8, w_dim=8, img_resolution=8, channel_base=64, channel_max=8)
    path = tmp_path_factory.mktemp("sg") / "net.pkl"
    write_network_pickle(net.eval(), path)
    return path


def test_stylegan2_loader_names_bad_files(tmp_path, stylegan_pickle):
    from qdgs_lib.generators.stylegan2_legacy import load_stylegan2

    good = stylegan_pickle.read_bytes()
    cases = {"empty.pkl": b"", "truncated.pkl": good[: len(good) // 2],
             "random.pkl": np.random.default_rng(0).bytes(4096),
             "list.pkl": pickle.dumps([1, 2, 3])}
    torch.save({"w": torch.zeros(2)}, tmp_path / "state_dict.pkl")
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    for name in [*cases, "state_dict.pkl"]:
        with pytest.raises(BadFileError, match="NVIDIA StyleGAN2 network pickle") as err:
            load_stylegan2(tmp_path / name, device="cpu")
        assert str(tmp_path / name) in str(err.value) and "Download it again" in str(err.value)


def test_safetensors_loaders_name_bad_files(tmp_path):
    from qdgs_lib.clip import create_clip
    from qdgs_lib.generators.shapes_vae import load_shapes_vae
    from qdgs_lib.paths import weights_dir

    good = (weights_dir() / "shapes_vae.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[:5000])
    with pytest.raises(BadFileError, match="cut.safetensors: cannot read it as shapes VAE"):
        load_shapes_vae(tmp_path / "cut.safetensors", device="cpu")
    with pytest.raises(BadFileError, match="cut.safetensors: cannot read it as open_clip"):
        create_clip("qdgs-faces-clip", weights=tmp_path / "cut.safetensors", device="cpu")
    # weights of another architecture (the VAE's) for a CLIP
    with pytest.raises(BadFileError, match="open_clip weights for 'qdgs-faces-clip'"):
        create_clip("qdgs-faces-clip", weights=weights_dir() / "shapes_vae.safetensors",
                    device="cpu")


def _search(outdir, iterations):
    from qdgs_lib.scoring import PromptScorer
    from qdgs_lib.search import QDSearch, SearchConfig

    scorer = PromptScorer(ToyGenerator(), ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")])
    cfg = SearchConfig(dims=(10, 10), ranges=((-0.5, 0.2), (0.0, 1.1)), iterations=iterations,
                       checkpoint_every=5, seed=1)
    return QDSearch(scorer, cfg, outdir)


def test_an_unreadable_search_checkpoint_falls_back_to_the_previous_one(tmp_path):
    full = _search(tmp_path / "full", 20)
    full.run(progress=False)
    part = _search(tmp_path / "part", 20)
    interrupt_at(part, 12, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        part.run(progress=False)  # checkpoints at 5 and 10: latest + previous
    ckpt = tmp_path / "part" / "checkpoint.pkl"
    assert (tmp_path / "part" / "checkpoint.prev.pkl").exists()
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # the latest is damaged
    resumed = _search(tmp_path / "part", 20)
    with pytest.warns(UserWarning, match="Resumed from the previous checkpoint"):
        archive = resumed.run(progress=False)
    assert (tmp_path / "part" / "checkpoint.pkl.unreadable").exists()
    assert list(resumed.metrics().iteration) == list(range(1, 21))
    a, b = full.result_archive.data(return_type="pandas"), archive.data(return_type="pandas")
    assert a.sort_values("index").reset_index(drop=True).equals(
        b.sort_values("index").reset_index(drop=True))
    for name in ("checkpoint.pkl", "checkpoint.prev.pkl"):
        (tmp_path / "part" / name).write_bytes(b"garbage")
    with pytest.raises(BadFileError, match="delete checkpoint.pkl and checkpoint.prev.pkl"):
        _search(tmp_path / "part", 30).run(progress=False)


def test_an_unreadable_training_checkpoint_falls_back_to_the_previous_one(tmp_path):
    from qdgs_lib.data.identities import TensorFaces
    from qdgs_lib.models.heads import AdaFace
    from qdgs_lib.models.iresnet import build_iresnet
    from qdgs_lib.train import RecognitionTrainer

    def trainer(out):
        torch.manual_seed(0)
        x = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        return RecognitionTrainer(build_iresnet("ir_small"), AdaFace(128, 4),
                                  TensorFaces(x, torch.arange(16) % 4), out, batch_size=8,
                                  progress=False)

    full = trainer(tmp_path / "full")
    full.run(3)
    part = trainer(tmp_path / "part")
    part.run(2)
    (tmp_path / "part" / "checkpoint.pt").write_bytes(b"")
    resumed = trainer(tmp_path / "part")
    with pytest.warns(UserWarning, match="previous checkpoint"):
        resumed.run(3)
    assert list(pd.read_csv(tmp_path / "part" / "log.csv").epoch) == [1, 2, 3]
    for k, v in full.backbone.state_dict().items():
        assert torch.allclose(v.float(), resumed.backbone.state_dict()[k].float(), atol=1e-5)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (tmp_path / "part" / name).write_bytes(b"not a checkpoint")
    with pytest.raises(BadFileError, match="delete checkpoint.pt and checkpoint.prev.pt"):
        trainer(tmp_path / "part").run(4)


def test_override_types_are_checked():
    assert get_profile("smoke", "faces", iterations=7, lr=1)["lr"] == 1
    assert get_profile("smoke", "recognition", seeds=[0, 1])["seeds"] == [0, 1]
    for key, value in (("iterations", "lots"), ("iterations", 2.5), ("lr", "fast"),
                       ("grid", 5), ("clip", 3), ("world", None)):
        with pytest.raises(ValueError, match=f"override {key}="):
            get_profile("smoke", "faces", **{key: value})
    # values of the right type that make no sense: counts below 1, empty lists, list items
    for section, key, value, match in (
            ("faces", "iterations", -3, "must be >= 1"), ("recognition", "seeds", [], "empty"),
            ("faces", "objective_weights", ["a", "b", "c"], r"objective_weights\[\]="),
            ("faces", "dataset_solutions", True, "int >= 1"),
            ("faces", "lr", float("nan"), "finite"),
            ("faces", "objective_weights", [1.0, 0.5], "needs 3 entries")):
        with pytest.raises(ValueError, match=match):
            get_profile("smoke", section, **{key: value})


def test_overrides_from_papermill_as_json():
    assert parse_overrides('{"iterations": 5}') == {"iterations": 5}
    assert parse_overrides(None) == {} and parse_overrides({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_overrides("iterations=5")
    with pytest.raises(ValueError, match="must be a dict"):
        parse_overrides("[1, 2]")


# --- fuzz: every loader, a few hundred random / truncated byte strings ---------------------------
def _fuzz_inputs(good: bytes, rng: np.random.Generator, n: int):
    yield b""
    for _ in range(n):
        kind = rng.integers(3)
        if kind == 0:  # truncated
            yield good[: int(rng.integers(1, max(2, len(good))))]
        elif kind == 1:  # random bytes, sometimes with the right opening
            junk = rng.bytes(int(rng.integers(1, 2048)))
            yield (good[:8] + junk) if rng.random() < 0.5 else junk
        else:  # a valid prefix, then garbage
            cut = int(rng.integers(1, max(2, len(good))))
            yield good[:cut] + rng.bytes(int(rng.integers(1, 512)))


def test_fuzzed_files_raise_only_clear_errors(tmp_path, stylegan_pickle):
    from qdgs_lib.data.identities import RecordIOFaces
    from qdgs_lib.data.recordio import write_insightface_set
    from qdgs_lib.generators.shapes_vae import load_shapes_vae
    from qdgs_lib.generators.stylegan2_legacy import load_stylegan2
    from qdgs_lib.paths import weights_dir
    from qdgs_lib.search import load_checkpoint

    search = _search(tmp_path / "s", 5)
    search.run(progress=False)
    write_bin(tmp_path / "g.bin", torch.rand(4, 3, 8, 8), [True, False])
    write_insightface_set(tmp_path / "rec", [_png(k) for k in range(4)], [0, 0, 1, 1])

    def read_rec(path):
        shutil.copy(path, tmp_path / "fz" / "train.rec")
        ds = RecordIOFaces(tmp_path / "fz")
        loaded[:] = [int(ds[i][1]) for i in range(len(ds))]

    loaded = []

    (tmp_path / "fz").mkdir()
    shutil.copy(tmp_path / "rec" / "train.idx", tmp_path / "fz" / "train.idx")
    loaders = {
        "stylegan2.pkl": (stylegan_pickle, lambda p: load_stylegan2(p, device="cpu")),
        "vae.safetensors": (weights_dir() / "shapes_vae.safetensors",
                            lambda p: load_shapes_vae(p, device="cpu")),
        "search.pkl": (search.checkpoint_path, load_checkpoint),
        "g.bin": (tmp_path / "g.bin", read_bin),
        "train.rec": (tmp_path / "rec" / "train.rec", read_rec),
    }
    rng = np.random.default_rng(0)
    tried = 0
    for name, (good, load) in loaders.items():
        good_bytes = good.read_bytes()
        for k, data in enumerate(_fuzz_inputs(good_bytes, rng, 60)):
            path = tmp_path / f"fuzz_{k}_{name}"
            path.write_bytes(data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    load(path)
                except BadFileError as e:
                    assert str(path.name) in str(e) or "train.rec" in str(e), str(e)
                except Exception as e:  # noqa: BLE001
                    pytest.fail(f"{name} input {k} ({len(data)} bytes): {type(e).__name__}: {e}")
                else:  # only an intact file loads; in train.rec, bytes inside an image
                    # (JPEG/PNG data has no checksum PIL verifies) or in the identity records
                    # at the end (never read) can change unnoticed, its records cannot
                    assert data == good_bytes or name == "train.rec" and loaded == [0, 0, 1, 1], \
                        f"{name} input {k} loaded although damaged"
            path.unlink()
            tried += 1
    assert tried >= 300


def _png(k):
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 50 * k, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_missing_stylegan_names_nvidias_file(tmp_path):
    from qdgs_lib.generators.stylegan2_legacy import load_stylegan2

    with pytest.raises(FileNotFoundError, match="stylegan2-ffhq-256x256.pkl.*NGC"):
        load_stylegan2(tmp_path / "nope.pkl", device="cpu")


def test_review_fixes(tmp_path, monkeypatch):
    """Resource errors are not corrupt files; asset checks mirror the loaders; optional path
    overrides are typed; .bin images keep their shape without image_size."""
    from qdgs_lib import assets
    from qdgs_lib.utils import reading

    with pytest.raises(torch.OutOfMemoryError):
        with reading(tmp_path / "x", "a thing", "fix"):
            raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(ValueError, match="must be a path or None"):
        get_profile("paper", "faces", clip_weights=5)
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "train.rec").write_bytes(b"x")
    (tmp_path / "rec" / "sub").mkdir()  # a folder beside train.rec does not count
    recs = {"real_dataset": str(tmp_path / "rec"), "benchmarks": ()}
    assert len(assets.missing_assets("paper", ("recognition",), **recs)) == 1
    (tmp_path / "rec" / "train.idx").write_text("")
    assert assets.missing_assets("paper", ("recognition",), **recs) == []
    recs["real_dataset"] = str(tmp_path / "rec" / "train.rec")  # open_training_set takes it
    assert assets.missing_assets("paper", ("recognition",), **recs) == []
    (tmp_path / "pretrained").mkdir()
    for name in ("open_clip_model.safetensors", "ViT-B-32.pt"):
        (tmp_path / "pretrained" / name).write_bytes(b"x")
    clip = assets.required_assets("paper", "faces")[-1]
    assert clip.path.name == "open_clip_model.safetensors"  # the file create_clip loads
    wide = [np.zeros((8, 12, 3), np.uint8)] * 2
    assert read_bin(_bin(tmp_path / "w.bin", [True], wide), image_size=None).images.shape == \
        (2, 3, 8, 12)


def test_recordio_without_a_meta_record(tmp_path):
    from qdgs_lib.data.identities import RecordIOFaces
    from qdgs_lib.data.recordio import pack, write_recordio

    records = {k: pack(float(k % 3), _png(k % 5)) for k in (5, 6, 7, 9)}  # no key 0
    write_recordio(tmp_path / "train.rec", records)
    ds = RecordIOFaces(tmp_path, image_size=8)
    assert len(ds) == 4 and ds.num_classes == 3 and [int(ds[i][1]) for i in range(4)] == \
        [2, 0, 1, 0]


# --- second probe (2026-11-26): ranges, folders, latents ----------------------------------------
def test_image_writers_keep_unrelated_folders_and_the_unit_range(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an image dataset written by qdgs"):
        write_image_dataset(victim, torch.rand(2, 3, 8, 8), ["a", "b"], overwrite=True)
    assert (victim / "notes.txt").read_text() == "keep me"
    out = write_image_dataset(tmp_path / "set", torch.rand(2, 3, 8, 8), ["a", "b"])
    write_image_dataset(out, torch.rand(3, 3, 8, 8), ["a", "b", "b"], overwrite=True)
    assert len(pd.read_csv(out / "manifest.csv")) == 3  # an earlier dataset is replaced
    with pytest.raises(TypeError, match="float tensors in"):
        write_image_dataset(tmp_path / "u8", torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
                            ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 1\], got values in \[0.*, 25\d\]"):
        write_image_dataset(tmp_path / "255", torch.rand(2, 3, 8, 8) * 255, ["a", "b"])
    with pytest.raises(ValueError, match="manifest has 1 rows for 2 images"):
        write_image_dataset(tmp_path / "m", torch.rand(2, 3, 8, 8), ["a", "b"],
                            manifest=pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):  # a generator's raw tanh output
        write_identity_dataset(tmp_path / "ids", lambda z: torch.rand(len(z), 3, 8, 8) * 2 - 1,
                               np.zeros((2, 2), np.float32), np.arange(2), np.zeros((1, 2)),
                               progress=False)
    with pytest.raises(ValueError, match="k >= 1"):
        write_identity_dataset(tmp_path / "none", lambda z: torch.rand(len(z), 3, 8, 8),
                               np.zeros((2, 2), np.float32), np.arange(2), np.zeros((0, 2)),
                               progress=False)
    assert not (tmp_path / "none").exists()  # no stamp left to block a corrected rerun


def test_clip_and_scorer_refuse_images_outside_the_unit_range():
    from qdgs_lib.clip import create_clip
    from qdgs_lib.scoring import PromptScorer

    clip = create_clip("qdgs-shapes-clip", device="cpu")
    with pytest.raises(TypeError, match="float tensors"):
        clip.encode_image(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="got values in"):
        clip.encode_image(torch.rand(1, 3, 64, 64) * 255)

    class SignedToy(ToyGenerator):  # forgot to map its output to [0, 1]
        def decode(self, z):
            return super().decode(z) * 2 - 1

    with pytest.raises(ValueError, match=r"SignedToy.decode's images must lie in \[0, 1\]"):
        PromptScorer(SignedToy(), ToyClip(), ("good", "bad"), [("a", "b")])


def test_latents_of_other_types():
    gen = ToyGenerator()
    with pytest.raises(TypeError, match="torch.as_tensor"):
        gen.decode(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="float tensor"):
        gen.decode(torch.zeros(2, 4, dtype=torch.long))
    z = torch.randn(3, 4)
    assert torch.equal(gen.decode(z.double()), gen.decode(z))  # float64 from numpy: cast


def test_protocol_5_bin_and_rfw_message(tmp_path):
    import io

    from PIL import Image

    from qdgs_lib.data.benchmarks import read_rfw

    buf = io.BytesIO()
    Image.new("RGB", (112, 112), (10, 200, 10)).save(buf, format="JPEG")
    item = np.frombuffer(buf.getvalue(), dtype=np.uint8).copy()
    (tmp_path / "p5.bin").write_bytes(pickle.dumps(([item, item], [True]), protocol=5))
    assert read_bin(tmp_path / "p5.bin").images.shape == (2, 3, 112, 112)
    with pytest.raises(FileNotFoundError, match=f"under {tmp_path}"):
        read_rfw(tmp_path)


@pytest.mark.parametrize("kwargs, match", [
    ({"ranges": ((-float("inf"), 1.0), (0.0, 1.0))}, "finite bounds"),
    ({"ranges": ((float("nan"), 1.0), (0.0, 1.0))}, "finite bounds"),
    ({"dims": (0, 10)}, ">= 1 cell"),
    ({"sigma0": 0.0}, "sigma0 and lr must be finite and > 0"),
    ({"checkpoint_every": 0}, "checkpoint_every must be >= 1"),
    ({"x0_samples": 0}, "x0_samples must be >= 1"),
])
def test_degenerate_search_settings_are_refused(kwargs, match):
    from qdgs_lib.search import SearchConfig

    args = {"dims": (10, 10), "ranges": ((0.0, 1.0), (0.0, 1.0)), **kwargs}
    with pytest.raises(ValueError, match=match):
        SearchConfig(**args)


def test_bad_batch_sizes_image_layouts_and_output_folders(tmp_path):
    """Found by a probe of the own-generator path: a batch size of 0 or -1 (a bare
    "range() arg 3 must not be zero", or silently nothing), channels-last or grey images
    for a dataset (a PIL error), an output folder that is a file (a bare FileExistsError)."""
    from qdgs_lib.sampling import decode_batched, write_image_dataset
    from qdgs_lib.scoring import PromptScorer
    from qdgs_lib.search import QDSearch, SearchConfig

    gen = ToyGenerator()
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            decode_batched(gen.decode, np.zeros((3, 4)), batch_size=bad)
        sc = PromptScorer(gen, ToyClip(), ("g", "b"), [("a", "b")])
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            sc.measures_of(np.zeros((3, 4)), batch_size=bad)
    for shape, hint in (((2, 8, 8, 3), "permute"), ((2, 1, 8, 8), "repeat")):
        with pytest.raises(ValueError, match=rf"\(N, 3, H, W\).*{hint}"):
            write_image_dataset(tmp_path / "ds", torch.rand(shape), ["a", "b"])
    assert not (tmp_path / "ds").exists()
    (tmp_path / "file").write_text("x")
    sc = PromptScorer(gen, ToyClip(), ("g", "b"), [("a", "b")])
    with pytest.raises(ValueError, match="output folder .*file is a file"):
        QDSearch(sc, SearchConfig(dims=(4,), ranges=((-1, 1),), iterations=2),
                 tmp_path / "file").run(progress=False)
    assert (tmp_path / "file").read_text() == "x"


def test_degenerate_measures_memory_and_prompts():
    from qdgs_lib.clip import create_clip
    from qdgs_lib.measures import Measure
    from qdgs_lib.scoring import PromptScorer

    with pytest.raises(ValueError, match="finite low < high"):
        Measure("skin", "a", "b", "skin", (-float("inf"), 1.0), 10)
    with pytest.raises(ValueError, match="memory_size must be an int >= 1"):
        PromptScorer(ToyGenerator(), ToyClip(), ("g", "b"), [("a", "b")], memory_size=0)
    sc = PromptScorer(ToyGenerator(), ToyClip(), ("g", "b"), [("a", "b"), ("c", "d")])
    assert sc.measures_of(np.zeros((0, 4))).shape == (0, 2)
    assert sc.measures_of_images(torch.zeros(0, 3, 8, 8)).shape == (0, 2)
    clip = create_clip("qdgs-shapes-clip", device="cpu")
    with pytest.raises(ValueError, match="list of strings"):
        clip.encode_text("A red shape.")  # would have encoded 12 one-letter prompts
    with pytest.raises(ValueError, match="list of strings"):
        clip.encode_text([])


def test_stylegan2_generator_settings():
    from qdgs_lib.generators.stylegan2 import StyleGAN2, StyleGAN2Generator

    net = StyleGAN2(z_dim=32, w_dim=32, img_resolution=16, channel_base=256, channel_max=32)
    with pytest.raises(ValueError, match="num_std_samples must be >= 2"):
        StyleGAN2Generator(net, num_std_samples=1)
    gen = StyleGAN2Generator(net, num_std_samples=64)
    gen.modconv = "fast"
    with pytest.raises(ValueError, match="modconv must be one of"):
        gen.decode(gen.sample_prior(1))


def test_damaged_or_missing_metrics_of_a_search(tmp_path):
    from qdgs_lib.scoring import PromptScorer
    from qdgs_lib.search import QDSearch, SearchConfig

    def search():
        sc = PromptScorer(ToyGenerator(), ToyClip(), ("g", "b"), [("a", "b"), ("c", "d")])
        cfg = SearchConfig(dims=(5, 5), ranges=((-1, 1), (-1, 1)), iterations=6,
                           checkpoint_every=3, x0_samples=4)
        return QDSearch(sc, cfg, tmp_path)

    s = search()
    interrupt_at(s, 4, KeyboardInterrupt)  # killed after the checkpoint at 3
    with pytest.raises(KeyboardInterrupt):
        s.run(progress=False)
    (tmp_path / "metrics.csv").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(BadFileError, match="metrics.csv.*Delete"):
        search().run(progress=False)
    (tmp_path / "metrics.csv").unlink()
    with pytest.warns(UserWarning, match="0 rows for the checkpoint's 3 iterations"):
        search().run(progress=False)


def test_random_baseline_must_reach_its_size():
    from qdgs_lib import shapes_poc
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.scoring import PromptScorer

    p = get_profile("smoke", "shapes")
    sc = PromptScorer(ToyGenerator(), ToyClip(), p["objective"],
                      [m.prompts for m in p["measures"]])
    with pytest.raises(ValueError, match="unambiguous shape label.*label_margin"):
        shapes_poc.random_set(sc, 20, dict(p, label_margin=10.0))  # no sample is that sure
    with pytest.raises(ValueError, match="n must be >= 1"):
        shapes_poc.random_set(sc, 0, p)


def test_rfw_and_recordio_side_files(tmp_path):
    from qdgs_lib.data.benchmarks import read_rfw
    from qdgs_lib.data.identities import RecordIOFaces
    from qdgs_lib.data.recordio import RecordIOError
    from qdgs_lib.plumbing import write_benchmarks, write_training_set

    write_benchmarks(tmp_path)
    rfw = tmp_path / "rfw"
    assert len(read_rfw(rfw, limit_per_race=2).issame) == 8
    with pytest.raises(BadFileError, match="limit_per_race=0"):
        read_rfw(rfw, limit_per_race=0)
    jpg = next((rfw / "test" / "data" / "African").rglob("*_0001.jpg"))
    jpg.write_bytes(b"not a jpeg")
    with pytest.raises(BadFileError,
                       match=r"listed in .*African_pairs.txt:\d+\) is not a readable"):
        read_rfw(rfw)
    write_training_set(tmp_path / "train")
    (tmp_path / "train" / "property").write_text("lots,112,112")
    with pytest.raises(RecordIOError, match="num_classes,H,W"):
        RecordIOFaces(tmp_path / "train" / "train.rec")


def test_first_contact_mistakes_get_a_pointer(tmp_path):
    """A CLIP name in OpenAI's spelling, an empty explorer cell, a missing .safetensors copy
    of StyleGAN2: each error says what to do instead."""
    from qdgs_lib.clip import create_clip
    from qdgs_lib.generators.stylegan2_legacy import load_stylegan2

    with pytest.raises(ValueError, match="did you mean.*'ViT-B-32'.*ViT-B-32-quickgelu"):
        create_clip("ViT-B/32")
    with pytest.raises(FileNotFoundError, match="save_stylegan2"):
        load_stylegan2(tmp_path / "g.safetensors")
    import numpy as np
    import pandas as pd

    from qdgs_lib import explorer
    from qdgs_lib.measures import Measure

    frame = pd.DataFrame({"index": [5], "objective": [1.0], "measures_0": [0.0],
                          "measures_1": [0.0], "solution_0": [0.1], "solution_1": [0.2]})
    ms = [Measure(k, "a", "b", k, (-1.0, 1.0), 4) for k in ("x", "y")]
    data = explorer.ArchiveData(frame, ms, lambda z: z, np.array([1.0, 2.0]))
    assert data.elite_at((0, 1), (0, 0)) is None
    with pytest.raises(ValueError, match="cell is empty"):
        data.facts(data.elite_at((0, 1), (0, 0)))


def test_broken_backbones_and_nan_embeddings_are_refused(tmp_path):
    from safetensors.torch import save_file

    from qdgs_lib.evaluate import verification_accuracy
    from qdgs_lib.models.iresnet import build_iresnet
    from qdgs_lib.recognition import load_backbone

    p = {"backbone": "ir_small"}
    state = build_iresnet("ir_small").state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "ok.safetensors")
    load_backbone(p, tmp_path / "ok.safetensors")
    nan = {k: (v.fill_(float("nan")) if v.is_floating_point() else v).contiguous()
           for k, v in build_iresnet("ir_small").state_dict().items()}
    save_file(nan, tmp_path / "nan.safetensors")
    with pytest.raises(BadFileError, match="non-finite weights"):
        load_backbone(p, tmp_path / "nan.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "ok.safetensors").read_bytes()[:100])
    with pytest.raises(BadFileError, match="cut.safetensors.*re-run notebooks/03"):
        load_backbone(p, tmp_path / "cut.safetensors")
    with pytest.raises(BadFileError, match="ok.safetensors"):   # another architecture
        load_backbone({"backbone": "ir18"}, tmp_path / "ok.safetensors")
    emb = np.ones((4, 2))
    emb[1, 0] = np.nan
    with pytest.raises(ValueError, match="1 embeddings hold NaN"):
        verification_accuracy(emb, np.array([True, False]))


def test_oversized_images_in_a_bin_are_refused_from_their_header(tmp_path):
    import io
    import pickle

    from PIL import Image

    from qdgs_lib.data.benchmarks import read_bin

    def png(side):
        buf = io.BytesIO()
        Image.new("RGB", (side, side)).save(buf, format="PNG")
        return buf.getvalue()

    (tmp_path / "lfw.bin").write_bytes(pickle.dumps(([png(112), png(4000)], [True])))
    with pytest.raises(BadFileError, match="image 1: a 4000x4000 image"):
        read_bin(tmp_path / "lfw.bin")


def test_metadata_cannot_make_the_loader_build_a_huge_network(tmp_path):
    """Sizes in a safetensors file's metadata are checked against its tensors on the meta
    device first (a 172-byte StyleGAN2 file claiming width 8192 took 2.9 GB; an oracle
    claiming 2000 members, 1.2 GB). Measured in a fresh process: this one's peak memory may
    already exceed what a regression would take."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import json, resource
        from pathlib import Path
        import torch
        from safetensors.torch import save_file
        from qdgs_lib.generators.stylegan2_legacy import load_stylegan2
        from qdgs_lib.shapes_oracle import load_shapes_oracle
        from qdgs_lib.utils import BadFileError

        tmp = Path({str(tmp_path)!r})
        def refused(load, path, words):
            try:
                load(path)
            except BadFileError as e:
                assert words in str(e), e
            else:
                raise AssertionError(f"{{path}} was loaded")

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        save_file({{"x": torch.zeros(1)}}, tmp / "sg.safetensors", metadata={{
            "qdgs_stylegan2_config": json.dumps({{"z_dim": 8192, "w_dim": 8192,
                                                 "img_resolution": 4}})}})
        refused(lambda p: load_stylegan2(p, device="cpu"), tmp / "sg.safetensors",
                "do not match the network its metadata describes")
        save_file({{"x": torch.zeros(1)}}, tmp / "oracle.safetensors",
                  metadata={{"members": "2000", "size": "32"}})
        refused(load_shapes_oracle, tmp / "oracle.safetensors",
                "metadata says 2000 members at 32 px, its tensors hold 0")
        save_file({{"x": torch.zeros(1)}}, tmp / "deep.safetensors", metadata={{
            "qdgs_stylegan2_config": json.dumps({{"img_resolution": 4,
                                                 "mapping_layers": 10**6}})}})
        refused(lambda p: load_stylegan2(p, device="cpu"), tmp / "deep.safetensors",
                "is no StyleGAN2")   # a million modules, no
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) < 400_000   # KiB


def test_a_training_set_unpacked_with_its_zip_folder_says_to_move_it_up(tmp_path):
    """InsightFace's zips keep their top folder: train/faces_webface_112x112/train.rec must
    be reported as misplaced (not as present, nor as 'no identity folders')."""
    from qdgs_lib.assets import Asset
    from qdgs_lib.data.identities import open_training_set

    nested = tmp_path / "train" / "faces_webface_112x112"
    nested.mkdir(parents=True)
    for name in ("train.rec", "train.idx"):
        (nested / name).write_bytes(b"x")
    asset = Asset(tmp_path / "train", "real face training set", "where", "trainset")
    assert not asset.present()
    assert f"move train.rec, train.idx and property up into {tmp_path / 'train'}" in \
        asset.problem()
    with pytest.raises(FileNotFoundError, match="holds no train.rec, but"):
        open_training_set(tmp_path / "train")
    for name in ("train.rec", "train.idx"):
        (nested / name).rename(tmp_path / "train" / name)
    assert asset.present() and asset.problem() is None


def test_library_users_first_mistakes_get_a_pointer(tmp_path):
    """What a user trying the library on their own generator got wrong first (a walkthrough
    from the README and the guide): each gets a message that names the fix."""
    from torch import nn

    from qdgs_lib.generators.wrapped import WrappedGenerator
    from qdgs_lib.measures import ranges_from_samples
    from qdgs_lib.sampling import assign_bins, decode_batched
    from qdgs_lib.scoring import PromptScorer
    from qdgs_lib.search import QDSearch, SearchConfig, archive_summary

    net = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Unflatten(1, (3, 8, 8)), nn.Sigmoid())
    with pytest.raises(ValueError, match=r"output_range must be the pair \(low, high\)"):
        WrappedGenerator(net, 4, output_range=255)
    gen = WrappedGenerator(net, 4)
    assert torch.equal(gen.sample_prior(3, seed=np.int64(5)), gen.sample_prior(3, seed=5))
    with pytest.raises(TypeError, match="seed must be an int"):
        gen.sample_prior(3, seed=1.5)
    with pytest.raises(TypeError, match="wrap a network or function in .*WrappedGenerator"):
        PromptScorer(net, ToyClip(), ("good", "bad"), [("a", "b")])
    for objective, measures in ((("good", "bad"), ("a", "b")), ("good", [("a", "b")]),
                                (("good", "bad"), [("a", "b", "c")])):
        with pytest.raises(ValueError, match=r"pairs: .*_prompts got [('\[]"):
            PromptScorer(gen, ToyClip(), objective, measures)
    with pytest.raises(ValueError, match=r"ranges one \(low, high\) per measure"):
        SearchConfig(dims=(4, 4), ranges=(-0.1, 0.1))
    with pytest.raises(ValueError, match=r"lo < hi"):
        assign_bins(np.zeros((2, 1)), [[(0.1, -0.1)]])
    with pytest.raises(ValueError, match="overlap"):
        assign_bins(np.zeros((2, 1)), [[(-np.inf, 0.1), (0.0, np.inf)]])
    with pytest.warns(UserWarning, match=r"measure\(s\) \[1\] barely vary"):
        ranges_from_samples(np.stack([np.linspace(-1, 1, 50), np.full(50, 0.3)], 1))
    assert decode_batched(gen.decode, np.zeros((0, 4)), size=16).shape == (0, 3, 16, 16)
    sc = PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")])
    search = QDSearch(sc, SearchConfig(dims=(4, 4), ranges=((-1, 1), (-1, 1)), iterations=2),
                      tmp_path / "qd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not run yet: nothing is "missing (deleted?)"
        assert search.metrics().empty
    search.run(progress=False)
    summary = archive_summary({"qd": search})  # numbers, not 0-d arrays in object columns
    assert summary.dtypes.to_dict() == {"coverage": float, "qd_score": float, "elites": int,
                                        "evaluations": int}, summary.dtypes
    assert summary.loc["qd", "evaluations"] == 2 * search.cfg.evaluations_per_iteration
    assert archive_summary({}).empty


def test_a_log_line_cut_by_a_kill_is_no_row(tmp_path):
    """A run killed while appending to its CSV log leaves a line without its newline; the
    resume keeps the whole rows only (a cut "26,0.5" once came back as iteration 2)."""
    from qdgs_lib.utils import keep_rows_through

    log = tmp_path / "log.csv"
    log.write_text("epoch,loss\n1,0.9\n2,0.8\n3,0.7\n2")
    rows = keep_rows_through(log, "epoch", 3, "a log", "delete it")
    assert rows["epoch"].tolist() == [1, 2, 3]
    assert log.read_text() == "epoch,loss\n1,0.9\n2,0.8\n3,0.7\n"
    log.write_text("epoch,lo")  # killed while writing the header: the log starts anew
    assert len(keep_rows_through(log, "epoch", 3, "a log", "delete it")) == 0
    assert not log.exists()


def test_empty_archives_and_missing_earlier_outputs_say_what_to_run(tmp_path):
    """Errors a notebook meets when an earlier step gave nothing or was not run."""
    import types

    import pandas as pd

    from qdgs_lib import face_synthesis, recognition, shapes_poc
    from qdgs_lib.data.shapes import ShapesDataset
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.sampling import read_image_dataset

    scorer = types.SimpleNamespace(generator=ToyGenerator())
    empty = pd.DataFrame({"solution_0": [], "measures_0": [], "measures_1": []})
    with pytest.raises(ValueError, match="the QDGS archive is empty: run the search first"):
        face_synthesis.build_datasets(scorer, empty, get_profile("smoke", "faces"), tmp_path)
    p = get_profile("smoke", "shapes")
    with pytest.raises(ValueError, match="no solution has an unambiguous shape measure"):
        shapes_poc.synthetic_set(scorer, np.zeros((3, 4)), np.zeros((3, 2)), p)
    with pytest.raises(ValueError, match="image_size 8: the shape classifier needs >= 16 px"):
        shapes_poc.classifier_protocol({**p, "image_size": 8}, {}, progress=False,
                                       device="cpu")
    for bias in (0.4, 1.2):
        with pytest.raises(ValueError, match=r"bias must be in \[0.5, 1\]"):
            ShapesDataset(8, bias)
    with pytest.raises(FileNotFoundError, match="run notebooks/03_pretraining.ipynb first"):
        recognition.load_backbone(get_profile("smoke", "recognition"), tmp_path / "none.st")
    with pytest.raises(FileNotFoundError, match="is .* a dataset written by qdgs"):
        read_image_dataset(tmp_path, ["a"])


def test_a_gap_in_a_notebooks_results_is_named():
    """notebook.expect_complete, each notebook's last check: missing, repeated, unasked-for
    rows and NaN or out-of-range values are each named."""
    import pandas as pd

    from qdgs_lib.notebook import expect_complete

    grid = {"bias": [0.9, 0.8], "seed": [0, 1]}
    full = pd.DataFrame([{"bias": b, "seed": s, "mean": 0.5} for b in grid["bias"]
                         for s in grid["seed"]])
    expect_complete(full, grid, values=("mean",))   # complete: no error
    with pytest.raises(ValueError, match=r"1 row\(s\) missing, e.g. \{'bias': 0.8, 'seed': 1\}"):
        expect_complete(full.iloc[:3], grid, values=("mean",))
    with pytest.raises(ValueError, match="rows repeated, e.g. {'bias': 0.9, 'seed': 0}"):
        expect_complete(pd.concat([full, full.iloc[:1]]), grid)
    with pytest.raises(ValueError, match="rows not asked for, e.g. {'bias': 0.5, 'seed': 0}"):
        expect_complete(pd.concat([full, full.iloc[:1].assign(bias=0.5)]), grid)
    with pytest.raises(ValueError, match="mean: 1 NaN/inf value"):
        expect_complete(full.assign(mean=[0.5, np.nan, 0.5, 0.5]), grid, values=("mean",))
    with pytest.raises(ValueError, match=r"mean: values outside \[0, 1\]"):
        expect_complete(full.assign(mean=[0.5, 1.5, 0.5, 0.5]), grid, values=("mean",))
    expect_complete(full.assign(mean=7.0), grid, values=("mean",), unit=False)
    with pytest.raises(ValueError, match=r"no column\(s\) \['finetune'\]"):
        expect_complete(full, {**grid, "finetune": ["none"]})
