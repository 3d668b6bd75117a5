"""A paper run names every missing file at once, before it writes anything."""

import pytest

from qdgs_lib import assets, notebook, profiles


def test_every_missing_file_is_named_with_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path / "data"))
    with pytest.raises(assets.MissingAssetsError) as err:
        assets.check_assets("paper", "faces")
    msg = str(err.value)
    for name in ("stylegan2-ffhq-256x256.pkl", "open_clip_model.safetensors",
                 "augmentations.pt"):
        assert str(tmp_path / "data" / "pretrained" / name) in msg
    assert "github.com/Cylumn/qd-generative-sampling" in msg  # the released files' home
    assert "timm/vit_base_patch32_clip_224.openai" in msg and "NGC" in msg
    later = msg.split("will also need")[1]  # what notebooks 01, 03 and 04 will ask for
    for name in ("lfw.bin", "cfp_fp.bin", "cplfw.bin", "calfw.bin", "agedb_30.bin",
                 "rfw", "benchmarks/train", "pretrained/vae-shapes.pt",
                 "shapes_oracle.safetensors"):
        assert name in later, name
    assert "train.rec + train.idx" in later


def test_a_failed_check_creates_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QDGS_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("QDGS_FIGURES_DIR", str(tmp_path / "figures"))
    for nb, section in (("01_shapes_poc", "shapes"), ("03_pretraining", "recognition")):
        with pytest.raises(assets.MissingAssetsError, match="Nothing was written"):
            notebook.start(nb, "paper", section)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "figures").exists()


def test_offline_profiles_need_only_shipped_files():
    for profile in ("smoke", "default"):
        assert assets.missing_assets(profile) == []


def test_user_paths_and_overrides_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec" / "train.rec").write_bytes(b"")
    missing = assets.missing_assets("paper", ("recognition",), real_dataset=str(tmp_path / "rec"),
                                    benchmarks=("lfw",))
    assert [a.path.name for a in missing] == ["rec", "lfw.bin"]  # train.idx lacks too
    (tmp_path / "rec" / "train.idx").write_text("")
    missing = assets.missing_assets("paper", ("recognition",), real_dataset=str(tmp_path / "rec"),
                                    benchmarks=())
    assert missing == []


def test_checklist_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    assert assets.main(["paper"]) == 1
    out = capsys.readouterr().out
    # VAE weights, shapes oracle, CLIP, StyleGAN2, train set, 5 .bin, RFW
    assert out.count("MISSING") == 15  # + the released augmentations.pt and 3 MTCNN files


def test_each_recognition_notebook_checks_only_what_it_reads(tmp_path, monkeypatch):
    """Notebook 03 reads the training set, 04 the benchmarks: 03 once demanded all six
    benchmarks, and 04 with the README's no-RFW override still demanded the training set."""
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path / "data"))
    names = {part: [a.path.name for a in assets.required_assets("paper", "recognition", part)]
             for part in ("train", "eval")}
    assert names["train"] == ["train"]
    assert names["eval"] == ["lfw.bin", "cfp_fp.bin", "cplfw.bin", "calfw.bin", "agedb_30.bin",
                             "txts"]
    with pytest.raises(assets.MissingAssetsError) as err:
        assets.check_assets("paper", "recognition", "eval", benchmarks=("lfw",))
    first = str(err.value).split("will also need")[0]
    assert "1 file(s) missing" in first and "lfw.bin" in first and "train" not in first
    with pytest.raises(ValueError, match="part must be"):
        assets.required_assets("paper", "faces", "train")


def test_empty_and_malformed_weights_count_as_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "stylegan2-ffhq-256x256.pkl").write_bytes(b"")
    (tmp_path / "pretrained" / "open_clip_model.safetensors").write_text("<html>404</html>")
    with pytest.raises(assets.MissingAssetsError) as err:
        assets.check_assets("paper", "faces")
    msg = str(err.value)
    assert "present but unusable: the file is empty" in msg
    assert "present but unusable: not a safetensors file" in msg
    import pickle

    (tmp_path / "pretrained" / "stylegan2-ffhq-256x256.pkl").write_bytes(pickle.dumps({}))
    pkl = [a for a in assets.required_assets("paper", "faces") if a.path.suffix == ".pkl"][0]
    assert pkl.problem() is None and pkl.present()  # the format only; content: the loader


def test_checklist_command_takes_overrides_and_refuses_unknown_profiles(tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    assert assets.main(["paper", "--overrides", '{"benchmarks": ["lfw"]}']) == 1
    # released VAE, shapes oracle, CLIP, StyleGAN2, augmentations, 3 MTCNN files, train set,
    # lfw.bin
    assert capsys.readouterr().out.count("MISSING") == 10
    with pytest.raises(SystemExit):
        assets.main(["pape"])
    assert "invalid choice" in capsys.readouterr().err
    # a key that belongs to no section is refused, not ignored (a typo would check the defaults)
    with pytest.raises(SystemExit):
        assets.main(["paper", "--overrides", '{"benchmark": ["lfw"]}'])
    assert "unknown override(s) ['benchmark']" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # a shortcut key is known; its bad value is named
        assets.main(["smoke", "--overrides", '{"grid": [4, 4]}'])
    assert "faces: 2 bins values for 4 measures" in capsys.readouterr().err


def test_one_set_of_overrides_serves_every_notebook(tmp_path, monkeypatch, capsys):
    """The README's paper loop passes the same overrides to all four notebooks: each takes its
    section's keys and names the others (notebook 03 once refused ``stylegan_weights``)."""
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QDGS_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("QDGS_FIGURES_DIR", str(tmp_path / "figures"))
    overrides = {"stylegan_weights": "mine/ffhq.pkl", "benchmarks": ["lfw"], "seeds": [0, 1],
                 "iterations": 100}
    mine, elsewhere = profiles.split_overrides("paper", "recognition", overrides)
    assert mine == {"benchmarks": ["lfw"], "seeds": [0, 1]}
    assert elsewhere == {"stylegan_weights": "mine/ffhq.pkl", "iterations": 100}
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['stylegan_weight'\]"):
        profiles.split_overrides("paper", "faces", {"stylegan_weight": "x"})
    # the notebook names what it leaves out; its asset check still sees the other notebooks'
    # paths (the note lists the user's StyleGAN2 file, not the default one)
    with pytest.raises(assets.MissingAssetsError) as err:
        notebook.start("03_pretraining", "paper", "recognition", overrides, part="train")
    assert "not used here: ['iterations', 'stylegan_weights']" in capsys.readouterr().out
    later = str(err.value).split("will also need")[1]
    assert "mine/ffhq.pkl" in later
    assert f"{tmp_path / 'data' / 'pretrained' / 'stylegan2-ffhq-256x256.pkl'}  (" not in later
    assert "lfw.bin" in later and "cfp_fp.bin" not in later
    with pytest.raises(assets.MissingAssetsError) as err:
        notebook.start("02_face_synthesis", "paper", "faces", overrides)
    assert "mine/ffhq.pkl" in str(err.value).split("will also need")[0]


def test_checklist_says_what_is_wrong_and_where_to_get_the_file(tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "pretrained" / "stylegan2-ffhq-256x256.pkl").write_text("<html>")
    assets.main(["paper"])
    out = capsys.readouterr().out.split("[BAD]")[1].split("\n[")[0]
    assert "not a pickle" in out and "NGC" in out  # the problem, then where to get it


def test_a_section_name_scopes_overrides_to_its_notebooks(tmp_path, monkeypatch, capsys):
    """``seeds`` means notebook 01's classifier seeds and 03/04's training seeds: a plain key
    applies to every section that takes it (and the notebook says so); under a section's name
    it applies there alone, and wins over the plain key."""
    overrides = {"seeds": [0, 1], "recognition": {"seeds": [0, 1, 2]}, "faces": {"grid": [5] * 4}}
    assert profiles.split_overrides("paper", "shapes", overrides)[0] == {"seeds": [0, 1]}
    assert profiles.split_overrides("paper", "recognition", overrides)[0] == {"seeds": [0, 1, 2]}
    assert profiles.split_overrides("paper", "faces", overrides)[0] == {"grid": [5] * 4}
    assert profiles.shared_overrides("paper", "shapes", overrides) == ["seeds"]
    for bad, match in (({"faces": {"seeds": [0]}}, r"\['seeds'\] for section 'faces'"),
                       ({"faces": 3}, "names a section: give it a dict")):
        with pytest.raises(ValueError, match=match):
            profiles.split_overrides("paper", "shapes", bad)
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QDGS_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(assets.MissingAssetsError):
        notebook.start("01_shapes_poc", "paper", "shapes", overrides)
    out = capsys.readouterr().out
    assert "not used here: ['faces', 'recognition']" in out
    assert "overrides ['seeds'] apply here and to the other notebooks" in out
    # another section's bad value does not hide this notebook's missing files
    with pytest.raises(assets.MissingAssetsError, match="vae-shapes.pt"):
        notebook.start("01_shapes_poc", "paper", "shapes", {"faces": {"grid": [5, 5]}})
    # the checklist, --load included, names a bad override without a traceback
    for argv in (["paper", "--load"], ["paper"]):
        with pytest.raises(SystemExit):
            assets.main([*argv, "--overrides", '{"faces": {"grid": [50, 50]}}'])
        assert "faces: 2 bins values for 4 measures" in capsys.readouterr().err


def test_a_transformers_clip_folder_is_an_asset(tmp_path, monkeypatch):
    """clip_weights may name a transformers checkpoint folder: checked by its weights file."""
    monkeypatch.setenv("QDGS_DATA_DIR", str(tmp_path))
    folder = tmp_path / "pretrained" / "hf"
    folder.mkdir(parents=True)
    (clip,) = [a for a in assets.required_assets("paper", "faces", clip_weights="pretrained/hf")
               if a.what.startswith("CLIP")]
    assert clip.path == folder / "model.safetensors" and not clip.present()
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
    (clip,) = [a for a in assets.required_assets("paper", "faces", clip_weights="pretrained/hf")
               if a.what.startswith("CLIP")]
    assert clip.path == folder / "pytorch_model.bin" and clip.present()
