"""Check this project's code against the paper's released code, which you clone yourself:

    git clone https://github.com/Cylumn/qd-generative-sampling /tmp/qdgs-released
    python scripts/check_against_released.py --released /tmp/qdgs-released [--seeds 6]

(README, "Checked against the reference code", gives what these printed in sessions 17-22.) The
released files are imported from your clone at run time; none of them is copied here. Its
networks run on the CPU (its shapes encoder asks for CUDA at construction; that call is
skipped). Exit status 1 if an equality that should be exact is not.

What is compared, each on the same weights and inputs:
0. The sha256 of its data files against ``paths.RELEASED_SHA256`` (which
   ``python -m qdgs_lib.assets paper --load`` compares a user's copies with).
1. IR-18/50/101 (AdaFace's ``net.py``, the released copy): embeddings and norms in eval and
   training mode, batch-norm statistics; the AdaFace head (``head.py``); four SGD steps with
   AdaFace's optimizer; checkpoints both ways (AdaFace's loading recipe).
2. The released shapes VAE (the real ``vae-shapes.pt``) and shape classifier; its shapes
   datasets, training rotation and JPEG round trip (``shapes_data``, ``image_format``).
3. The objective, measures, jacobians and uniqueness memory of ``PromptScorer`` (paper
   settings) against ``qdgs/discriminator.py``, on a toy generator and toy image embeddings;
   the search's start (``x0="released"``) against its ``find_good_start_latent``;
   CLIP's random crops (``cutout_style="released"``) against ``qdgs/clip.py``'s ``MakeCutouts``.
4. The search loop against ``create_scheduler`` + ``compute_iter``'s steps on the same toy
   scorer: per-step agreement, and statistics over ``--seeds`` seeds.
5. The face alignment (``qdgs_lib.mtcnn``) against AdaFace's ``face_alignment`` (MTCNN, the
   real weights) on the face photos in the released repository: boxes, landmarks and the
   similarity to the bit; aligned faces and the no-face fallback against OpenCV where
   ``opencv-python-headless`` is installed (``pip install --no-deps opencv-python-headless``).
6. CLIP with ``clip_precision`` float16 (what ``"released"`` gives on a GPU) against OpenAI's
   ``clip/model.py`` (``build_model``, which converts the weights as ``clip.load`` does), where
   OpenAI's package is installed (``pip install --no-deps openai-clip``): embeddings of the
   same random ViT-B/32 on the CPU.
7. AdaFace's training augmentations (``augment_style="released"``) against the released
   ``dataset/augmenter.py`` with the same draws, on the face photos above: crop, colour jitter
   (on BGR, in PIL's uint8 arithmetic) and, with OpenCV, the low resolution (cv2.resize).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import shutil
import sys
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the toy CLIP

from toys import ToyClip  # noqa: E402

from qdgs_lib.adaface_format import (  # noqa: E402
    load_adaface_backbone,
    save_adaface_checkpoint,
    to_ours,
)
from qdgs_lib.augment import CV2_INTERPOLATIONS, draw_augmentation, face_augment  # noqa: E402
from qdgs_lib.data.shapes import ReleasedShapesDataset, released_batch_rotation  # noqa: E402
from qdgs_lib.generators.shapes_vae import load_released_shapes_vae  # noqa: E402
from qdgs_lib.generators.wrapped import WrappedGenerator  # noqa: E402
from qdgs_lib.models.heads import AdaFace  # noqa: E402
from qdgs_lib.models.iresnet import build_iresnet  # noqa: E402
from qdgs_lib.models.shape_classifier import ReleasedShapeClassifier  # noqa: E402
from qdgs_lib.mtcnn import cp2tform_similarity, load_mtcnn, resize_bilinear  # noqa: E402
from qdgs_lib.paths import MTCNN_NETS  # noqa: E402
from qdgs_lib.sampling import as_released_jpeg  # noqa: E402
from qdgs_lib.scoring import PromptScorer  # noqa: E402
from qdgs_lib.search import QDSearch, SearchConfig  # noqa: E402
from qdgs_lib.train import sgd_no_bn_decay  # noqa: E402

FACE_ALIGNMENT = "facial_recognition/AdaFace/face_alignment"
FILES = ("facial_recognition/AdaFace/net.py", "facial_recognition/AdaFace/head.py",
         "shapes/generator.py", "shapes/train.py", "shapes/pretrained/vae-shapes.pt",
         "qdgs/discriminator.py", "qdgs/utils.py", f"{FACE_ALIGNMENT}/mtcnn.py",
         *(f"{FACE_ALIGNMENT}/mtcnn_pytorch/src/weights/{n}.npy" for n in MTCNN_NETS),
         "shapes/dataset.py", "facial_recognition/AdaFace/dataset/augmenter.py")
FACE_PROMPTS = ("A detailed photo of an individual with diverse features.",
                "An obscure, fake, or discolored photo of a person.")
MEASURE_PROMPTS = [("A person with dark skin.", "A person with light skin."),
                   ("A person in their 20s.", "A person in their 50s.")]
failures: list[str] = []


def expect(ok: bool, what: str) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def load(root: Path, rel: str, name: str):
    """A released module by file path, under its own name (their ``qdgs/__init__`` would
    import the OpenAI clip package); modules they import that are not needed here are stubs."""
    for stub in ("cv2", "fire", "dataset"):
        sys.modules.setdefault(stub, types.ModuleType(stub))
    sys.modules["dataset"].ShapesDataset = object
    spec = importlib.util.spec_from_file_location(name, root / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def check_recognition(root: Path) -> None:
    print("1. IR-ResNet and AdaFace head vs AdaFace's net.py / head.py")
    net, head = load(root, FILES[0], "released_net"), load(root, FILES[1], "released_head")
    for arch, ours_name in (("ir_18", "ir18"), ("ir_50", "ir50"), ("ir_101", "ir101")):
        torch.manual_seed(0)
        ref = net.build_model(arch)
        with torch.no_grad():  # weights and batch-norm statistics away from their init
            for t in [*ref.parameters(), *(b for b in ref.buffers() if b.is_floating_point())]:
                t.copy_(torch.rand_like(t) * 0.2 + 0.9 if t.ndim == 1
                        else torch.randn_like(t) * t.std().clamp(min=1e-2))
        ours = build_iresnet(ours_name)
        ours.load_state_dict({to_ours(k): v for k, v in ref.state_dict().items()})
        x = torch.randn(4, 3, 112, 112)
        ref.eval(), ours.eval()
        with torch.no_grad():
            same = all(torch.equal(a, b) for a, b in zip(ref(x), ours(x), strict=True))
        ref.train(), ours.train()
        torch.manual_seed(1)
        a = ref(x)
        torch.manual_seed(1)
        b = ours(x)
        same_train = all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
        stats = all(torch.equal(v, ours.state_dict()[to_ours(k)])
                    for k, v in ref.state_dict().items())
        expect(same and same_train and stats, f"{arch}: embeddings and norms bitwise equal "
               "(eval; training with dropout under one seed), batch-norm statistics too")
    torch.manual_seed(0)
    ref_head = head.AdaFace(512, 50, m=0.4, h=0.333, s=64.0, t_alpha=0.01)
    our_head = AdaFace(512, 50, m=0.4, h=0.333, s=64.0, t_alpha=0.01)
    with torch.no_grad():
        our_head.kernel.copy_(ref_head.kernel)
    same = True
    for _ in range(5):
        emb = torch.nn.functional.normalize(torch.randn(32, 512), dim=1)
        norms, labels = torch.rand(32, 1) * 40 + 5, torch.randint(0, 50, (32,))
        same &= torch.equal(ref_head(emb, norms, labels), our_head(emb, norms, labels))
        same &= float(ref_head.batch_mean) == float(our_head.batch_mean)
    expect(same, "AdaFace head: five steps, logits and norm statistics bitwise equal")

    torch.manual_seed(0)
    ref, ours = net.build_model("ir_18"), build_iresnet("ir18")
    ours.load_state_dict({to_ours(k): v for k, v in ref.state_dict().items()})
    ref_head, our_head = head.AdaFace(512, 20, m=0.4, h=0.333, s=64.0, t_alpha=0.01), \
        AdaFace(512, 20)
    with torch.no_grad():
        our_head.kernel.copy_(ref_head.kernel)
    decay, no_decay = [], []  # AdaFace's Trainer.split_parameters
    for m in ref.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            no_decay += list(m.parameters())
        elif not list(m.children()):
            decay += list(m.parameters())
    opt_ref = torch.optim.SGD([{"params": decay + [ref_head.kernel], "weight_decay": 5e-4},
                               {"params": no_decay}], lr=0.01, momentum=0.9)
    opt = sgd_no_bn_decay([ours, our_head], 0.01)
    ce = torch.nn.CrossEntropyLoss()
    worst = 0.0
    for step in range(4):
        x, y = torch.randn(8, 3, 112, 112), torch.randint(0, 20, (8,))
        losses = []
        for model, hd, o in ((ref, ref_head, opt_ref), (ours, our_head, opt)):
            torch.manual_seed(100 + step)
            e, n = model(x)
            loss = ce(hd(e, n, y.clone()), y)
            o.zero_grad()
            loss.backward()
            o.step()
            losses.append(float(loss))
        worst = max(worst, abs(losses[0] - losses[1]), *(
            float((v - ours.state_dict()[to_ours(k)]).abs().max())
            for k, v in ref.state_dict().items() if v.is_floating_point()))
    expect(worst == 0.0, f"four SGD steps of IR-18 + head: losses and weights max|d| {worst}")

    with tempfile.TemporaryDirectory() as tmp:
        ref = net.build_model("ir_50").eval()
        path = Path(tmp) / "ours.ckpt"
        save_adaface_checkpoint(load_via_lightning_file(ref, Path(tmp)), path)
        again = net.build_model("ir_50")
        state = torch.load(path, weights_only=True)["state_dict"]  # AdaFace's recipe
        again.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        again.eval()
        x = torch.randn(2, 3, 112, 112)
        with torch.no_grad():
            same = all(torch.equal(a, b) for a, b in zip(ref(x), again(x), strict=True))
        expect(same, "IR-50 through a Lightning-style file, load_adaface_backbone, "
               "save_adaface_checkpoint and AdaFace's loader: outputs bitwise equal")


def load_via_lightning_file(ref: torch.nn.Module, tmp: Path) -> torch.nn.Module:
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()},
                "hyper_parameters": {"arch": "ir_50"}}, tmp / "last.ckpt")
    return load_adaface_backbone(tmp / "last.ckpt")


@contextlib.contextmanager
def no_cuda_calls():
    """The released shapes encoder moves a Normal's parameters to CUDA when it is built."""
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda


def check_file_hashes(root: Path) -> None:
    print("0. The released data files' sha256 vs qdgs_lib.paths.RELEASED_SHA256")
    from qdgs_lib.paths import RELEASED_SHA256
    from qdgs_lib.utils import sha256_file

    where = {"vae-shapes.pt": "shapes/pretrained", "augmentations.pt":
             "facial_recognition/pretrained",
             **{f"{n}.npy": f"{FACE_ALIGNMENT}/mtcnn_pytorch/src/weights" for n in MTCNN_NETS}}
    for name, sha in RELEASED_SHA256.items():
        path = root / where[name] / name
        expect(path.is_file() and sha256_file(path) == sha, f"{name}: sha256 {sha[:12]}...")


def check_shapes(root: Path) -> None:
    print("2. Released shapes VAE and classifier vs shapes/generator.py, shapes/train.py")
    gen = load(root, FILES[2], "released_generator")
    train = load(root, FILES[3], "released_train")
    weights = root / FILES[4]
    with no_cuda_calls():
        ref = gen.VariationalAutoencoder(6)
    ref.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    ref.eval()
    ours = load_released_shapes_vae(weights, device="cpu")
    z = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref.decoder(z), ours.decode(z)
        e = ref.encoder
        h = e.conv3(torch.relu(e.conv2(torch.relu(e.conv1(b[:8]))))).relu().flatten(1)
        mu, logvar = ours.encode(b[:8])
    expect(torch.equal(a, b), "VAE: 64 prior decodes bitwise equal (the real vae-shapes.pt)")
    expect(torch.equal(e.fc_mu(h), mu) and torch.equal(e.fc_logvar(h), logvar),
           "VAE encoder: means and log-variances bitwise equal")
    torch.manual_seed(1)
    ref_c = train.ShapeClassifier()
    ours_c = ReleasedShapeClassifier(128)
    ours_c.load_state_dict(ref_c.state_dict())
    x = torch.rand(16, 3, 128, 128)
    with torch.no_grad():
        same = torch.equal(torch.sigmoid(ours_c(x)[:, 1]), ref_c(x)[:, 0])
    torch.manual_seed(7)
    init_ref = train.ShapeClassifier().state_dict()
    torch.manual_seed(7)
    init = ReleasedShapeClassifier(128).state_dict()
    expect(same, "classifier: sigmoid of our z bitwise equal to the released output")
    expect(all(torch.equal(init_ref[k], init[k]) for k in init),
           "classifier: the same initial weights under one seed")
    check_shapes_data(root)


def check_shapes_data(root: Path) -> None:
    """``shapes_data: "released"`` vs shapes/dataset.py's stored sets (``stable=path``: its
    items drawn in order from torch's global generator) and the training's batch rotation;
    ``image_format: "jpg"`` vs writing JPEG files and reading them with ImageFolder."""
    import torchvision

    released = load(root, "shapes/dataset.py", "released_dataset")
    same = total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for n, bias, seed in ((100, 0.98, 0), (100, 0.9, 1), (100, 0.8, 2), (200, 0.5, 3)):
            torch.manual_seed(seed)
            ref = released.ShapesDataset(size=n, color_bias=bias, stable=f"{tmp}/{seed}.pt")
            ours = ReleasedShapesDataset(n, bias, seed=seed)
            labels = torch.tensor([ref[i][1] for i in range(n)])
            same += torch.equal(ref.samples, ours.images) and torch.equal(labels, ours.labels)
            total += 1
        expect(same == total, f"shapes data (\"released\"): images and labels bitwise equal to "
                              f"its stored sets in {same} of {total} (biases 0.98/0.9/0.8/0.5)")
        x = ours.images[:32]
        torch.manual_seed(5)
        want = torchvision.transforms.RandomRotation(180)(x)
        torch.manual_seed(5)
        expect(torch.equal(released_batch_rotation(x), want),
               "training batch rotation bitwise equal to RandomRotation(180) on the batch")
        vae = load_released_shapes_vae(root / FILES[4], device="cpu")
        with torch.no_grad():
            images = vae.decode(vae.sample_prior(24, seed=0))
        for i, img in enumerate(images):  # the released write_data's lines
            folder = Path(tmp) / "jpg" / str(i % 2)
            folder.mkdir(parents=True, exist_ok=True)
            img = img.clamp(0, 1).mul(255).permute(1, 2, 0).numpy().astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:03d}.jpg")
        read = torchvision.datasets.ImageFolder(Path(tmp) / "jpg",
                                                transform=torchvision.transforms.ToTensor())
        order = [int(Path(f).stem) for f, _ in read.samples]
        theirs = torch.stack([read[k][0] for k in range(len(read))])
        expect(torch.equal(as_released_jpeg(images)[order], theirs),
               "synthetic shapes through JPEG (image_format \"jpg\"): bitwise equal to the "
               "released files as ImageFolder reads them (24 prior draws of vae-shapes.pt)")


class ToyWorld:
    """One toy generator and toy CLIP, seen by both codes."""

    def __init__(self, dim: int = 24, measure_scale: float = 1.0):
        g = torch.Generator().manual_seed(0)
        self.dim, self.scale = dim, measure_scale
        self.W = torch.randn(dim, 3 * 8 * 8, generator=g) / dim**0.5
        self.clip = ToyClip()
        self.gen = WrappedGenerator(self.G, latent_dim=dim)

    def G(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z @ self.W).view(-1, 3, 8, 8)

    def ours(self, weights=(1.0, 0.5, 0.2)) -> PromptScorer:
        scorer = PromptScorer(self.gen, self.clip, FACE_PROMPTS, MEASURE_PROMPTS,
                              weights=weights, latent_norm_scale=0.5, objective_floor=False,
                              uniqueness_fill_scale=True)
        if self.scale != 1.0:
            evaluate, k = scorer.evaluate, self.scale

            def scaled(z, *a, **kw):
                s = evaluate(z, *a, **kw)
                jac = None if s.jacobian is None else np.concatenate(
                    [s.jacobian[:, :1], k * s.jacobian[:, 1:]], 1)
                return dataclasses.replace(s, measures=k * s.measures, jacobian=jac)
            scorer.evaluate = scaled
        return scorer

    def released(self, disc_module, weights=(1.0, 0.5, 0.2)):
        """The released Discriminator over the same toy parts; its measures negated (ours
        are positive toward the first prompt) and scaled like ours."""
        world = self

        class Backbone:
            q_norm = torch.tensor(0.5 * float(world.gen.latent_norm))

        class Gen:
            backbone = Backbone()

            def synthesis(self, sols):
                out = [s.view(-1, world.dim) if torch.is_tensor(sols) else
                       torch.tensor(s.reshape(-1, world.dim), dtype=torch.float,
                                    requires_grad=True) for s in sols]
                return world.G(torch.cat(out)), out

        class Clip:
            def embed_text(self, text):
                return world.clip.encode_text([text])

            def embed_image(self, images):
                return world.clip.encode_image(images)[None]  # one "cutout": the image

        disc = disc_module.Discriminator("facial_recognition", FACE_PROMPTS, MEASURE_PROMPTS,
                                         Gen(), Clip(), "cpu")
        disc.objective_weights = list(weights)
        k = -self.scale
        compute_all, compute_measures = disc.compute_all, disc.compute_measures
        disc.compute_all = lambda sols, use_grad: (lambda o, m: (o, k * m))(
            *compute_all(sols, use_grad))
        disc.compute_measures = lambda sols: (lambda v, j: (k * v, k * j))(
            *compute_measures(sols))
        return disc


def check_scoring(root: Path) -> None:
    print("3. PromptScorer (paper settings) vs qdgs/discriminator.py, toy generator and CLIP")
    world = ToyWorld()
    disc, ours = world.released(load(root, FILES[5], "released_discriminator")), world.ours()
    rng = np.random.default_rng(0)
    obj = meas = 0.0
    same_memory = True
    for _ in range(120):  # batches of 1: the memory's random choice is then the same
        z = rng.normal(size=(1, world.dim)) * rng.choice([0.02, 0.3, 1.0])
        o, m = disc.compute_all(z, use_grad=False)
        s = ours.evaluate(z)
        obj = max(obj, abs(float(o[0]) - s.objective[0]))
        meas = max(meas, float(np.abs(m.detach().numpy()[0] - s.measures[0]).max()))
        same_memory &= len(disc.archive_memory) == len(ours.memory)
    cos = 1.0
    for _ in range(10):
        z = rng.normal(size=(1, world.dim)) * 0.3
        _, jo = disc.compute_objective(z)
        _, jm = disc.compute_measures(z)
        s = ours.evaluate(z, jacobian=True)
        for a, b in zip(np.concatenate([jo[None], jm]), s.jacobian[0], strict=True):
            cos = min(cos, float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    expect(obj < 1e-4, f"objectives max|d| {obj:.3g} over 120 calls (float32 near 100)")
    expect(meas < 1e-5, f"measures max|d| {meas:.3g}")
    expect(same_memory, f"uniqueness memory the same length after every call "
           f"({len(ours.memory)} at the end)")
    expect(cos > 1 - 1e-5, f"jacobian directions at the gradient point: min cosine {cos:.7f}")
    check_start()
    check_cutouts(root)


def check_start() -> None:
    """``x0="released"`` vs the released ``find_good_start_latent(32)`` on the same 512 draws
    (handed to it in batches of 16 as its ``randn`` would draw them). With the uniqueness
    weight on, each batch may remember one of its draws whose loss is below 1, at random
    (Python's ``random`` there, the scorer's seeded stream here): both take the first such
    draw in this check, so that the memories and the later batches' losses can agree."""
    disc_module = sys.modules["released_discriminator"]
    world = ToyWorld()
    same = remembered = 0
    weights = ((1.0, 0.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.5, 0.2), (1.0, 0.0, 0.2))
    first = types.SimpleNamespace(sample=lambda population, k: list(population))
    released_random, disc_module.random = disc_module.random, first
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for seed in range(4):
                for w in weights:
                    disc, ours = world.released(disc_module, w), world.ours(w)
                    ours._rng = types.SimpleNamespace(choice=lambda good: good[0])
                    draws = world.gen.sample_prior(512, seed=seed)  # what ours draws
                    batches = iter(draws.split(16))
                    disc.gen_model.randn = lambda n, b=batches: next(b)
                    theirs = disc.find_good_start_latent(num_batches=32).numpy()
                    cfg = SearchConfig(dims=(10, 10), ranges=((-0.1, 0.1),) * 2,
                                       x0="released", x0_samples=512, seed=seed)
                    mine = QDSearch(ours, cfg, Path(tmp) / f"{seed}").start_latent()
                    memory = torch.cat([m.view(1, -1) for m in disc.archive_memory]) \
                        if disc.archive_memory else ours.memory[:0]
                    remembered = max(remembered, len(memory))
                    same += np.array_equal(mine, theirs.astype(np.float64)) and \
                        memory.shape == ours.memory.shape and \
                        torch.allclose(memory, ours.memory, atol=1e-6)
    finally:
        disc_module.random = released_random
    expect(same == 4 * len(weights),
           f"start (x0 \"released\") vs find_good_start_latent(32): the same latent and "
           f"remembered embeddings in {same} of {4 * len(weights)} (4 seeds x weights "
           f"{weights}; up to {remembered} remembered)")


def load_released_clip(root: Path):
    """The released ``qdgs/clip.py`` (its MakeCutouts and CLIP class; OpenAI's package and
    einops, which it imports, are not needed for what is compared)."""
    if "released_clip" in sys.modules:
        return sys.modules["released_clip"]
    sys.modules.setdefault("clip", types.ModuleType("clip"))
    if importlib.util.find_spec("einops") is None:
        sys.modules["einops"] = types.SimpleNamespace(rearrange=None)
    return load(root, "qdgs/clip.py", "released_clip")


def check_cutouts(root: Path) -> None:
    """CLIP's input under cutout_style "released" vs the released MakeCutouts(224, n, 0.5),
    both drawing from torch's global generator under the same seed."""
    from qdgs_lib.clip import Clip

    released = load_released_clip(root)
    same = total = 0
    for n, shape in ((1, (4, 3, 256, 256)), (3, (2, 3, 256, 256)), (1, (3, 3, 128, 128)),
                     (2, (2, 3, 300, 240))):
        ours = Clip(torch.nn.Identity(), None, 224, num_cutouts=n, cutout_style="released")
        make = released.MakeCutouts(224, n, 0.5)
        for seed in range(25):
            x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
            torch.manual_seed(seed)
            want = (make(x) - ours.mean) / ours.std
            torch.manual_seed(seed)
            same += torch.equal(ours._cutouts(x, None), want)
            total += 1
    expect(same == total, f"CLIP cutouts (cutout_style \"released\") vs MakeCutouts(224, n, 0.5): "
                          f"bitwise equal in {same} of {total} draws (256, 128 and 300 x 240 px)")
    whole = Clip(torch.nn.Identity(), None, 224, num_cutouts=0, cutout_style="released")
    same = 0
    for seed in range(25):  # the paper profiles' setting: no draw, the 128 px shapes whole
        x = torch.rand(3, 3, 128, 128, generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        same += torch.equal(whole.preprocess(x), (released.MakeCutouts(224, 1, 0.5)(x)
                                                  - whole.mean) / whole.std)
    expect(same == 25, f"CLIP input without cutouts (cutout_style \"released\") vs "
                       f"MakeCutouts(224, 1, 0.5) of 128 px shapes: bitwise equal in {same} of 25")


def run_released(utils_module, disc, x0: np.ndarray, seed: int, iterations: int, log=None):
    """generate_data.compute_iter's steps, without its writer."""
    disc.find_good_start_latent = lambda num_batches: torch.tensor(x0)
    sched, passive = utils_module.create_scheduler("cma_maega", disc, [10, 10], batch_size=4,
                                                   seed=seed)
    f32 = np.float32
    for _ in range(iterations):
        sols = sched.ask_dqd()
        if log is not None:
            log.append(np.array(sols))
        objs, jo = disc.compute_objective(sols)
        objs = objs.cpu().detach().numpy()
        measures, jm = disc.compute_measures(sols)
        measures = np.transpose(measures)
        jac = np.concatenate((jo[None], jm), 0)[None]
        sched.tell_dqd(objs.astype(f32), measures.astype(f32), jac.astype(f32))
        passive.add(sols, objs.astype(f32), measures.astype(f32))
        sols = sched.ask()
        if log is not None:
            log.append(np.array(sols))
        o, m = disc.compute_all(sols, use_grad=False)
        sched.tell(o.detach().numpy(), m.detach().numpy())
        passive.add(sols, o.detach().numpy(), m.detach().numpy())
    return passive


def run_ours(world: ToyWorld, x0: np.ndarray, seed: int, iterations: int, outdir: Path,
             log=None):
    scorer = world.ours(weights=(1.0, 0.5, 0.0))
    if log is not None:
        evaluate = scorer.evaluate

        def logged(z, *a, **kw):
            log.append(np.array(z))
            return evaluate(z, *a, **kw)
        scorer.evaluate = logged
    cfg = SearchConfig(dims=(10, 10), ranges=((-0.1, 0.1),) * 2, iterations=iterations,
                       batch_size=3, selection_rule="filter", seed=seed,
                       checkpoint_every=10**6)
    search = QDSearch(scorer, cfg, outdir)
    search.start_latent = lambda: x0.copy()
    return search.run(progress=False)


def check_search(root: Path, seeds: int) -> None:
    print("4. QDSearch (paper settings) vs create_scheduler + compute_iter, toy scorer, "
          "uniqueness weight 0")
    utils_module = load(root, FILES[6], "released_utils")
    disc_module = sys.modules["released_discriminator"]
    world = ToyWorld(measure_scale=0.15)  # the released ranges are +-0.1
    with tempfile.TemporaryDirectory() as tmp:
        x0 = np.random.default_rng(1).normal(size=world.dim) * 0.5
        theirs, mine = [], []
        run_released(utils_module, world.released(disc_module, (1.0, 0.5, 0.0)), x0, 0, 40,
                     theirs)
        run_ours(world, x0, 0, 40, Path(tmp) / "steps", mine)
        apart = [float(np.abs(a - b).max()) for a, b in zip(theirs, mine, strict=True)]
        first = next((i for i, d in enumerate(apart) if d > 1e-5), None)
        upto = len(apart) if first is None else first
        print(f"  the first {upto // 2} iterations ask the same solutions within "
              f"{max(apart[:upto]):.2g}" + ("" if first is None else
                                             f"; iteration {first // 2} differs by "
                                             f"{apart[first]:.2g}"))
        expect(upto // 2 >= 15, "at least 15 iterations alike to float32 rounding (1e-5)")
        rows = []
        for seed in range(seeds):
            x0 = np.random.default_rng(100 + seed).normal(size=world.dim) * 0.5
            a = run_released(utils_module, world.released(disc_module, (1.0, 0.5, 0.0)), x0,
                             seed, 300)
            b = run_ours(world, x0, seed, 300, Path(tmp) / f"seed{seed}")
            rows.append([len(a), len(b), a.stats.obj_max, b.stats.obj_max])
            shutil.rmtree(Path(tmp) / f"seed{seed}", ignore_errors=True)
        r = np.array(rows, dtype=float)
        if seeds:
            print(f"  {seeds} seeds x 300 iterations: filled cells released "
                  f"{r[:, 0].mean():.1f} +- {r[:, 0].std(ddof=1) if seeds > 1 else 0:.1f}, "
                  f"ours {r[:, 1].mean():.1f} +- {r[:, 1].std(ddof=1) if seeds > 1 else 0:.1f}"
                  f"; best objective released {r[:, 2].mean():.1f}, ours {r[:, 3].mean():.1f}")


def face_photos(root: Path) -> list[Path]:
    """The face photos in the released copy of AdaFace's face_alignment (11)."""
    folder = root / FACE_ALIGNMENT
    return sorted((folder / "test_images").glob("*.jp*g")) + sorted(
        (folder / "mtcnn_pytorch" / "images").glob("*.[jp][pn]g"))


def check_alignment(root: Path, cv2) -> None:
    print("5. Face alignment (qdgs_lib.mtcnn) vs AdaFace's face_alignment, real MTCNN weights")
    from PIL import Image

    folder = root / FACE_ALIGNMENT
    released = load(root, f"{FACE_ALIGNMENT}/mtcnn.py", "released_mtcnn")
    theirs = released.MTCNN(device="cpu", crop_size=(112, 112))
    # (their mtcnn.py put its folder on sys.path)
    fit = importlib.import_module("mtcnn_pytorch.src.matlab_cp2tform")
    ours = load_mtcnn(folder / "mtcnn_pytorch" / "src" / "weights")
    photos = face_photos(root)
    n = found = exact = fits = 0
    warp_diff = resize_diff = 0
    for path in photos:
        photo = Image.open(path).convert("RGB")
        # as found, and at 256 x 256 as the released code aligns its faces
        for img in (photo, photo.resize((256, 256), Image.BILINEAR)):
            n += 1
            boxes, marks = theirs.detect_faces(img, theirs.min_face_size, theirs.thresholds,
                                               theirs.nms_thresholds, theirs.factor)
            our_boxes, our_marks = ours.detect(img)
            boxes, marks = np.asarray(boxes).reshape(-1, 5), np.asarray(marks).reshape(-1, 10)
            exact += np.array_equal(boxes, our_boxes) and np.array_equal(marks, our_marks)
            pixels = np.array(img)
            if len(marks):
                found += 1
                points = [[marks[0][j], marks[0][j + 5]] for j in range(5)]
                matrix = fit.get_similarity_transform_for_cv2(
                    np.float32(points), np.float32(theirs.refrence))
                fits += np.array_equal(matrix, cp2tform_similarity(
                    np.stack([our_marks[0][:5], our_marks[0][5:]], 1), ours.reference))
            if cv2 is not None:
                face = ours.align(pixels)[0].astype(int)
                if len(marks):
                    want = np.array(theirs.align_multi(img, limit=1)[1][0])
                    warp_diff = max(warp_diff, np.abs(want.astype(int) - face).max())
                else:  # their get_aligned_face's fallback
                    want = cv2.resize(pixels, (112, 112))
                    resize_diff = max(resize_diff, np.abs(want.astype(int) - face).max())
                # the fallback on every photo, found or not
                full = cv2.resize(pixels, (112, 112)).astype(int) - resize_bilinear(
                    pixels, (112, 112)).astype(int)
                resize_diff = max(resize_diff, np.abs(full).max())
    print(f"  {len(photos)} photos, as found and at 256 px: a face in {found} of {n} images")
    expect(exact == n, f"boxes and landmarks identical in {exact} of {n} images")
    expect(fits == found, f"the similarity (cp2tform, reflection test) identical in {fits} of "
                          f"{found}")
    if cv2 is None:
        print("  (aligned faces not compared: needs OpenCV, "
              "`pip install --no-deps opencv-python-headless`)")
        return
    expect(warp_diff <= 1, f"aligned faces vs cv2.warpAffine (OpenCV {cv2.__version__}): "
                           f"at most {warp_diff} gray level apart")
    expect(resize_diff <= 1, f"the no-face fallback vs cv2.resize: at most {resize_diff} gray "
                             "level apart")


def check_augmentations(root: Path, cv2) -> None:
    print("7. AdaFace's augmentations (augment_style \"released\") vs the released Augmenter")

    released = load(root, "facial_recognition/AdaFace/dataset/augmenter.py",
                    "released_augmenter")
    codes = None if cv2 is None else dict(zip(CV2_INTERPOLATIONS, (
        cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC,
        cv2.INTER_LANCZOS4), strict=True))
    photos = face_photos(root)
    faces = np.stack([np.array(Image.open(f).convert("RGB").resize((112, 112),
                                                                   Image.BILINEAR))
                      for f in photos])  # RGB, as a dataset's loader reads them
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    g = torch.Generator().manual_seed(0)
    equal = n = 0
    worst = {"none": 0, "low_res": 0, "low_res+jitter": 0}  # where cv2 ran, and after it
    count = dict.fromkeys(worst, 0)
    mean_diff = []  # per image where cv2 ran
    p = (0.5, 0.0, 0.5) if cv2 is None else 0.5
    for _ in range(30):
        state = g.get_state()
        ours = face_augment(x, g, p=p, flip=False, style="released")
        ours = (ours * 255).round().permute(0, 2, 3, 1).to(torch.uint8).numpy()
        g.set_state(state)  # replay face_augment's draws for the released Augmenter
        apply = torch.rand(len(x), 3, generator=g) < torch.as_tensor(p, dtype=torch.float32)
        torch.rand(len(x), generator=g)  # (the flips)
        for i, face in enumerate(faces):
            draws = (None, None, None)
            if apply[i].any():
                draws = draw_augmentation(apply[i].tolist(), 112, 112, g)
            want = released_augment(released, face, draws, codes)
            n += 1
            equal += np.array_equal(want, ours[i])
            kind = "none" if draws[1] is None else \
                "low_res" if draws[2] is None else "low_res+jitter"
            diff = np.abs(want.astype(int) - ours[i].astype(int))
            worst[kind] = max(worst[kind], int(diff.max()))
            count[kind] += 1
            if kind != "none":
                mean_diff.append(diff.mean())
    print(f"  {len(photos)} face photos at 112 px, 30 batches, each augmentation at p = 0.5"
          + (" (low resolution off: needs OpenCV)" if cv2 is None else ""))
    expect(worst["none"] == 0, f"without the low resolution, bitwise equal (crop, colour "
                               f"jitter on BGR in PIL's uint8 arithmetic): {count['none']} "
                               "images")
    print(f"  bitwise equal in {equal} of {n}")
    if cv2 is None:
        return
    # cv2 rounds in fixed point: each resize within 1 level (2 after both), which the jitter's
    # three factors (up to 1.5 each) may amplify to 2 x 1.5**3
    expect(worst["low_res"] <= 2, f"the low resolution (cv2's five interpolations, OpenCV "
                                  f"{cv2.__version__}): at most {worst['low_res']} gray levels "
                                  f"apart ({count['low_res']} images)")
    expect(worst["low_res+jitter"] <= 6, f"then the colour jitter: at most "
                                         f"{worst['low_res+jitter']} apart "
                                         f"({count['low_res+jitter']} images)")
    expect(max(mean_diff) < 0.5, f"where cv2 ran, the mean difference per image at most "
                                 f"{max(mean_diff):.3f} gray levels (median "
                                 f"{np.median(mean_diff):.3f})")


def released_augment(released, face: np.ndarray, draws: tuple, codes) -> np.ndarray:
    """The released ``Augmenter.augment`` of one RGB face as its datasets hand it over (BGR
    in a PIL image), with our draws patched in; RGB out."""
    from unittest import mock

    crop, low_res, jitter = draws
    aug = released.Augmenter(float(crop is not None), float(jitter is not None),
                             float(low_res is not None))
    if crop is not None:
        aug.random_resized_crop.get_params = lambda img, scale, ratio: crop
    if jitter is not None:
        order, (fb, fc, fs) = jitter
        aug.photometric.get_params = lambda *a: (torch.tensor(order), fb, fc, fs, None)
    uniform, choice = np.random.uniform, np.random.choice
    if low_res is not None:
        side, down, up = low_res
        picks = iter((codes[down], codes[up]))
        uniform = lambda lo, hi: (side + 0.5) / len(face)  # noqa: E731 (int(r * 112) = side)
        choice = lambda options: next(picks)  # noqa: E731
    with mock.patch.object(np.random, "uniform", uniform), \
            mock.patch.object(np.random, "choice", choice):
        out = aug.augment(Image.fromarray(np.ascontiguousarray(face[:, :, ::-1])))
    return np.asarray(out)[:, :, ::-1]


def openai_clip_model_file() -> Path | None:
    """OpenAI's ``clip/model.py`` where its package is installed (found, not imported: its
    ``__init__`` pulls in more than this check needs)."""
    spec = importlib.util.find_spec("clip")
    places = list(spec.submodule_search_locations or []) if spec else []
    files = [Path(place) / "model.py" for place in places]
    return next((f for f in files if f.is_file() and "def convert_weights" in f.read_text()),
                None)


def check_clip_precision(root: Path, model_file: Path | None) -> None:
    print("6. CLIP in half precision (clip_precision \"released\" on a GPU) vs OpenAI's "
          "clip/model.py")
    if model_file is None:
        print("  (skipped: needs OpenAI's clip package, `pip install --no-deps openai-clip`)")
        return
    from qdgs_lib.clip import create_clip

    spec = importlib.util.spec_from_file_location("openai_clip_model", model_file)
    openai = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(openai)
    released = load_released_clip(root)
    torch.manual_seed(0)
    full = create_clip("ViT-B-32-quickgelu", pretrained=False, device="cpu")
    state = {k: v.clone() for k, v in full.model.state_dict().items()}
    ours = create_clip("ViT-B-32-quickgelu", pretrained=False, device="cpu", num_cutouts=1,
                       cutout_style="released", precision="float16")
    ours.model.load_state_dict(state)
    # what the released CLIP class holds after clip.load on a GPU: build_model converts the
    # weights to float16 (its __init__ would download them; the same random ones here)
    theirs = released.CLIP.__new__(released.CLIP)
    theirs.device, theirs.make_cutouts = "cpu", released.MakeCutouts(224, 1, 0.5)
    theirs.model = openai.build_model(dict(state)).requires_grad_(False)
    theirs.normalize = lambda x: (x - ours.mean) / ours.std  # transforms.Normalize's numbers
    raw = same_text = 0
    unit = 0.0
    for seed in range(4):
        x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(seed))
        x.requires_grad_(True)  # as in the jacobian passes (see below for values only)
        torch.manual_seed(seed)
        want = theirs.model.encode_image(theirs.normalize(theirs.make_cutouts(x)))
        torch.manual_seed(seed)
        got = ours.encode_image(x, normalize=False, check=False)
        raw += torch.equal(got, want)
        torch.manual_seed(seed)
        unit = max(unit, float((ours.encode_image(x.detach(), check=False).float()
                                - want.detach().float() / want.detach().float().norm(
                                    dim=-1, keepdim=True)).abs().max()))
    tokens = ours.tokenizer(list(FACE_PROMPTS) + [p for pair in MEASURE_PROMPTS for p in pair])
    with torch.no_grad():
        same_text = torch.equal(theirs.model.encode_text(tokens).float(),
                                ours.model.encode_text(tokens).float())
    expect(theirs.model.visual.conv1.weight.dtype == ours.weights_dtype == torch.float16,
           "both towers in float16 (convolutions, linear layers, attention, projections)")
    expect(raw == 4, f"image embeddings through the released crop, with gradients: bitwise "
                     f"equal in {raw} of 4 (ViT-B/32, random weights, on the CPU)")
    expect(same_text, "text embeddings of the paper's 6 prompts bitwise equal")
    print(f"  without gradients (values only), unit embeddings within {unit:.2g}: open_clip's "
          "batch-first attention takes torch's fused inference path there")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--released", required=True, type=Path,
                    help="a clone of github.com/Cylumn/qd-generative-sampling")
    ap.add_argument("--seeds", type=int, default=6, help="seeds of the search statistics")
    args = ap.parse_args(argv)
    missing = [f for f in FILES if not (args.released / f).is_file()]
    if missing:
        ap.error(f"{args.released} lacks {missing}: give a clone of "
                 "https://github.com/Cylumn/qd-generative-sampling (with its "
                 "shapes/pretrained/vae-shapes.pt)")
    warnings.filterwarnings("ignore")
    try:  # before load() stubs it: the alignment's images are compared with OpenCV's
        import cv2
    except ImportError:
        cv2 = None
    openai_model = openai_clip_model_file()  # before load() stubs the name "clip"
    check_file_hashes(args.released)
    check_recognition(args.released)
    check_shapes(args.released)
    check_scoring(args.released)
    check_search(args.released, args.seeds)
    check_alignment(args.released, cv2)
    check_clip_precision(args.released, openai_model)
    check_augmentations(args.released, cv2)
    print("all checks passed" if not failures else f"{len(failures)} FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
