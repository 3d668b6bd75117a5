"""Check that CLIP checkpoints in Hugging Face ``transformers`` format load as transformers
runs them (``pip install transformers`` into any environment that has this project's
dependencies; nothing is downloaded):

    python scripts/check_against_transformers.py [--write-fixture]

For a ViT-B/32 ``CLIPModel`` (transformers' default CLIPConfig: OpenAI's ViT-B/32 shapes and
QuickGELU) with every tensor randomised, saved by ``save_pretrained`` as
``model.safetensors`` and as ``pytorch_model.bin``, ``create_clip("ViT-B-32-quickgelu",
weights=<folder>)`` is compared with transformers' own ``get_image_features`` /
``get_text_features``: images through ``Clip.encode_image`` (its resize and normalization
against the normalized pixels transformers takes), prompts through ``Clip.encode_text``
(open_clip's tokenizer; transformers given the same token ids). Exit status 1 if an
embedding differs by more than 1e-5 (relative to its norm).

``--write-fixture`` writes a tiny CLIPModel (transformers' files, 170 KB) and transformers'
embeddings under ``tests/data/hf_clip_tiny/``: ``tests/test_clip.py`` compares against them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qdgs_lib.clip import OPENAI_MEAN, OPENAI_STD, create_clip  # noqa: E402

FIXTURE = ROOT / "tests" / "data" / "hf_clip_tiny"
# the tiny model: open_clip's twin is tests/data/hf-clip-tiny.json
TINY_TEXT = dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                 num_attention_heads=2, max_position_embeddings=16, bos_token_id=998,
                 eos_token_id=999,
                 hidden_act="quick_gelu")
TINY_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                   num_attention_heads=2, image_size=32, patch_size=8, hidden_act="quick_gelu")
PROMPTS = ["A person with dark skin.", "A person in their 50s.", "a red shape"]


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor random (layer norms and biases too, which start as ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                scale = 1.0 if name.endswith("logit_scale") else 0.05
                t.add_(torch.randn(t.shape, generator=g) * scale)
    return model


def hf_features(model, pixels: torch.Tensor, tokens: torch.Tensor):
    def tensor(out):  # transformers 5 returns an output object, 4.x a tensor
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        return (tensor(model.get_image_features(pixel_values=pixels)),
                tensor(model.get_text_features(input_ids=tokens)))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(((got - want).norm(dim=-1) / want.norm(dim=-1)).max())


def normalized(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(OPENAI_MEAN)[:, None, None], torch.tensor(OPENAI_STD)[:, None, None]
    return (images - mean) / std


def check_vit_b32() -> bool:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    hf = randomised(CLIPModel(CLIPConfig()).eval(), seed=1)
    images = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for safe in (True, False):
            folder = Path(tmp) / ("safetensors" if safe else "bin")
            hf.save_pretrained(folder)
            if not safe:  # what transformers 4 wrote without safetensors (5 writes none)
                (folder / "model.safetensors").unlink()
                torch.save(hf.state_dict(), folder / "pytorch_model.bin")
            clip = create_clip("ViT-B-32-quickgelu", weights=folder, device="cpu")
            tokens = clip.tokenizer(PROMPTS)
            want_img, want_txt = hf_features(hf, normalized(images), tokens)
            with torch.no_grad():
                img = clip.encode_image(images, normalize=False)
                txt = clip.encode_text(PROMPTS, normalize=False)
            errs = relative_error(img, want_img), relative_error(txt, want_txt)
            good = max(errs) < 1e-5
            ok &= good
            print(f"ViT-B/32, {sorted(p.name for p in folder.iterdir())}: image embeddings "
                  f"{errs[0]:.2e}, text {errs[1]:.2e} (max relative error): "
                  f"{'ok' if good else 'DIFFERENT'}")
    return ok


def write_fixture() -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(text_config=TINY_TEXT, vision_config=TINY_VISION, projection_dim=8)
    hf = randomised(CLIPModel(config).eval(), seed=3)
    FIXTURE.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(FIXTURE)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    tokens = torch.zeros(2, 16, dtype=torch.long)  # start, words, end (999), padding
    tokens[0, :5] = torch.tensor([998, 17, 250, 3, 999])
    tokens[1, :3] = torch.tensor([998, 640, 999])
    img, txt = hf_features(hf, normalized(images), tokens)
    np.savez(FIXTURE / "reference.npz", images=images.numpy(), tokens=tokens.numpy(),
             image_features=img.numpy(), text_features=txt.numpy(),
             keys=np.array(sorted(hf.state_dict())))
    print(f"wrote {sorted(p.name for p in FIXTURE.iterdir())} to {FIXTURE}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-fixture", action="store_true")
    args = ap.parse_args(argv)
    try:
        import transformers
    except ImportError:
        print("this check needs transformers: pip install transformers (it is no dependency "
              "of qdgs; nothing is downloaded)", file=sys.stderr)
        return 2
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    ok = check_vit_b32()
    if args.write_fixture:
        write_fixture()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
