"""Measures from example images (ImagePrompt): loading, checks, scoring, search records."""

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from qdgs_lib.clip import create_clip
from qdgs_lib.face_synthesis import build_scorer
from qdgs_lib.generators import toy_faces
from qdgs_lib.generators.wrapped import WrappedGenerator
from qdgs_lib.image_prompts import ImagePrompt
from qdgs_lib.paths import REPO_ROOT
from qdgs_lib.profiles import get_profile
from qdgs_lib.scoring import PromptScorer, angdist
from qdgs_lib.search import QDSearch, SearchConfig
from qdgs_lib.utils import write_run_info

OBJECTIVE = ("A detailed photo of an individual with diverse features.",
             "An obscure, fake, or discolored photo of a person.")


@pytest.fixture(scope="module")
def faces():
    """The toy renderer as a wrapped generator, the faces CLIP, and balanced renders' latents
    with their true attributes."""
    gen = WrappedGenerator(toy_faces.render, latent_dim=16)
    clip = create_clip("qdgs-faces-clip", device="cpu")
    z = toy_faces.balanced_latents(600, torch.Generator().manual_seed(5))
    return gen, clip, z, toy_faces.attributes(z)


def examples(z, mask, n=16, name=None):
    return ImagePrompt(toy_faces.render(z[torch.nonzero(mask).flatten()[:n]]), name=name)


def test_folders_are_read_as_square_rgb_crops_in_name_order(tmp_path):
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, :10] = (0, 0, 255)  # blue margins, cropped away: the centre square is red
    wide[:, 10:20] = (255, 0, 0)
    wide[:, 20:] = (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "b_wide.png")
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(tmp_path / "a_gray.jpg")  # L mode
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "c_rgba.PNG")
    (tmp_path / "notes.txt").write_text("not an image, not read")
    (tmp_path / "sub").mkdir()
    Image.fromarray(wide).save(tmp_path / "sub" / "deeper.png")  # sub-folders are not searched

    p = ImagePrompt(tmp_path, size=32)
    assert p.name == tmp_path.name and len(p) == 3
    assert p.images.dtype == torch.uint8 and p.images.shape == (3, 3, 32, 32)
    gray, red, green = p.images.int()
    assert abs(gray - 128).max() <= 2
    assert (red[0] == 255).all() and (red[1:] == 0).all()
    assert (green[1] == 200).all() and (green[[0, 2]] == 0).all()
    # the digest is of the pixels: the same images give it again, a changed pixel another
    assert ImagePrompt(sorted(tmp_path.glob("*_*.*")), size=32).sha256 == p.sha256
    changed = p.images.clone()
    kept = ImagePrompt(changed)
    changed[0, 0, 0, 0] += 1  # the prompt keeps its own copy: the caller's edit is not in it
    assert kept.sha256 == p.sha256 and torch.equal(kept.images, p.images)
    assert ImagePrompt(changed).sha256 != p.sha256
    assert p.record() == {"images": tmp_path.name, "count": 3, "sha256": p.sha256}


@pytest.mark.parametrize("images, error, match", [
    (torch.rand(3, 32, 32), ValueError, r"\(N >= 1, 3, H, W\)"),
    (torch.rand(0, 3, 32, 32), ValueError, r"\(N >= 1, 3, H, W\)"),
    (torch.rand(2, 4, 32, 32), ValueError, r"\(N >= 1, 3, H, W\)"),
    (torch.full((2, 3, 8, 8), float("nan")), ValueError, "NaN"),
    (torch.rand(2, 3, 8, 8) * 255, ValueError, r"divide 0-255 images by 255"),
    (torch.rand(2, 3, 8, 8) * 2 - 1, ValueError, r"\(x \+ 1\) / 2"),
    (torch.ones(2, 3, 8, 8, dtype=torch.int32), TypeError, "uint8"),
])
def test_bad_image_tensors_are_refused(images, error, match):
    with pytest.raises(error, match=match):
        ImagePrompt(images)


def test_bad_folders_and_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder of example images"):
        ImagePrompt(tmp_path / "nowhere")
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "sub" / "x.png")
    with pytest.raises(ValueError, match="sub-folders are not searched"):
        ImagePrompt(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png is not an image PIL can read"):
        ImagePrompt(tmp_path)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        ImagePrompt([tmp_path / "sub" / "x.png", tmp_path / "gone.png"])
    with pytest.raises(TypeError, match="torch.stack"):
        ImagePrompt([torch.rand(3, 8, 8), torch.rand(3, 8, 8)])
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        ImagePrompt([tmp_path / "sub" / "x.png"], name=" ")


def test_an_image_pair_measures_like_its_examples(faces):
    """The measure of a pair of example sets is the mean angle to the second set minus the
    mean angle to the first, and on the toy world it follows the true attribute about as
    well as the text prompts do (age: both rho > 0.7 on prior draws)."""
    gen, clip, z, a = faces
    old, young = examples(z, a["age"] > 0.8, name="old"), examples(z, a["age"] < 0.2)
    text = ("A person in their 50s.", "A person in their 20s.")
    scorer = PromptScorer(gen, clip, OBJECTIVE, [(old, young), text])
    prior = gen.sample_prior(400, seed=1)
    m = scorer.measures_of(prior.numpy())

    with torch.no_grad():
        e = clip.encode_image(gen.decode(prior))
        by_hand = angdist(e, young.embed(clip)).mean(1) - angdist(e, old.embed(clip)).mean(1)
    np.testing.assert_allclose(m[:, 0], by_hand.numpy(), atol=1e-5)

    age = pd.Series(toy_faces.attributes(prior)["age"].numpy())
    rho = [pd.Series(m[:, k]).corr(age, method="spearman") for k in range(2)]
    assert rho[0] > 0.7 and rho[1] > 0.7, rho
    # jacobians flow through image-anchored measures as through text ones
    s = scorer.evaluate(prior[:2].numpy(), jacobian=True, update_memory=False)
    assert np.isfinite(s.jacobian).all() and np.abs(s.jacobian[:, 1]).sum() > 0


def test_image_pairs_that_cannot_measure_are_refused(faces):
    gen, clip, z, a = faces
    dark = examples(z, a["skin"] > 0.8)
    with pytest.raises(ValueError, match="mixes example images with text"):
        PromptScorer(gen, clip, OBJECTIVE, [(dark, "A person with light skin.")])
    with pytest.raises(ValueError, match="two prompts are the same"):
        PromptScorer(gen, clip, OBJECTIVE, [(dark, ImagePrompt(dark.images.clone()))])
    with pytest.raises(ValueError, match=r"pairs"):  # a prompt where a pair belongs
        PromptScorer(gen, clip, OBJECTIVE, [dark])


def test_a_search_records_example_images_and_resumes_only_with_them(faces, tmp_path):
    gen, clip, z, a = faces
    dark, light = examples(z, a["skin"] > 0.8, name="dark"), examples(z, a["skin"] < 0.2)
    cfg = SearchConfig(dims=(4,), ranges=((-0.5, 0.5),), iterations=2, batch_size=2,
                       algorithm="cma_maega")
    QDSearch(PromptScorer(gen, clip, OBJECTIVE, [(dark, light)]), cfg, tmp_path).run()
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["config"]["measure_prompts"][0][0] == {"images": "dark", "count": 16,
                                                 "sha256": dark.sha256}
    def no_step(self):
        raise AssertionError("searched again instead of resuming")

    # the same pixels resume, also under another name (a renamed folder, files as a list)
    renamed = ImagePrompt(dark.images, name="dark, renamed")
    for first in (dark, renamed):
        again = QDSearch(PromptScorer(gen, clip, OBJECTIVE, [(first, light)]), cfg, tmp_path)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(QDSearch, "_step", no_step)
            assert again.run().stats.num_elites > 0 and again.iteration == 2

    other = examples(z, a["skin"] > 0.9, name="dark")  # same name, other images
    with pytest.raises(ValueError, match="measure_prompts.*other example images"):
        QDSearch(PromptScorer(gen, clip, OBJECTIVE, [(other, light)]), cfg, tmp_path).run()


def test_example_embeddings_do_not_depend_on_the_callers_rng(faces):
    """With random cutouts the examples' crops come from the scorer's seed: two scorers agree,
    and the caller's RNG is left as it was."""
    gen, _, z, a = faces
    clip = create_clip("qdgs-faces-clip", device="cpu", num_cutouts=4)
    dark, light = examples(z, a["skin"] > 0.8), examples(z, a["skin"] < 0.2)
    torch.manual_seed(1)
    first = PromptScorer(gen, clip, OBJECTIVE, [(dark, light)])._targets[1][0]
    torch.manual_seed(2)
    second = PromptScorer(gen, clip, OBJECTIVE, [(dark, light)])._targets[1][0]
    after = torch.rand(3)
    torch.manual_seed(2)
    assert torch.equal(first, second) and torch.equal(after, torch.rand(3))


def _save(images: torch.Tensor, folder) -> None:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray((img * 255).round().byte().permute(1, 2, 0).numpy()).save(
            folder / f"{i:03d}.png")


def test_profiles_take_example_images_in_json_overrides(faces, tmp_path, monkeypatch):
    """A notebook's measures and objective take {"images": folder}: relative folders are under
    the data folder, the pair is checked when the profile is read, the scorer measures with
    the folder's images, and config.json records them by name, count and sha256."""
    gen, clip, z, a = faces
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path / "data"))
    _save(toy_faces.render(z[a["skin"] > 0.8][:8]), tmp_path / "data" / "ex" / "dark")
    _save(toy_faces.render(z[a["skin"] < 0.2][:8]), tmp_path / "data" / "ex" / "light")
    (tmp_path / "data" / "weights").symlink_to(REPO_ROOT / "data" / "weights")  # (the CLIP)
    skin = {"key": "skin", "label": "skin tone", "range": [-0.1, 0.1], "bins": 4,
            "positive": {"images": "ex/dark"}, "negative": {"images": "ex/light",
                                                            "name": "pale"}}
    age = {"key": "age", "label": "age", "range": [-0.1, 0.1], "bins": 3,
           "positive": "A person in their 50s.", "negative": "A person in their 20s."}
    overrides = json.loads(json.dumps({"measures": [skin, age]}))  # as papermill passes them
    p = get_profile("smoke", "faces", **overrides)
    dark, light = p["measures"][0].prompts
    assert isinstance(dark, ImagePrompt) and (dark.name, len(dark)) == ("dark", 8)
    assert light.name == "pale" and p["measures"][1].prompts[0] == "A person in their 50s."
    assert copy.deepcopy(p)["measures"][0].positive is dark  # copies share the pixels

    scorer = build_scorer(p, "cpu")
    direct = PromptScorer(gen, scorer.clip, p["objective"],
                          [(ImagePrompt(tmp_path / "data/ex/dark"),
                            ImagePrompt(tmp_path / "data/ex/light")), age_text := (
                              "A person in their 50s.", "A person in their 20s.")])
    prior = gen.sample_prior(64, seed=3).numpy()
    np.testing.assert_allclose(scorer.measures_of(prior), direct.measures_of(prior), atol=1e-6)
    assert age_text == p["measures"][1].prompts

    write_run_info(tmp_path / "run", {"faces": p})
    text = (tmp_path / "run" / "config.json").read_text()
    record = json.loads(text)["config"]["faces"]["measures"][0]
    assert record["positive"] == {"images": "dark", "count": 8, "sha256": dark.sha256}
    assert record["negative"]["images"] == "pale" and len(text) < 20_000  # names, no pixels

    # text alternatives stay text (a tuple, as the scorer averages "a | b")
    alternatives = dict(age, positive=["A person in their 50s.", "An older adult."])
    p3 = get_profile("smoke", "faces", measures=[alternatives])
    assert p3["measures"][0].positive == ("A person in their 50s.", "An older adult.")
    assert hash(p3["measures"][0])

    # the objective takes example images too, as a pair
    p2 = get_profile("smoke", "faces", objective=[{"images": "ex/dark"}, {"images": "ex/light"}])
    assert all(isinstance(v, ImagePrompt) for v in p2["objective"])


@pytest.mark.parametrize("override, match", [
    ({"measures": [{"key": "skin", "label": "s", "range": [-1, 1], "bins": 2,
                    "positive": {"images": "ex/dark"}, "negative": "A person with light skin."}]},
     "mixes example images with text"),
    ({"measures": [{"key": "skin", "label": "s", "range": [-1, 1], "bins": 2,
                    "positive": {"folder": "ex/dark"}, "negative": {"images": "ex/dark"}}]},
     r"given as \{'images'"),
    ({"measures": [{"key": "skin", "label": "s", "range": [-1, 1], "bins": 2,
                    "positive": {"images": 3}, "negative": {"images": "ex/dark"}}]},
     "must be a folder or a list of image files"),
    ({"measures": [{"key": "skin", "label": "s", "range": [-1, 1], "bins": 2,
                    "positive": " ", "negative": "A person with light skin."}]}, "is empty"),
    ({"measures": [{"key": "skin", "label": "s", "range": [-1, 1], "bins": 2,
                    "positive": {"images": "ex/none"}, "negative": {"images": "ex/dark"}}]},
     "no folder of example images at .*ex/none"),
    ({"objective": [{"images": "ex/dark"}]}, "must be a .positive, negative. pair"),
    ({"objective": [{"images": "ex/dark"}, "An obscure photo."]}, "objective mixes"),
    ({"objective": ["A photo.", 7]}, "must be text .* or example images"),
    ({"objective": ["A photo.", ["", " | "]]}, r"objective's negative is empty"),
    ({"objective": ["A photo.", "|"]}, r"objective's negative is empty"),
    ({"objective": ["A photo.", [{"images": "ex/dark"}]]}, "must be text"),
])
def test_bad_example_image_overrides_are_refused_when_the_profile_is_read(
        override, match, tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    _save(torch.rand(2, 3, 16, 16), tmp_path / "ex" / "dark")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        get_profile("smoke", "faces", **override)


def test_odd_image_files_are_read_as_they_look(tmp_path, monkeypatch):
    """16-bit grey is scaled, not clipped to white; EXIF orientation is applied (a phone
    photo is read upright); macOS's ._ files are skipped; "." is named after its folder."""
    folder = tmp_path / "examples"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(folder / "a_grey16.png")
    assert Image.open(folder / "a_grey16.png").mode.startswith("I")
    stored = np.zeros((20, 40, 3), np.uint8)  # stored wide: left half red, right half blue
    stored[:, :20, 0], stored[:, 20:, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(folder / "b_phone.png", exif=exif)
    (folder / "._b_phone.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not an image")

    p = ImagePrompt(folder, size=20)
    assert len(p) == 2
    grey, phone = p.images.int()
    assert abs(grey - 128).max() <= 1
    # displayed upright it is tall: red on top, blue below (the crop keeps the middle rows)
    assert (phone[0, :8] > 200).all() and (phone[2, :8] < 50).all()
    assert (phone[2, -8:] > 200).all() and (phone[0, -8:] < 50).all()

    (tmp_path / "dark").symlink_to(folder)  # a link is named as the user named it
    assert ImagePrompt(tmp_path / "dark").name == "dark"
    monkeypatch.chdir(folder)
    assert ImagePrompt(".").name == "examples"
    assert ImagePrompt(f for f in ["a_grey16.png"]).name == "1 images"  # a generator, read once
    with pytest.raises(ValueError, match="list of example image files is empty"):
        ImagePrompt([])
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(folder / "c_float.tiff")
    with pytest.raises(ValueError, match="c_float.tiff .*float pixels"):
        ImagePrompt(["c_float.tiff"])


def test_example_sets_are_values_of_their_name_and_pixels():
    """numpy arrays as tensors; equal sets (name and pixels) compare and hash equal; copies
    (a profile is deep-copied) share the images; sizes below 8 px are refused."""
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 12, 12), dtype=np.uint8)
    a, b = ImagePrompt(pixels, name="set"), ImagePrompt(torch.from_numpy(pixels), name="set")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != ImagePrompt(pixels, name="other") and a != ImagePrompt(pixels[:2], name="set")
    assert copy.copy(a) is a and copy.deepcopy({"m": [a]})["m"][0] is a
    pixels[0] = 0  # the set keeps its own copy of the caller's array
    assert a.sha256 == b.sha256 != ImagePrompt(pixels, name="set").sha256
    for size in (4, 8.0, True):
        with pytest.raises(ValueError, match="size must be an int >= 8"):
            ImagePrompt(pixels, size=size)
