"""Train one of the project's small CLIPs (open_clip architecture, JSON config) on captioned
renders, with a multi-positive contrastive loss (see qdgs_lib/data/captions.py).

    python scripts/train_clip.py --model qdgs-shapes-clip --steps 2500 --batch 64 \
        --vae-frac 0.6 --flips
    python scripts/train_clip.py --model qdgs-faces-clip --steps 2000 --batch 64

(the commands that trained the shipped weights: ``qdgs_lib.clip.OWN_MODELS_REBUILD``).

Shapes: ``--vae-frac`` of every batch are decodes of the shapes VAE across its prior, captioned
from their pixels' color and the shipped shapes oracle (qdgs_lib/shapes_oracle.py; no shape
where its members disagree), so the CLIP also reads the softer images the search scores.
"""

from __future__ import annotations

import argparse
import random

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from qdgs_lib.clip import OWN_MODELS, Clip, register_configs
from qdgs_lib.data.captions import (
    FACE_CAPTIONS,
    SHAPE_CAPTIONS,
    color_name,
    faces_batch,
    match_matrix,
    shapes_batch,
    true_captions,
)
from qdgs_lib.paths import weights_dir
from qdgs_lib.utils import (
    StepCheckpoint,
    atomic_path,
    seed_everything,
    sha256_file,
    write_weights_record,
)

WORLDS = {"qdgs-shapes-clip": (shapes_batch, SHAPE_CAPTIONS),
          "qdgs-faces-clip": (faces_batch, FACE_CAPTIONS)}


def blur_some(x: torch.Tensor, g: torch.Generator, p: float = 0.3) -> torch.Tensor:
    """Blur a random subset: generator samples (VAE decodes) are softer than renders."""
    from torchvision.transforms.v2.functional import gaussian_blur

    mask = torch.rand(len(x), generator=g) < p
    if mask.any():
        x = x.clone()
        x[mask] = gaussian_blur(x[mask], kernel_size=9, sigma=2.0)
    return x


def flip_some(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal/vertical flips: color and number of sides do not change."""
    for dim in (2, 3):
        mask = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(dim), x)
    return x


def vae_batch_fn(frac: float):
    """Shapes batches where ``frac`` of the images are VAE prior decodes (latents at a random
    scale 0.7..1.3 of the prior), captioned by pixel color and the shipped shapes oracle's
    shape; decodes the oracle's members do not label unanimously (between a triangle and a
    square) get no shape, so no shape caption is true for them."""
    from qdgs_lib.generators.shapes_vae import load_shapes_vae
    from qdgs_lib.shapes_oracle import load_shapes_oracle
    from qdgs_lib.shapes_poc import pixel_color

    vae = load_shapes_vae(device="cpu")
    oracle = load_shapes_oracle(device="cpu")

    def batch(n: int, g: torch.Generator):
        n_vae = int(round(n * frac))
        images, attrs = shapes_batch(n - n_vae, g)
        if n_vae == 0:
            return images, attrs
        scale = 0.7 + 0.6 * torch.rand(n_vae, 1, generator=g)
        z = torch.randn(n_vae, vae.latent_dim, generator=g) * scale
        with torch.no_grad():
            dec = vae.decode(z)
        shape, unanimous, _ = oracle.labels(dec)
        color = pixel_color(dec)
        extra = [{"kind": "shape", "color": color_name(float(c)),
                  **({"sides": "4" if s else "3"} if sure else {})}
                 for c, s, sure in zip(color, shape.tolist(), unanimous.tolist(), strict=True)]
        return torch.cat([images, dec]), attrs + extra

    return batch


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="qdgs-shapes-clip", choices=list(WORLDS))
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--flips", action="store_true", help="random horizontal/vertical flips")
    ap.add_argument("--vae-frac", type=float, default=0.0,
                    help="shapes: share of each batch that are VAE decodes (oracle-captioned)")
    ap.add_argument("--checkpoint-every", type=int, default=200,
                    help="steps between checkpoints (<out>.ckpt; a rerun resumes there)")
    args = ap.parse_args()
    if not 0 <= args.vae_frac <= 1:
        ap.error(f"--vae-frac must lie in [0, 1] (a share of each batch), got {args.vae_frac}")
    out = args.out or str(weights_dir() / OWN_MODELS[args.model])
    seed_everything(args.seed)
    rng = random.Random(args.seed)
    register_configs()
    model = open_clip.create_model(args.model)
    wrapper = Clip(model, open_clip.get_tokenizer(args.model), 64)
    wrapper.model.train().requires_grad_(True)
    batch_fn, captions = WORLDS[args.model]
    if args.vae_frac > 0:
        if args.model != "qdgs-shapes-clip":
            raise SystemExit("--vae-frac is for qdgs-shapes-clip (the shapes VAE)")
        batch_fn = vae_batch_fn(args.vae_frac)
    tokenizer = open_clip.get_tokenizer(args.model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps,
                                                pct_start=0.1)
    g = torch.Generator().manual_seed(args.seed)
    ckpt = StepCheckpoint(out, vars(args), args.checkpoint_every)
    start = ckpt.resume(model, opt, sched, {"data": g}, rng)
    bar = tqdm(range(start, args.steps), desc=f"train {args.model}", initial=start,
               total=args.steps)
    for step in bar:
        images, attrs = batch_fn(args.batch, g)
        images = blur_some(images, g)
        if args.flips:
            images = flip_some(images, g)
        chosen = [rng.choice(true_captions(a, captions)) for a in attrs]
        texts = sorted(set(chosen))
        target = match_matrix(attrs, texts, captions)  # (B, T)
        img = F.normalize(model.encode_image(wrapper.preprocess(images)), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        loss_i = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        col = target.T
        loss_t = -(col / col.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        ckpt.step_done(step, args.steps, model, opt, sched, {"data": g}, rng)
    model.eval()
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    inputs = {}
    if args.vae_frac > 0:   # the weights it learned from: a retrained VAE or oracle shows here
        from qdgs_lib.generators.shapes_vae import WEIGHTS_FILE as VAE_FILE
        from qdgs_lib.shapes_oracle import WEIGHTS_FILE as ORACLE_FILE

        inputs = {name: sha256_file(weights_dir() / name) for name in (VAE_FILE, ORACLE_FILE)}
    write_weights_record(out, vars(args), final_loss=loss.item(), captions=list(captions),
                         **({"inputs (sha256)": inputs} if inputs else {}))
    ckpt.done()
    print("wrote", out)


if __name__ == "__main__":
    main()
