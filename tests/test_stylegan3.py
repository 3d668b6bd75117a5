"""StyleGAN3 (alias-free) networks: NVIDIA's outputs, file formats, and the search's generator.

``tests/data/stylegan3_{t,r}.safetensors`` hold two tiny networks (configs T and R) that
NVIDIA's own ``networks_stylegan3.py`` built and randomised; ``stylegan3_reference.npz`` holds
what NVIDIA's code rendered from them (``scripts/check_against_stylegan3.py --write-fixture``,
which also checks NVIDIA's pickles of them load; no NVIDIA code is in this repository)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from qdgs_lib.generators.stylegan2 import StyleGAN2Generator
from qdgs_lib.generators.stylegan2_legacy import (
    PersistentRecord,
    load_stylegan2,
    save_stylegan2,
    stylegan2_from_records,
)
from qdgs_lib.generators.stylegan3 import StyleGAN3, filtered_lrelu, upfirdn2d
from qdgs_lib.nvidia_format import write_network_pickle
from qdgs_lib.utils import BadFileError

DATA = Path(__file__).parent / "data"


def small_net(seed: int = 0, img_resolution: int = 32, num_layers: int = 6, **kw) -> StyleGAN3:
    torch.manual_seed(seed)
    net = StyleGAN3(z_dim=16, w_dim=16, img_resolution=img_resolution, channel_base=256,
                    channel_max=8, num_layers=num_layers, **kw)
    with torch.no_grad():  # trained-looking: a rotated, shifted input and uneven magnitudes
        net.synthesis.input.affine.weight.normal_(0, 0.3)
        for name, b in net.named_buffers():
            if name.endswith("magnitude_ema"):
                b.fill_(0.7)
    return net.eval()


@pytest.mark.parametrize("config", ["t", "r"])
def test_renders_what_nvidias_code_rendered(config):
    """Images from z (truncation 1 and 0.7) and from w+ one at a time, and the mapped ws, of
    NVIDIA-built networks against NVIDIA's own outputs (bitwise on the CPU type and torch
    that wrote them, a Xeon with AVX-512; on an AMD EPYC 1.1e-6 of their scale with torch 2.8
    and 2.14, so within 5e-6 elsewhere): a wrong filter, padding, gain, input transform or
    normalization moves them by far more."""
    ref = np.load(DATA / "stylegan3_reference.npz")
    net = load_stylegan2(DATA / f"stylegan3_{config}.safetensors", "cpu")
    z, ws = torch.from_numpy(ref[f"{config}_z"]), torch.from_numpy(ref[f"{config}_ws"])
    with torch.no_grad():
        got = {"img": net(z), "img07": net(z, truncation_psi=0.7),
               "img_ws1": torch.cat([net.synthesis(ws[i:i + 1]) for i in range(len(ws))]),
               "w": net.mapping(z)}
    for key, value in got.items():
        want = torch.from_numpy(ref[f"{config}_{key}"])
        assert want.abs().max() > 1e-3  # not a blank image
        torch.testing.assert_close(value, want, rtol=0, atol=5e-6 * float(want.abs().max()),
                                   msg=f"{config} {key}")


def test_network_pickle_and_safetensors_round_trip(tmp_path):
    net = small_net(conv_kernel=1, use_radial_filters=True)  # R: 2-D filters too
    write_network_pickle(net, tmp_path / "net.pkl")  # NVIDIA's record layout, our fixture
    loaded = load_stylegan2(tmp_path / "net.pkl", "cpu")
    assert isinstance(loaded, StyleGAN3)
    assert loaded.synthesis.layer_names == net.synthesis.layer_names
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(z, truncation_psi=0.7)
        assert torch.equal(loaded(z, truncation_psi=0.7), ref)
    save_stylegan2(loaded, tmp_path / "net.safetensors")
    again = load_stylegan2(tmp_path / "net.safetensors", "cpu")
    with torch.no_grad():
        assert torch.equal(again(z, truncation_psi=0.7), ref)


def test_filtered_lrelu_keeps_a_constant_constant_inside():
    """Bias, 2x up-sampling with a normalized low-pass, leaky ReLU times sqrt 2, 2x down:
    a constant image stays that constant (times the gain) away from the borders."""
    from qdgs_lib.generators.stylegan3 import design_lowpass_filter

    f = design_lowpass_filter(12, cutoff=4, width=4, fs=32)
    x = torch.full((1, 2, 20, 20), 0.5)
    y = filtered_lrelu(x, f, f, torch.tensor([0.25, -1.0]), up=2, down=2,
                       padding=(11, 10, 11, 10), gain=2**0.5, slope=0.2, clamp=None)
    assert y.shape == (1, 2, 20, 20)
    inner = y[..., 6:-6, 6:-6]
    torch.testing.assert_close(inner[0, 0], torch.full_like(inner[0, 0], 0.75 * 2**0.5))
    torch.testing.assert_close(inner[0, 1], torch.full_like(inner[0, 1], -0.5 * 0.2 * 2**0.5))


def test_upfirdn2d_up_and_down_sample_by_the_factors():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    up = upfirdn2d(x, None, up=2)  # zero insertion only
    assert up.shape == (1, 1, 8, 8) and torch.equal(up[..., ::2, ::2], x)
    assert up[..., 1::2, :].abs().sum() == 0
    assert torch.equal(upfirdn2d(up, None, down=2), x)
    cropped = upfirdn2d(x, None, padding=(-1, 0, 1, -2))  # crop x0, pad y0, crop y1
    assert cropped.shape == (1, 1, 3, 3) and torch.equal(cropped[..., 1:, :], x[..., :2, 1:])


@pytest.mark.parametrize("latent_space", ["w", "w+"])
def test_the_search_generator_takes_a_stylegan3(latent_space):
    from toys import ToyClip

    from qdgs_lib.scoring import PromptScorer

    net = small_net(img_resolution=16, num_layers=3)
    gen = StyleGAN2Generator(net, num_std_samples=300, latent_space=latent_space)
    assert gen.name == "StyleGAN3Generator" + ("(w+)" if latent_space == "w+" else "")
    assert gen.latent_dim == 16 * (net.num_ws if latent_space == "w+" else 1)
    # one backward at a time on a CPU (memory), vmapped on CUDA
    assert gen.preferred_jacobian_mode == {"cpu": "loop", "cuda": "func"}
    sc = PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")],
                      weights=(1.0, 0.5, 0.0))
    sc.clip.encode_image = lambda im, **kw: ToyClip.encode_image(
        sc.clip, torch.nn.functional.interpolate(im, size=8, mode="area"))
    z = gen.sample_prior(3, seed=3).numpy()
    ref = sc.evaluate_per_output(z)  # one backward per output: the released scheme
    for mode in ("batched", "func", "loop"):
        sc.jacobian_mode = mode
        s = sc.evaluate(z, jacobian=True, update_memory=False)
        np.testing.assert_allclose(s.measures, ref.measures, atol=1e-5)
        np.testing.assert_allclose(s.jacobian, ref.jacobian, rtol=1e-3, atol=1e-4)
        assert np.abs(s.jacobian).max() > 0
        assert sc.jacobian_mode == mode  # ran as asked, no fallback


def test_unknown_architectures_and_bad_geometry_are_refused_clearly(tmp_path):
    rec = PersistentRecord({"type": "class", "class_name": "SynthesisNetwork", "state": {
        "_modules": {"blocks": None}}})
    g = PersistentRecord({"type": "class", "class_name": "Generator", "state": {
        "z_dim": 8, "w_dim": 8, "c_dim": 0, "img_resolution": 16,
        "_modules": {"synthesis": rec, "mapping": PersistentRecord({
            "type": "class", "class_name": "MappingNetwork",
            "state": {"_modules": {"fc0": PersistentRecord({"type": "class", "state": {}})}}})}}})
    with pytest.raises(ValueError, match="neither StyleGAN2.*nor StyleGAN3.*WrappedGenerator"):
        stylegan2_from_records(g)
    net = small_net()
    config = json.loads(json.dumps(net.config))
    config["geometry"]["layers"] = config["geometry"]["layers"] * 20  # 140 layers
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              tmp_path / "deep.safetensors",
              metadata={"qdgs_stylegan3_config": json.dumps(config)})
    with pytest.raises(BadFileError, match="is no StyleGAN3.*2..64 layers"):
        load_stylegan2(tmp_path / "deep.safetensors", "cpu")
    config = json.loads(json.dumps(net.config))
    config["geometry"]["layers"][0]["in_channels"] = 10**6
    save_file({"x": torch.zeros(1)}, tmp_path / "wide.safetensors",
              metadata={"qdgs_stylegan3_config": json.dumps(config)})
    with pytest.raises(BadFileError, match="within \\+-4096"):
        load_stylegan2(tmp_path / "wide.safetensors", "cpu")



def test_the_faces_pipeline_runs_on_a_stylegan3_pickle(tmp_path, monkeypatch):
    """Notebook 02's steps under ``paper-mini`` (ViT-B/32, w+ search, MTCNN alignment) with a
    StyleGAN3 pickle as ``stylegan_weights``: search, then both datasets; the released
    latent augmentations (StyleGAN2's 14 x 512) are refused for it, saying what to set."""
    from qdgs_lib import face_synthesis
    from qdgs_lib.plumbing import write_paper_mini_assets
    from qdgs_lib.profiles import get_profile
    from qdgs_lib.search import archive_frame, run_search

    monkeypatch.setenv("QDGS_DATA_DIR", str(write_paper_mini_assets(progress=False)))
    write_network_pickle(small_net(img_resolution=16, num_layers=3), tmp_path / "sg3.pkl")
    weights = str(tmp_path / "sg3.pkl")
    with pytest.raises(ValueError, match="is needed.*set offsets_file to None"):
        face_synthesis.build_scorer(get_profile("paper-mini", "faces",
                                                stylegan_weights=weights), "cpu")
    p = get_profile("paper-mini", "faces", stylegan_weights=weights, offsets_file=None,
                    offsets=2, dataset_solutions=3)
    scorer = face_synthesis.build_scorer(p, "cpu")
    assert scorer.generator.name == "StyleGAN3Generator(w+)"
    qd = run_search(scorer, p, "cma_maega", tmp_path / "search", progress=False)
    df = archive_frame(qd.result_archive)
    assert len(df) > 0
    recorded = json.loads((tmp_path / "search" / "config.json").read_text())
    assert recorded["config"]["generator"] == "StyleGAN3Generator(w+)"
    datasets = face_synthesis.build_datasets(scorer, df, p, tmp_path, seed=0, progress=False)
    sizes = face_synthesis.dataset_summary(datasets, p)
    assert (sizes["images per solution"] == p["offsets"]).all()
