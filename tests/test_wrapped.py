"""Your own generator: WrappedGenerator around a module or a function, its checks, and a
search and a balanced dataset through it (the guide notebook's path)."""

import dataclasses
import functools
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from toys import ToyClip

from qdgs_lib.generators.wrapped import WrappedGenerator
from qdgs_lib.sampling import assign_bins, balanced_indices
from qdgs_lib.scoring import PromptScorer
from qdgs_lib.search import QDSearch, SearchConfig, archive_frame, measures


def tanh_gan(latent_dim: int = 4, seed: int = 0) -> nn.Module:
    """A GAN-like network: latents -> 3x8x8 images in [-1, 1] (tanh output)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(latent_dim, 3 * 8 * 8), nn.Unflatten(1, (3, 8, 8)),
                         nn.Tanh())


def test_a_module_becomes_a_frozen_generator_in_unit_range():
    net = tanh_gan().train()
    gen = WrappedGenerator(net, latent_dim=4, output_range=(-1, 1))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    z = gen.sample_prior(6, seed=2)
    torch.testing.assert_close(gen.decode(z), (net(z) + 1) / 2)
    assert gen.image_size == 8 and gen.latent_dim == 4
    assert abs(gen.latent_norm - 1.880) < 0.06  # E|z| = sqrt(2) Γ(5/2) / Γ(2) in 4-d
    np.testing.assert_array_equal(gen.sample_prior(3, seed=5), gen.sample_prior(3, seed=5))
    zz = z.clone().requires_grad_(True)  # gradients reach the latents
    (g,) = torch.autograd.grad(gen.decode(zz).sum(), zz)
    assert g.abs().sum() > 0
    assert gen.name == f"WrappedGenerator(Sequential, output_range=(-1, 1), " \
        f"latent_norm={gen.latent_norm:.6g})"
    assert gen.decode(z).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_networks_and_priors_of_other_dtypes(dtype):
    """A float64 or half-precision network, and a prior drawn as float64 (numpy-style): the
    latents reach the network in its dtype, the images leave in float32 (what CLIP takes)."""
    net = tanh_gan().to(dtype)

    def prior(n, generator):
        return torch.randn(n, 4, generator=generator, dtype=torch.float64)

    gen = WrappedGenerator(net, latent_dim=4, output_range=(-1, 1), prior=prior)
    z = gen.sample_prior(3, seed=1)
    assert z.dtype == torch.float32
    img = gen.decode(z)
    assert img.dtype == torch.float32
    torch.testing.assert_close(img, (net(z.to(dtype)).float() + 1) / 2)
    sc = PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b")], weights=(1.0, 0.5, 0.0))
    assert np.isfinite(sc.evaluate(z.numpy(), jacobian=True).jacobian).all()


def test_a_function_with_its_own_prior():
    w = torch.randn(3, 3 * 8 * 8, generator=torch.Generator().manual_seed(0))

    def render(z):
        return torch.sigmoid(z @ w).view(-1, 3, 8, 8) * 255

    def prior(n, generator):
        return torch.rand(n, 3, generator=generator) * 2 - 1  # uniform on [-1, 1]^3

    gen = WrappedGenerator(render, latent_dim=3, output_range=(0, 255), prior=prior)
    z = gen.sample_prior(500, seed=1)
    assert z.abs().max() <= 1 and z.min() < -0.9  # the given prior, not N(0, I)
    torch.testing.assert_close(gen.decode(z[:4]), render(z[:4]) / 255)
    assert gen.name.startswith("WrappedGenerator(") and "render" in gen.name
    with pytest.raises(ValueError, match=r"prior\(n=1000, generator\) must return.*\(1000, 5\)"):
        WrappedGenerator(render, latent_dim=5, prior=lambda n, g: torch.zeros(n, 3))


@pytest.mark.parametrize("net, match", [
    (lambda z: torch.rand(len(z), 3, 8, 8) * 255, r"lie in \[.*outside output_range=\(0, 1\)"),
    (lambda z: torch.rand(len(z), 1, 8, 8), r"square RGB images.*\(8, 1, 8, 8\).*repeat"),
    (lambda z: torch.rand(len(z), 8, 8, 3), r"\(8, 8, 8, 3\).*permute"),
    (lambda z: torch.rand(len(z), 3, 8, 6), r"\(8, 3, 8, 6\).*crop"),
    (lambda z: torch.full((len(z), 3, 8, 8), float("nan")), "NaN or inf"),
    (lambda z: (torch.rand(len(z), 3, 8, 8), z), "return a tensor of images, got tuple"),
    (lambda z: [Image.new("RGB", (8, 8))] * len(z), r"got list \(PIL images.*pil_to_tensor"),
])
def test_bad_networks_are_refused_at_construction(net, match):
    with pytest.raises((ValueError, TypeError), match=match):
        WrappedGenerator(net, latent_dim=4)


def test_networks_that_would_mislead_a_search_are_refused():
    dropout = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Dropout(0.5),
                            nn.Unflatten(1, (3, 8, 8)), nn.Tanh()).train()

    def in_training(z):  # a function over a module: the wrapper cannot freeze it
        return dropout(z)

    with pytest.raises(ValueError, match=r"other images for the same latents.*\.eval\(\)"):
        WrappedGenerator(in_training, latent_dim=4, output_range=(-1, 1))
    # batch statistics in training mode: refused before any call changes them
    batchnorm = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.BatchNorm1d(3 * 8 * 8),
                              nn.Unflatten(1, (3, 8, 8)), nn.Tanh()).train()
    stats = batchnorm[1].running_mean.clone()
    with pytest.raises(ValueError, match=r"training mode \(net.batchnorm.1\).*\.eval\(\)"):
        WrappedGenerator(lambda z: batchnorm(z), latent_dim=4, output_range=(-1, 1))
    assert torch.equal(batchnorm[1].running_mean, stats) and batchnorm.training
    # layers in training mode that do not run, or cannot change an image, are no concern:
    # a generator beside a discriminator in training, dropout with p=0
    G, p0 = tanh_gan().eval(), nn.Sequential(tanh_gan(), nn.Dropout(0.0)).train()
    trainer = {"G_ema": G, "D": batchnorm}
    WrappedGenerator(lambda z: trainer["G_ema"](z), latent_dim=4, output_range=(-1, 1))
    WrappedGenerator(lambda z: p0(z), latent_dim=4, output_range=(-1, 1))
    assert torch.equal(batchnorm[1].running_mean, stats)
    net = tanh_gan()
    with pytest.raises(ValueError, match="alone instead of in a batch"):  # batch-dependent
        WrappedGenerator(lambda z: net(z - z.mean(0)), latent_dim=4, output_range=(-1, 1))

    def batch_noise(z):  # noise seeded per call: each latent's depends on its place
        g = torch.Generator().manual_seed(0)
        return (net(z) + 0.3 * torch.randn(len(z), 3, 8, 8, generator=g)).clamp(-1, 1)

    with pytest.raises(ValueError, match="at another place in the batch.*fixed per latent"):
        WrappedGenerator(batch_noise, latent_dim=4, output_range=(-1, 1))
    with pytest.raises(ValueError, match="no gradient reaches the latents"):
        WrappedGenerator(lambda z: net(z).detach(), latent_dim=4, output_range=(-1, 1))
    with pytest.raises(ValueError, match="net returned 1 images for 8 latents"):
        WrappedGenerator(lambda z: net(z[:1]), latent_dim=4, output_range=(-1, 1))
    with pytest.raises(ValueError, match=r"net failed on 8 prior latents.*Check latent_dim"):
        WrappedGenerator(net, latent_dim=5, output_range=(-1, 1))
    with pytest.raises(ValueError, match="meta device"):
        WrappedGenerator(tanh_gan().to("meta"), latent_dim=4, output_range=(-1, 1))
    with pytest.raises(ValueError, match="same seed gave other latents"):
        WrappedGenerator(net, latent_dim=4, output_range=(-1, 1),
                         prior=lambda n, g: torch.randn(n, 4))  # ignores the generator
    with pytest.raises(ValueError, match="same latents for two seeds"):  # a generator of its own
        WrappedGenerator(net, latent_dim=4, output_range=(-1, 1), prior=lambda n, g: torch.randn(
            n, 4, generator=torch.Generator().manual_seed(0)))
    # [0, 1] pixels declared as (0, 255): black images, refused; as (0, 2): dark, a warning
    with pytest.raises(ValueError, match=r"under 1% of output_range=\(0, 255\).*\(0, 1\)"):
        WrappedGenerator(lambda z: (net(z) + 1) / 2, latent_dim=4, output_range=(0, 255))
    with pytest.warns(UserWarning, match=r"use only \[.*washed out or dark"):
        WrappedGenerator(lambda z: (net(z) + 1) / 8, latent_dim=4, output_range=(0, 2))
    # [0, 1] pixels declared as (-1, 1): all in the upper half, decoded to [0.5, 1]
    with pytest.warns(UserWarning, match=r"use only \[.*output_range=\(-1, 1\).*washed out"):
        WrappedGenerator(lambda z: (net(z) + 1) / 2, latent_dim=4, output_range=(-1, 1))
    with pytest.raises(ValueError, match=r"torch.uint8 images.*no gradient.*\(0, 255\)"):
        WrappedGenerator(lambda z: ((net(z) + 1) * 127.5).round().to(torch.uint8),
                         latent_dim=4, output_range=(0, 255))


def test_networks_that_fail_on_the_latents_get_the_hint():
    """Any error of the first call (a network that wants a label too: TypeError; one that
    indexes latents it lacks: IndexError) gets the wrapper's hint, not a bare traceback."""
    net = tanh_gan()

    class Conditional(nn.Module):
        def forward(self, z, c):
            return net(z)

    with pytest.raises(ValueError, match=r"TypeError.*missing.*'c'.*lambda z: G\(z, None\)"):
        WrappedGenerator(Conditional(), latent_dim=4, output_range=(-1, 1))
    with pytest.raises(ValueError, match=r"net failed.*IndexError.*Check latent_dim"):
        WrappedGenerator(lambda z: net(torch.stack([z[:, i] for i in range(4)], 1)),
                         latent_dim=3, output_range=(-1, 1))


def test_latent_dims_the_network_ignores_and_infinite_ranges():
    net = tanh_gan()
    with pytest.warns(UserWarning, match=r"4 of the 8 latent dims \(e.g. \[4, 5, 6, 7\]\) do "
                                         "not change"):
        WrappedGenerator(lambda z: net(z[:, :4]), latent_dim=8, output_range=(-1, 1))
    with pytest.raises(ValueError, match="finite high > low"):
        WrappedGenerator(net, latent_dim=4, output_range=(0, float("inf")))


def test_bad_priors_name_the_signature_and_nan():
    net = tanh_gan()
    with pytest.raises(TypeError, match=r"prior\(n, generator\).*torch.randn\(n, 4, "
                                        r"generator=generator\)"):
        WrappedGenerator(net, latent_dim=4, output_range=(-1, 1),
                         prior=lambda n: torch.randn(n, 4))

    def nan_prior(n, generator):
        z = torch.randn(n, 4, generator=generator)
        z[0, 0] = float("nan")
        return z

    with pytest.raises(ValueError, match="returned NaN or inf latents"):
        WrappedGenerator(net, latent_dim=4, output_range=(-1, 1), prior=nan_prior)


def test_bad_arguments_and_the_device_hint():
    with pytest.raises(TypeError, match="nn.Module or a function"):
        WrappedGenerator("G_ema.pkl", latent_dim=4)
    with pytest.raises(ValueError, match="latent_dim"):
        WrappedGenerator(tanh_gan(), latent_dim=0)
    with pytest.raises(ValueError, match="finite high > low"):
        WrappedGenerator(tanh_gan(), latent_dim=4, output_range=(1, -1))
    with pytest.raises(ValueError, match="finite high > low"):
        WrappedGenerator(tanh_gan(), latent_dim=4, output_range=(-1, 0, 1))
    with pytest.raises(ValueError, match="prior_samples"):
        WrappedGenerator(tanh_gan(), latent_dim=4, output_range=(-1, 1), prior_samples=0)
    assert WrappedGenerator(tanh_gan(), latent_dim=np.int64(4), output_range=(-1, 1),
                            device="auto").latent_dim == 4  # "auto" as everywhere else

    def on_another_device(z):  # what torch says when a function's network is on a GPU
        raise RuntimeError("Expected all tensors to be on the same device, but found at "
                           "least two devices, cuda:0 and cpu!")

    with pytest.raises(ValueError, match=r"on cpu.*needs device=.*device='cuda'"):
        WrappedGenerator(on_another_device, latent_dim=4)


@pytest.mark.filterwarnings("ignore:3 of the 4 latent dims")  # (first, second: one dim each)
def test_a_search_through_a_wrapped_network_and_a_balanced_dataset(tmp_path):
    """The guide notebook's path on toys: scorer, search, resume refused under another
    function, balanced selection of the archive."""
    gen = WrappedGenerator(tanh_gan(), latent_dim=4, output_range=(-1, 1))
    sc = PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")],
                      weights=(1.0, 0.5, 0.0))
    jac = sc.evaluate(gen.sample_prior(1, seed=0).numpy(), jacobian=True).jacobian
    assert jac.shape == (1, 3, 4) and np.abs(jac).min(axis=2).all()  # every output moves
    ranges = tuple((float(lo), float(hi)) for lo, hi in zip(
        *np.quantile(sc.measures_of(gen.sample_prior(200, seed=1).numpy()), [0.01, 0.99], 0),
        strict=True))
    cfg = SearchConfig(dims=(6, 6), ranges=ranges, iterations=40, seed=0, checkpoint_every=10)
    archive = QDSearch(sc, cfg, tmp_path / "qd").run(progress=False)
    df = archive_frame(archive)
    bins = [[(-np.inf, np.mean(r)), (np.mean(r), np.inf)] for r in ranges]
    b = assign_bins(measures(df), bins)
    keep = balanced_indices(b, 4, seed=0)
    assert len(set(np.bincount(b[keep], minlength=4))) == 1 and len(keep) >= 4

    def first(z):  # two functions: no weights to tell them apart, their names do
        return torch.sigmoid(z[:, :1, None, None].expand(-1, 3, 8, 8))

    def second(z):
        return torch.sigmoid(z[:, 1:2, None, None].expand(-1, 3, 8, 8))

    def scorer(fn, output_range=(0, 1)):
        return PromptScorer(WrappedGenerator(fn, latent_dim=4, output_range=output_range),
                            ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")],
                            weights=(1.0, 0.5, 0.0))

    QDSearch(scorer(first), cfg, tmp_path / "fn").run(progress=False)
    with pytest.raises(ValueError, match=r"different settings \(generator\)"):
        QDSearch(scorer(second), cfg, tmp_path / "fn").run(progress=False)
    with pytest.warns(UserWarning, match="washed out"):  # (sigmoid pixels, from -0.5)
        other_range = scorer(first, (-0.5, 1))
    with pytest.raises(ValueError, match=r"different settings \(generator\)"):  # same function
        QDSearch(other_range, cfg, tmp_path / "fn").run(progress=False)
    QDSearch(scorer(first), cfg, tmp_path / "fn").run(progress=False)  # the same: reloads


def test_a_network_that_normalises_each_image_still_passes_the_gradient_check():
    """Per-image mean removal makes the plain sum of the pixels constant (its gradient is
    zero) though every latent changes the images: the check weighs pixels randomly."""
    net = tanh_gan()

    def centred(z):
        x = net(z)
        return x - x.mean(dim=(1, 2, 3), keepdim=True)  # in [-2, 2]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen = WrappedGenerator(centred, latent_dim=4, output_range=(-2, 2))
    assert gen.latent_dim == 4


def test_a_network_held_as_a_default_argument_is_recorded_and_old_runs_still_resume(
        tmp_path, monkeypatch):
    """`lambda z, G=G: G(z)`: G's weights are recorded (a run does not resume under another
    G); a run recorded before default arguments were followed (their digest left G out)
    still resumes."""
    from qdgs_lib.generators import wrapped

    def scorer(net):
        return PromptScorer(WrappedGenerator(lambda z, G=net: G(z), latent_dim=4,
                                             output_range=(-1, 1)),
                            ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")],
                            weights=(1.0, 0.5, 0.0))

    cfg = SearchConfig(dims=(4, 4), ranges=((-0.1, 0.1), (-0.1, 0.1)), iterations=4, seed=0)
    assert scorer(tanh_gan(seed=0)).weights_sha256() != scorer(tanh_gan(seed=1)).weights_sha256()
    QDSearch(scorer(tanh_gan(seed=0)), cfg, tmp_path / "new").run(progress=False)
    with pytest.raises(ValueError, match=r"different settings \(weights_sha256"):
        QDSearch(scorer(tanh_gan(seed=1)), cfg, tmp_path / "new").run(progress=False)

    follow = wrapped.reachable_modules
    with monkeypatch.context() as m:  # the code before: defaults not followed
        m.setattr(wrapped, "reachable_modules", lambda fn, depth=4, defaults=True: follow(
            fn, depth, defaults=False))
        old = scorer(tanh_gan(seed=0))
        QDSearch(old, cfg, tmp_path / "old").run(progress=False)
    longer = dataclasses.replace(cfg, iterations=6)
    again = QDSearch(scorer(tanh_gan(seed=0)), longer, tmp_path / "old")
    assert again.run(progress=False) is not None and again.iteration == 6
    assert len(again.metrics()) == 6  # resumed: 4 iterations read back, 2 run


def test_a_resume_under_other_weights_behind_the_same_function_is_refused(tmp_path):
    """`WrappedGenerator(lambda z: G(z), ...)` (the guide's pattern for a network that wants
    more arguments): a search records the weights of the modules the function reaches, so
    the same function over another network's weights does not resume the run."""
    from qdgs_lib.generators.wrapped import reachable_modules

    holder = {"G": tanh_gan(seed=0)}

    def closure_over(net):
        return lambda z: net(z)

    def scorer(fn):
        return PromptScorer(WrappedGenerator(fn, latent_dim=4, output_range=(-1, 1)),
                            ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")],
                            weights=(1.0, 0.5, 0.0))

    first, again, other = (scorer(closure_over(g)) for g in
                           (holder["G"], tanh_gan(seed=0), tanh_gan(seed=1)))
    assert first.weights_sha256() == again.weights_sha256() != other.weights_sha256()
    cfg = SearchConfig(dims=(4, 4), ranges=((-0.1, 0.1), (-0.1, 0.1)), iterations=4, seed=0)
    QDSearch(first, cfg, tmp_path / "qd").run(progress=False)
    QDSearch(again, cfg, tmp_path / "qd").run(progress=False)  # equal weights: reloads
    with pytest.raises(ValueError, match=r"different settings \(weights_sha256; .*other "
                                         r"generator or CLIP weights"):
        QDSearch(other, cfg, tmp_path / "qd").run(progress=False)
    # the other ways a function holds a network: a bound method, a callable object, a
    # global name (read when the function is called), through another function
    G = holder["G"]

    class Renderer:
        def __init__(self, net):
            self.net = net

        def __call__(self, z):
            return self.net(z)

    def helper(z):
        return holder_net(z)  # noqa: F821 - a global bound below

    class Pipeline:  # a plain object holding the network, not callable itself
        def __init__(self, net):
            self.net = net

        def generate(self, z):
            return self.net(z)

    pipe, nets, boxed = Pipeline(G), {"G": G}, [G]
    globals().update(holder_net=G, clip=tanh_gan(seed=2))  # `clip`: a global like the guide's
    try:
        for fn in (G.forward, Renderer(G), helper, lambda z: helper(z), pipe.generate,
                   lambda z: pipe.net(z), lambda z: nets["G"](z), lambda z: boxed[0](z),
                   lambda z: holder_net(z).clip(-1, 1),  # noqa: F821 - .clip: an attribute
                   lambda z, net=G: net(z), functools.partial(lambda z, *, net=G: net(z))):
            assert [m is G for m in reachable_modules(fn).values()] == [True], fn
    finally:
        del globals()["holder_net"], globals()["clip"]
    assert reachable_modules(torch.sigmoid) == {}


def test_a_generator_without_gradients_takes_the_gradient_free_searches(tmp_path):
    """A numpy renderer with 8-bit output (no gradients): wrapped with differentiable=False,
    scored without jacobians, searched by CMA-MAE; CMA-MAEGA and jacobians are refused with
    what to use instead, and without the flag the wrapper says to pass it."""
    w = np.random.default_rng(0).normal(size=(4, 3 * 8 * 8))

    def render(z):  # latents -> uint8 images, in numpy
        x = 1 / (1 + np.exp(-(z.cpu().numpy().astype(np.float64) @ w)))
        return (x * 255).round().astype(np.uint8).reshape(-1, 3, 8, 8)

    gen = WrappedGenerator(render, latent_dim=4, output_range=(0, 255), differentiable=False)
    z = gen.sample_prior(5, seed=1)
    img = gen.decode(z)
    assert img.dtype == torch.float32 and not img.requires_grad
    torch.testing.assert_close(img, torch.from_numpy(render(z)).float() / 255)
    assert gen.name.endswith(", differentiable=False)")
    sc = PromptScorer(gen, ToyClip(), ("good", "bad"), [("a", "b"), ("c", "d")],
                      weights=(1.0, 0.5, 0.0))
    with pytest.raises(ValueError, match=r"not differentiable: no jacobians.*cma_mae"):
        sc.evaluate(z.numpy(), jacobian=True)
    with pytest.raises(ValueError, match=r"not differentiable"):
        sc.evaluate_per_output(z.numpy())
    ranges = tuple((float(lo), float(hi)) for lo, hi in zip(
        *np.quantile(sc.measures_of(gen.sample_prior(200, seed=1).numpy()), [0.01, 0.99], 0),
        strict=True))
    cfg = SearchConfig(dims=(6, 6), ranges=ranges, iterations=30, seed=0, batch_size=8,
                       algorithm="cma_mae")
    archive = QDSearch(sc, cfg, tmp_path / "cma_mae").run(progress=False)
    assert archive.stats.num_elites > 1
    # the elites' scores are the scorer's scores of their latents (no gradient involved)
    df = archive_frame(archive)
    np.testing.assert_allclose(measures(df), sc.measures_of(df.filter(like="solution_")
                                                             .to_numpy()), atol=1e-5)
    with pytest.raises(ValueError, match=r"cma_maega follows the gradients.*'cma_mae'"):
        QDSearch(sc, SearchConfig(dims=(6, 6), ranges=ranges), tmp_path / "cma_maega")
    with pytest.raises(TypeError, match=r"got ndarray.*differentiable=False"):
        WrappedGenerator(render, latent_dim=4, output_range=(0, 255))
    with pytest.raises(ValueError, match=r"require gradients.*numpy.*differentiable=False"):
        WrappedGenerator(lambda z: torch.from_numpy(render(z)).float(), latent_dim=4,
                         output_range=(0, 255))
    with pytest.raises(ValueError, match=r"no gradient reaches.*differentiable=False"):
        WrappedGenerator(lambda z: torch.from_numpy(render(z.detach())).float(), latent_dim=4,
                         output_range=(0, 255))
    z.requires_grad_(True)  # decode detaches them for the renderer
    torch.testing.assert_close(gen.decode(z), img)
    with pytest.raises(ValueError, match="differentiable must be True or False"):
        WrappedGenerator(render, latent_dim=4, output_range=(0, 255), differentiable="no")


def test_cuda_graphs_stay_off_for_a_generator_without_gradients():
    """cuda_graphs 'auto' captures CUDA calls, but not a generator without gradients (host
    code a graph cannot capture); True still asks for them."""
    cuda_latents = type("Latents", (), {"is_cuda": True})()
    differentiable = PromptScorer(WrappedGenerator(tanh_gan(), latent_dim=4,
                                                   output_range=(-1, 1)),
                                  ToyClip(), ("good", "bad"), [("a", "b")])
    net = tanh_gan()
    without = PromptScorer(WrappedGenerator(lambda z: net(z), latent_dim=4,
                                            output_range=(-1, 1), differentiable=False),
                           ToyClip(), ("good", "bad"), [("a", "b")])
    assert differentiable._graphs_wanted(cuda_latents)
    assert not without._graphs_wanted(cuda_latents)
    without.cuda_graphs = True
    assert without._graphs_wanted(cuda_latents)
    assert not differentiable._graphs_wanted(torch.zeros(1, 4))  # CPU latents: auto is off


def test_dims_a_generator_without_gradients_ignores_are_found_by_block_swaps():
    """differentiable=False: no gradient shows ignored dims; swapping blocks of dims (7 of
    them, 9-10 dims each for 64) between prior latents does, for 8-bit numpy output too:
    adjacent dead blocks named as one run, a partly used block counted as used. A block the
    prior holds fixed is not judged, and no call is larger than the other checks' 8."""
    w = torch.randn(64, 3 * 8 * 8, generator=torch.Generator().manual_seed(0)).numpy()
    sizes = []

    def render(z, used=slice(0, 64)):
        z = np.array(z)
        sizes.append(len(z))
        z[:, np.setdiff1d(np.arange(64), np.arange(64)[used])] = 0.0
        return (np.tanh(z @ w) * 127 + 128).reshape(-1, 3, 8, 8).astype(np.uint8)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # every dim used: no warning
        WrappedGenerator(render, latent_dim=64, output_range=(0, 255), differentiable=False)
    assert max(sizes) == 8
    with pytest.warns(UserWarning, match=r"at least 18 of the 64 latent dims \(dims 46-63\) "
                                         "change neither .* latent_dim larger"):
        WrappedGenerator(functools.partial(render, used=slice(0, 40)), latent_dim=64,
                         output_range=(0, 255), differentiable=False)
    with pytest.warns(UserWarning, match=r"at least 28 of the 64 latent dims \(dims 0-17, "
                                         r"27-36\) .* leave part of the latent unused"):
        WrappedGenerator(lambda z: render(z, used=[*range(18, 27), *range(37, 64)]),
                         latent_dim=64, output_range=(0, 255), differentiable=False)

    def fixed_tail(n, generator):  # dims 55-63 at their defaults (a camera, say)
        z = torch.randn(n, 64, generator=generator)
        z[:, 55:] = 0.5
        return z

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        WrappedGenerator(render, latent_dim=64, output_range=(0, 255), differentiable=False,
                         prior=fixed_tail)


def test_dead_blocks_are_judged_from_two_latents_with_the_most_different_donor():
    """A block gated off for the first latent but used for the second is not named (both
    latents are asked); a block on which the first two probes nearly agree is judged with the
    probe that differs most there (the second probe's values would leave the image as it was:
    dims 0-8 count only through floor(z0 / 4))."""
    w = torch.randn(64, 3 * 8 * 8, generator=torch.Generator().manual_seed(0)).numpy()

    def gated(z):
        z = np.array(z)
        z[z[:, 63] < 0, :9] = 0.0  # dims 0-8 only where dim 63 is positive
        return (np.tanh(z @ w) * 127 + 128).reshape(-1, 3, 8, 8).astype(np.uint8)

    def gate_off_then_on(n, generator):  # probe 0 gated off, probe 1 on
        z = torch.randn(n, 64, generator=generator)
        z[:, 63] = torch.tensor([-1.0, 1.0]).repeat(n)[:n]
        return z

    def coarse(z):
        z = np.asarray(z)
        x = np.tanh(z[:, 9:] @ w[9:]) * 0.5 + 0.5 * np.floor(z[:, :1] / 4)
        return ((x + 1) * 100).clip(0, 255).reshape(-1, 3, 8, 8).astype(np.uint8)

    def near_twins(n, generator):  # probes 0 and 1 nearly equal on dims 0-8
        z = torch.randn(n, 64, generator=generator)
        z[0, 0] = 0.5
        z[1, :9] = z[0, :9] + 0.15
        z[2:, 0] = -3.0
        return z

    for net, prior in ((gated, gate_off_then_on), (coarse, near_twins)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            WrappedGenerator(net, latent_dim=64, output_range=(0, 255), differentiable=False,
                             prior=prior)
