"""Where do torch.compile'd jacobians depart from eager ones on this device?

    python3 bench/compile_check.py [--device cuda]

The paper-scale scorer (StyleGAN2-256 + ViT-B/32, random weights, a full uniqueness memory),
one probe latent. Prints, per jacobian row, the error against an eager ``func`` jacobian
(relative to the row's norm, or to 1e-6 of the largest row's norm where a row is ~0:
``qdgs_lib.scoring.jacobian_row_errors``): a second eager call (the device's own noise
floor), the uncompiled ``replicated`` mode, the compiled scoring pass (``compile_static``'s
replicated mode), the compiled ``func`` jacobian (its func mode), and on CUDA these again
inside a CUDA graph capture, as the scorer's static calls run them.
Where the compiled pass is far from eager replicated (the scorer's own check's tolerance,
``COMPILED_TOLERANCE``), the generator's decode and CLIP's image encoder are then compiled one
at a time, to show which one goes wrong.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import _PROBE_SEED, _fill_memory, setups  # noqa: E402

from qdgs_lib.scoring import (  # noqa: E402
    COMPILED_TOLERANCE,
    StaticCall,
    jacobian_row_errors,
)


def report(name: str, got: torch.Tensor, ref: torch.Tensor, t0: float) -> None:
    errs = " ".join(f"{e:.1e}" for e in jacobian_row_errors(got, ref).tolist())
    zero = " (ALL ZERO)" if not got.abs().any() else ""
    print(f"{name:44s} row errors {errs}{zero}  [{time.perf_counter() - t0:.0f} s]", flush=True)


def replicated_with(scorer, decode, encode):
    """The scorer's replicated jacobian, with its generator decode / CLIP encoder swapped."""
    gen, clip = scorer.generator, scorer.clip

    def outputs(z, memory):
        old = gen.decode, clip.encode_image
        gen.decode, clip.encode_image = decode, encode
        try:
            return scorer._outputs(z, memory)
        finally:
            gen.decode, clip.encode_image = old

    return lambda z, memory: scorer._replicated_jacobian(z, memory, outputs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    scorer = setups(args.device, False)[-1][1]()
    _fill_memory(scorer)
    z = scorer.generator.sample_prior(1, seed=_PROBE_SEED).to(args.device)
    mem = scorer.memory
    t0 = time.perf_counter()
    ref = scorer._func_jacobian(z, mem)[3]
    print("row norms of the eager func jacobian:",
          " ".join(f"{n:.2e}" for n in ref.flatten(2).norm(dim=2)[0].tolist()))
    report("eager func again (noise floor)", scorer._func_jacobian(z, mem)[3], ref, t0)
    replicated = scorer._replicated_jacobian(z, mem)[3]
    report("eager replicated", replicated, ref, t0)
    whole = torch.compile(scorer._outputs, dynamic=False)

    def compiled(z, memory):
        return scorer._replicated_jacobian(z, memory, whole)

    func = torch.compile(scorer._func_jacobian, dynamic=False)  # vjp + vmap, one graph
    got = None
    try:  # each part on its own: a failing compile must not hide the parts after it
        got = compiled(z, mem)[3]
        report("compiled scoring pass", got, ref, t0)
        report("compiled scoring pass vs eager replicated", got, replicated, t0)
    except Exception as e:  # noqa: BLE001 - report and go on
        print(f"compiled scoring pass: FAILED {type(e).__name__}: {e}", flush=True)
    try:
        report("compiled func jacobian", func(z, mem)[3], ref, t0)
    except Exception as e:  # noqa: BLE001
        print(f"compiled func jacobian: FAILED {type(e).__name__}: {e}", flush=True)
    if z.is_cuda:
        for name, fn in (("eager replicated, CUDA graph", scorer._replicated_jacobian),
                         ("compiled scoring pass, CUDA graph", compiled),
                         ("compiled func jacobian, CUDA graph", func)):
            try:
                call = StaticCall(fn, z, mem)
                report(name, call(z, mem)[3].clone(), ref, t0)
            except Exception as e:  # noqa: BLE001
                print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
    # against the same mode: replicated and func differ by TF32 convolutions' rounding
    # (1.2e-2 on an H200), which is not the compiler's
    if got is not None and jacobian_row_errors(got, replicated).max() <= COMPILED_TOLERANCE:
        return
    print("failed or far from eager: compiling the pieces one at a time", flush=True)
    decode, encode = scorer.generator.decode, scorer.clip.encode_image
    pieces = {"compiled decode": (torch.compile(decode, dynamic=False), encode),
              "compiled encode_image": (decode, torch.compile(encode, dynamic=False))}
    for name, (dec, enc) in pieces.items():
        try:
            report(name, replicated_with(scorer, dec, enc)(z, mem)[3], ref, t0)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
    main()
