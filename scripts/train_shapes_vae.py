"""Train the shapes VAE (latent 6, 128x128) on color-biased shape renders.

    python scripts/train_shapes_vae.py [--steps 3000] [--bias 0.9] [--out data/weights/...]

Data are rendered on the fly (a new seeded batch every step), so nothing is stored. A
checkpoint every --checkpoint-every steps (<out>.ckpt): rerun the same command to resume.
"""

from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from qdgs_lib.data.shapes import biased_groups, render, sample_params
from qdgs_lib.generators.shapes_vae import WEIGHTS_FILE, ShapesVAE, save_shapes_vae
from qdgs_lib.paths import weights_dir
from qdgs_lib.utils import StepCheckpoint, atomic_path, seed_everything, write_weights_record


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bias", type=float, default=0.9)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(weights_dir() / WEIGHTS_FILE))
    ap.add_argument("--checkpoint-every", type=int, default=200,
                    help="steps between checkpoints (<out>.ckpt; a rerun resumes there)")
    args = ap.parse_args()
    seed_everything(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = ShapesVAE()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps)
    g = torch.Generator().manual_seed(args.seed)
    ckpt = StepCheckpoint(args.out, vars(args), args.checkpoint_every)
    start = ckpt.resume(model, opt, sched, {"data": g})
    bar = tqdm(range(start, args.steps), desc="shapes VAE", initial=start, total=args.steps)
    for step in bar:
        colors, shapes = biased_groups(args.batch, args.bias, g)
        x = render(sample_params(args.batch, colors, shapes, g), 128)
        recon, mu, logvar = model(x)
        rec = (recon - x).pow(2).sum(dim=(1, 2, 3)).mean()
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
        loss = rec + args.beta * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(rec=f"{rec.item():.1f}", kl=f"{kl.item():.1f}")
        ckpt.step_done(step, args.steps, model, opt, sched, {"data": g})
    model.eval()
    with atomic_path(args.out) as tmp:
        save_shapes_vae(model, tmp)
    write_weights_record(args.out, vars(args), final={"rec": rec.item(), "kl": kl.item()})
    ckpt.done()
    print("wrote", args.out)


if __name__ == "__main__":
    main()
