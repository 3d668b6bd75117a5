"""Train the shapes oracle (qdgs_lib/shapes_oracle.py): three render classifiers whose
unanimous labels are the reference for CLIP shape labels of shapes-VAE decodes.

    python scripts/train_shapes_oracle.py [--renders 8000] [--epochs 10]   # ~2 min on 2 cores

Records beside the weights how often the members agree on 1000 decodes of the VAE's prior.
Each member is saved when it is trained (``<out>.member<seed>.safetensors``): a rerun after an
interruption loads the finished members (each seeds itself, so the oracle is the one an
uninterrupted run makes) and refuses members trained with other settings.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from qdgs_lib.generators.shapes_vae import load_shapes_vae
from qdgs_lib.models.shape_classifier import ShapeClassifier
from qdgs_lib.paths import weights_dir
from qdgs_lib.sampling import decode_batched
from qdgs_lib.shapes_oracle import (
    SEEDS,
    SIZE,
    WEIGHTS_FILE,
    ShapeOracle,
    save_shapes_oracle,
    train_member,
    vote,
)
from qdgs_lib.utils import atomic_path, save_weights, sha256_file, write_weights_record


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--renders", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--out", default=str(weights_dir() / WEIGHTS_FILE))
    args = ap.parse_args()
    members = [_member(args, seed) for seed in args.seeds]
    oracle = ShapeOracle(members, args.size)
    vae = load_shapes_vae(device="cpu")
    images = decode_batched(vae.decode, vae.sample_prior(1000, seed=7).numpy(), size=args.size)
    probs = oracle.member_probs(images)
    votes = (probs > 0.5).numpy()
    _, unanimous, _ = vote(probs)
    check = {"prior decodes": 1000, "prior sample seed": 7,
             "members agree pairwise": [float((votes[i] == votes[j]).mean())
                                        for i, j in itertools.combinations(range(len(votes)), 2)],
             "unanimous": float(unanimous.mean())}
    print(check)
    with atomic_path(args.out) as tmp:
        save_shapes_oracle(oracle, tmp)
    from qdgs_lib.generators.shapes_vae import WEIGHTS_FILE as VAE_FILE

    write_weights_record(args.out, {**vars(args), "out": Path(args.out).name},
                         **{"prior check": check,   # made on this VAE's decodes
                            "inputs (sha256)": {VAE_FILE: sha256_file(weights_dir() / VAE_FILE)}})
    for seed in args.seeds:  # the oracle holds them now
        _member_path(args.out, seed).unlink(missing_ok=True)
    print("wrote", args.out)


def _member_path(out: str, seed: int) -> Path:
    return Path(f"{out}.member{seed}.safetensors")


def _member(args, seed: int) -> ShapeClassifier:
    """Member ``seed``: loaded if an interrupted run finished it with these settings,
    else trained and saved (atomically) before the next one starts."""
    path = _member_path(args.out, seed)
    key = json.dumps({"renders": args.renders, "epochs": args.epochs, "size": args.size,
                      "seed": seed}, sort_keys=True)
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            have = (f.metadata() or {}).get("config")
        if have != key:
            raise ValueError(f"{path} was trained with other settings ({have} there, {key} "
                             f"now): rerun with those, or delete {path.name} to start over")
        member = ShapeClassifier()
        member.load_state_dict(load_file(str(path)))
        print(f"member {seed}: loaded {path.name} (finished by an earlier run)")
        return member.eval()
    member = train_member(seed, args.renders, args.epochs, args.size, progress=True)
    save_weights(member, path, metadata={"config": key})
    return member


if __name__ == "__main__":
    main()
