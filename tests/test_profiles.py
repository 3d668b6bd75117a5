"""Profiles: every notebook section exists; the paper profile names what is missing."""

import pytest

from qdgs_lib import face_synthesis, measures, recognition
from qdgs_lib.profiles import PROFILES, get_profile


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_has_every_section(name):
    for section in ("shapes", "faces", "recognition"):
        p = get_profile(name, section)
        assert p, (name, section)
    f = get_profile(name, "faces")
    assert len(measures.ranges(f)) == len(measures.grid(f)) == len(f["measures"]) == 4
    assert [m.key for m in f["measures"]] == ["skin", "gender", "hair", "age"]


def test_overrides_are_checked():
    assert get_profile("smoke", "faces", iterations=7)["iterations"] == 7
    with pytest.raises(ValueError, match="unknown override"):
        get_profile("smoke", "faces", iteration=7)
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("fast")


def test_paper_profile_names_the_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pretrained"):
        face_synthesis.build_generator(get_profile("paper", "faces"))
    p = get_profile("paper", "recognition", real_dataset=str(tmp_path / "train"))
    with pytest.raises(FileNotFoundError, match="<identity>"):
        recognition.real_training_data(p)


def test_the_paper_profile_keeps_the_papers_shapes_objective_and_overrides_need_a_section():
    from qdgs_lib.profiles import get_profile

    assert get_profile("paper", "shapes")["objective_weights"] == (1.0, 0.0, 0.0)
    assert get_profile("default", "shapes")["objective_weights"] == (1.0, 2.0, 0.0)
    with pytest.raises(ValueError, match="need a section"):
        get_profile("default", shapes=5)


def test_negative_objective_weights_are_refused():
    from toys import ToyClip, ToyGenerator

    from qdgs_lib.scoring import PromptScorer

    with pytest.raises(ValueError, match="finite numbers >= 0"):
        PromptScorer(ToyGenerator(), ToyClip(), ("a", "b"), [("c", "d")],
                     weights=(1.0, -5.0, 0.0))


def test_choice_keys_are_checked_when_the_profile_is_read():
    """A typo in a setting that names one of a few choices fails at get_profile, not hours
    later where the key is used; the choices are the modules' own."""
    from qdgs_lib.augment import AUGMENT_STYLES
    from qdgs_lib.clip import CLIP_PRECISIONS, CUTOUT_STYLES
    from qdgs_lib.profiles import CHOICES, PROFILES
    from qdgs_lib.sampling import IMAGE_FORMATS
    from qdgs_lib.search import X0_CHOICES
    from qdgs_lib.shapes_poc import LABEL_STYLES

    assert CHOICES["x0"] == X0_CHOICES and CHOICES["cutout_style"] == CUTOUT_STYLES
    assert CHOICES["clip_precision"] == CLIP_PRECISIONS
    assert CHOICES["label_style"] == LABEL_STYLES
    assert CHOICES["augment_style"] == AUGMENT_STYLES
    assert set(CHOICES["image_format"]) == set(IMAGE_FORMATS)
    for name in PROFILES:
        get_profile(name)  # every shipped profile passes
    for key, bad in (("shapes_data", "relased"), ("label_style", "Released"),
                     ("image_format", "jpeg"), ("x0", "best"), ("clip_precision", "fp16"),
                     ("classifier", "resnet"), ("cutout_style", "dall-e")):
        with pytest.raises(ValueError, match=f"{key}='{bad}' is not one of"):
            get_profile("paper", "shapes", **{key: bad})
    with pytest.raises(ValueError, match="align='dlib' is not one of"):
        get_profile("paper", "faces", align="dlib")
    with pytest.raises(ValueError, match="augment_style='pil' is not one of"):
        get_profile("paper", "recognition", augment_style="pil")
    with pytest.raises(ValueError, match=r"\{'n_test': 5001\} must be even"):
        get_profile("paper", "shapes", n_test=5001)
    with pytest.raises(ValueError, match="n_test must be divisible by 4"):
        get_profile("default", "shapes", n_test=2002)  # the project's balanced test set
    get_profile("paper", "shapes", n_test=5002)
