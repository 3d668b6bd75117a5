"""The shapes proof of concept (notebook 01) as library calls.

QDGS over the shapes VAE with the paper's prompts -> a synthetic set labeled by the CLIP shape
measure -> fine-tune a classifier trained on color-biased shapes -> balanced accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from .data.captions import BLUE_ABOVE, RED_BELOW
from .data.shapes import (
    BLUE,
    RED,
    SHAPES,
    ShapesDataset,
    augment_shapes,
    group_names,
    shapes_datasets,
)
from .evaluate import group_accuracy, predict
from .generators.base import Generator
from .generators.shapes_vae import load_released_shapes_vae, load_shapes_vae
from .measures import index
from .models.shape_classifier import ShapeClassifier, make_shape_classifier
from .paths import in_data_dir
from .profiles import CHOICES, EARLIER, with_earlier
from .sampling import (
    IMAGE_FORMATS,
    as_released_jpeg,
    decode_batched,
    solution_columns,
    write_image_dataset,
)
from .scoring import PromptScorer, scorer_for_profile, set_cublas_workspace
from .search import measures, solutions
from .shapes_oracle import ShapeOracle, load_shapes_oracle
from .train import train_classifier
from .utils import (
    atomic_path,
    check_unit_images,
    differing_keys,
    reading,
    resize_square,
    resolve_device,
    seed_everything,
    tensor_digest,
)

LABEL_STYLES = CHOICES["label_style"]  # label_by_shape_measure


def build_generator(p: dict[str, Any], device: str | torch.device = "auto") -> Generator:
    """``shapes_vae``: None, the project's VAE; a ``.safetensors`` path, one in its format; any
    other path (relative: under data/), the released code's ``vae-shapes.pt``."""
    path = in_data_dir(with_earlier(p)["shapes_vae"])
    if path is None or path.suffix == ".safetensors":
        return load_shapes_vae(path, device=device)
    return load_released_shapes_vae(path, device=device)


def build_scorer(p: dict[str, Any], device: str | torch.device = "auto") -> PromptScorer:
    """The shapes profile ``p``'s VAE (:func:`build_generator`) and its CLIP scorer."""
    device = resolve_device(device)
    set_cublas_workspace(p, device)  # before the generator's first CUDA matmul
    return scorer_for_profile(build_generator(p, device), p, device)


def label_by_shape_measure(m: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Class from the shape measure: > ``label_margin`` triangle (0), < -``label_margin``
    square (1), otherwise -1 (ambiguous, dropped). ``label_style: "released"``: square at or
    below 0 instead, the released code's bins ``(-100, -0.01)`` and ``(0, 100)`` of its
    measure, which has the opposite sign."""
    p = with_earlier(p)
    shape, margin = m[:, index(p, "shape")], p["label_margin"]
    if p["label_style"] not in LABEL_STYLES:
        raise ValueError(f"label_style must be one of {LABEL_STYLES}, got {p['label_style']!r}")
    square = shape <= 0 if p["label_style"] == "released" else shape < -margin
    return np.where(shape > margin, 0, np.where(square, 1, -1))


def is_red(m: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Color from the CLIP color measure (> 0: red)."""
    return m[:, index(p, "color")] > 0


def synthetic_set(scorer: PromptScorer, latents: np.ndarray, m: np.ndarray, p: dict[str, Any],
                  limit: int | None = None) -> dict[str, Any]:
    """Decode latents, label them by the CLIP shape measure; drop ambiguous ones."""
    labels = label_by_shape_measure(m, p)
    keep = np.flatnonzero(labels >= 0)[:limit]
    if len(keep) == 0:
        raise ValueError("no solution has an unambiguous shape measure: the archive is empty "
                         "or the measure ranges do not fit this CLIP")
    fmt = with_earlier(p)["image_format"]
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {fmt!r}")
    if fmt == "jpg":  # the released code trained on the JPEG files it wrote
        images = decode_batched(scorer.generator.decode, latents[keep])
        images = resize_square(as_released_jpeg(images), p["image_size"])
    else:
        images = decode_batched(scorer.generator.decode, latents[keep], size=p["image_size"])
    return {"images": images, "labels": torch.as_tensor(labels[keep]), "latents": latents[keep],
            "measures": m[keep]}


def qdgs_set(scorer: PromptScorer, archive_df: pd.DataFrame, p: dict[str, Any]) -> dict:
    """The QDGS synthetic set: every elite of an archive frame decoded and labeled by its
    shape measure (:func:`synthetic_set`; ambiguous ones dropped)."""
    return synthetic_set(scorer, solutions(archive_df), measures(archive_df), p)


def random_set(scorer: PromptScorer, n: int, p: dict[str, Any], seed: int = 0,
               chunk: int = 256) -> dict:
    """``n`` labeled samples from the VAE's own prior (the size-matched baseline): the first
    ``n`` unambiguous ones of ``4n + 64`` draws."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    z = scorer.generator.sample_prior(4 * n + 64, seed=seed).cpu().numpy()
    # scored a chunk at a time until n are unambiguous (~n / 0.95 draws, not all 4n + 64):
    # the chunks are measures_of's own, so every score is the number scoring all would give
    m, labeled = [], 0
    for i in range(0, len(z), chunk):
        m.append(scorer.measures_of(z[i:i + chunk], batch_size=chunk))
        labeled += int((label_by_shape_measure(m[-1], p) >= 0).sum())
        if labeled >= n:
            break
    m = np.concatenate(m)
    if labeled < n:
        raise ValueError(f"only {labeled} of {len(z)} prior samples have an unambiguous shape "
                         f"label, fewer than the {n} asked for (the size-matched baseline "
                         f"needs all of them): lower the profile's label_margin")
    return synthetic_set(scorer, z[:len(m)], m, p, limit=n)


def save_set(data: dict, outdir: str | Path) -> Path:
    """Write a synthetic set as ``outdir/<shape>/<i>.png`` with a manifest of its measures
    and latents (:func:`qdgs_lib.sampling.write_image_dataset`, replacing what is there)."""
    man = solution_columns(data["measures"], data["latents"])
    classes = [SHAPES[int(y)] for y in data["labels"]]
    return write_image_dataset(outdir, data["images"], classes, man, overwrite=True)


# the profile keys classifier_protocol reads: a checkpoint is only resumed under the same
PROTOCOL_KEYS = ("bias_levels", "seeds", "n_train", "n_test", "image_size", "train_epochs",
                 "finetune_epochs", "finetune_lr", "batch", "classifier", "shapes_data",
                 "train_sets")


def classifier_protocol(p: dict[str, Any], synthetic: dict[str, dict], progress: bool = True,
                        device: str | torch.device = "auto",
                        checkpoint: str | Path | None = None) -> pd.DataFrame:
    """Train on color-biased real shapes, fine-tune on each synthetic set (or not), and
    evaluate on a balanced set; one row per (bias, seed, fine-tune set). The biased set is
    drawn per seed, or under ``train_sets: "per_bias"`` once per bias (seed 0's) for every
    seed, as the released code does; the network, its training order and augmentations follow
    the seed either way.

    ``synthetic`` maps a name to one set for every seed, or to ``{seed: set}`` (e.g. the
    archive of the search with that seed), so seed k pairs classifier seed k with search k.

    ``checkpoint``: a JSON file that gets the rows after each (bias, seed) (atomically), with
    what they were computed from (the profile's ``PROTOCOL_KEYS``, the sets' sha256, the
    device type); a rerun resumes after the last finished pair, with the rows of an
    uninterrupted run (each pair seeds itself), and refuses a file made from anything else.
    """
    device = resolve_device(device)
    p = with_earlier(p)
    if p["image_size"] < 16:
        raise ValueError(f"image_size {p['image_size']}: the shape classifier needs >= 16 px")
    sets = {(name, seed): _checked_set(name, seed, synthetic[name], p)
            for name in synthetic for seed in p["seeds"]}
    key = json.loads(json.dumps({  # (as it reads back: tuples as lists)
        "profile": {k: p[k] for k in PROTOCOL_KEYS}, "device": device.type,
        "sets": {f"{name} seed {seed}": tensor_digest(data["images"], data["labels"])
                 for (name, seed), data in sets.items()}}))
    rows = _resume_rows(checkpoint, key)
    done = {(r["bias"], r["seed"]) for r in rows}
    # the real sets and their augmentation: this project's renders, or the released code's
    # (whose loader keeps the last, smaller batch)
    real_set, augment = shapes_datasets(p["shapes_data"])
    drop_last = None if p["shapes_data"] == "project" else False
    test = real_set(p["n_test"], None, p["image_size"], seed=10_000)
    names = group_names()
    for bias in p["bias_levels"]:
        for seed in p["seeds"]:
            if (bias, seed) in done:
                continue
            seed_everything(seed)
            real = real_set(p["n_train"], bias, p["image_size"],
                            seed=seed if p["train_sets"] == "per_seed" else 0)
            base = make_shape_classifier(p["classifier"], p["image_size"])
            train_classifier(base, TensorDataset(real.images, real.labels), p["train_epochs"],
                             batch_size=p["batch"], seed=seed, augment=augment,
                             drop_last=drop_last, progress=progress,
                             desc=f"bias {bias} seed {seed}", device=device)
            for name in ["none", *synthetic]:
                model = make_shape_classifier(p["classifier"], p["image_size"])
                model.load_state_dict(base.state_dict())
                if name != "none":
                    data = sets[name, seed]
                    # each fine-tune draws its augmentations from the same seeded stream: a
                    # row does not depend on which sets were fine-tuned before it
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                        torch.manual_seed(seed)
                        train_classifier(model, TensorDataset(data["images"], data["labels"]),
                                         p["finetune_epochs"], lr=p["finetune_lr"],
                                         batch_size=p["batch"], seed=seed,
                                         augment=augment, drop_last=drop_last,
                                         progress=progress, desc=f"fine-tune {name}",
                                         device=device)
                acc = group_accuracy(predict(model, test.images, device=device),
                                     test.labels.numpy(), test.groups.numpy(), names)
                rows.append({"bias": bias, "seed": seed, "finetune": name, **acc})
            if checkpoint is not None:
                with atomic_path(checkpoint) as tmp:
                    Path(tmp).write_text(json.dumps({"key": key, "rows": rows}, indent=1,
                                                    default=float))
    return pd.DataFrame(rows)


def _resume_rows(checkpoint: str | Path | None, key: dict) -> list[dict]:
    """The rows of ``checkpoint`` (none if there is no file), if it was made from ``key``."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return []
    with reading(checkpoint, "a classifier-protocol checkpoint",
                 f"Delete {Path(checkpoint).name} to start over."):
        state = json.loads(Path(checkpoint).read_text())
        have, rows = state["key"], state["rows"]
        if not isinstance(have, dict) or not all(isinstance(have.get(k), dict) for k in
                                                  ("profile", "sets")):
            raise ValueError("no record of the inputs")
        pairs = {(r["bias"], r["seed"]) for r in rows}
    key = json.loads(json.dumps(key))  # (a copy: keys older files lack are left out below)
    for k, before in EARLIER.items():  # written before the setting existed
        if k in key["profile"] and k not in have["profile"] and key["profile"][k] == before:
            key["profile"].pop(k)
    if have != key:
        differ = [k for k in differing_keys(have, key) if k not in ("profile", "sets")] + [
            f"{part}: {k}" for part in ("profile", "sets")
            for k in differing_keys(have[part], key[part])]
        raise ValueError(f"{checkpoint} holds classifier rows made from other inputs "
                         f"({', '.join(differ)}): delete it to start over, or use another "
                         "run folder")
    print(f"resumed {Path(checkpoint).name}: {len(pairs)} (bias, seed) pairs done")
    return rows


def _checked_set(name: str, seed: int, data: dict, p: dict[str, Any]) -> dict:
    """Seed ``seed``'s synthetic set ``name``, refused unless it is what the classifier can
    learn from: (N, 3, S, S) finite images in [0, 1] at the profile's size, labels 0/1."""
    if "images" not in data:
        if seed not in data:
            raise KeyError(f"synthetic set {name!r} has seeds {sorted(data)}, the profile "
                           f"{p['seeds']}: build one set per profile seed")
        data = data[seed]
    what = f"synthetic set {name!r} (seed {seed})"
    x, y = data["images"], torch.as_tensor(data["labels"])
    size = p["image_size"]
    if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
        raise ValueError(f"{what}: images {tuple(x.shape)}, expected (N, 3, {size}, {size}) "
                         "(decode at the profile's image_size)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: images with NaN/inf pixels: check the generator")
    check_unit_images(x, what)
    if len(y) != len(x) or len(x) == 0 or not set(y.unique().tolist()) <= {0, 1}:
        raise ValueError(f"{what}: {len(x)} images need as many labels, each 0 (triangle) or "
                         f"1 (square); got {len(y)} labels with values "
                         f"{sorted(set(y.unique().tolist()))[:5]}")
    return data


def group_accuracy_by_bias(results: pd.DataFrame, finetune: str = "none") -> pd.DataFrame:
    """Per color bias (rows, strongest first), each color x shape group's accuracy of the
    ``finetune`` models of :func:`classifier_protocol`, mean over seeds: where a biased
    classifier fails (averaging over bias levels would hide it)."""
    rows = results[results.finetune == finetune]
    if rows.empty:
        raise ValueError(f"no results with finetune {finetune!r}; have "
                         f"{sorted(results.finetune.unique())}")
    return rows.groupby("bias")[group_names()].mean().sort_index(ascending=False)


def train_oracle(p: dict[str, Any], seed: int = 0, epochs: int = 8, progress: bool = False,
                 device: str | torch.device = "auto") -> ShapeClassifier:
    """A single quick render classifier: 2000 balanced renders at ``image_size`` (its own
    seed, not the evaluation set). The first label reference, kept for the bench studies that
    measured it (``bench/shapes_oracles.py``); labels are now checked against the shipped
    three-member :mod:`.shapes_oracle`."""
    seed_everything(seed)
    renders = ShapesDataset(2000, None, p["image_size"], seed=20_000 + seed)
    oracle = ShapeClassifier()
    train_classifier(oracle, TensorDataset(renders.images, renders.labels), epochs,
                     batch_size=p["batch"], seed=seed, augment=augment_shapes,
                     progress=progress, desc="oracle", device=resolve_device(device))
    return oracle


def pixel_color(images: torch.Tensor) -> np.ndarray:
    """Color of each shape read off its pixels, on the renderer's scale (0 red .. 1 blue):
    the mean of the non-background (non-white) pixels projected on the red -> blue line."""
    x = images.detach().float().cpu()
    fg = (x.min(dim=1).values < 0.8).float()[:, None]  # white background is ~1 everywhere
    rgb = (x * fg).sum((2, 3)) / fg.sum((2, 3)).clamp(min=1)
    d = BLUE - RED
    return (((rgb - RED) @ d) / (d @ d)).clamp(0, 1).numpy()


def prior_label_agreement(scorer: PromptScorer, p: dict[str, Any], oracle: ShapeOracle,
                          n: int = 1000, seed: int = 0) -> dict[str, float]:
    """How often the CLIP labels of ``n`` samples of the VAE's prior are right.

    ``shape``: the shape measure's sign vs the oracle on the decodes its members label
    unanimously (an ambiguous |measure| <= ``label_margin`` counts as wrong); ``shape, all``:
    the same on every decode, against the oracle's mean probability; ``unanimous``: the share
    of decodes the oracle is sure of; ``color``: the color measure's sign vs the pixels' color.
    """
    z = scorer.generator.sample_prior(n, seed=seed).cpu().numpy()
    m = scorer.measures_of(z)
    images = decode_batched(scorer.generator.decode, z, size=p["image_size"])
    shape, unanimous, _ = oracle.labels(images)
    hit = label_by_shape_measure(m, p) == shape
    return {"shape": float(hit[unanimous].mean()), "shape, all": float(hit.mean()),
            "unanimous": float(unanimous.mean()),
            "color": float((is_red(m, p) == (pixel_color(images) < 0.5)).mean())}


def clearly_red_or_blue(color: np.ndarray) -> np.ndarray:
    """Whether a pixel color (0 red .. 1 blue, :func:`pixel_color`) is not purple, by the
    captions' own boundaries (``data.captions.color_name``)."""
    return (color < RED_BELOW) | (color > BLUE_ABOVE)


def _color_columns(red: np.ndarray, color: np.ndarray) -> dict[str, float]:
    """CLIP color labels vs the pixels' color (0 red .. 1 blue); *purple*: not
    :func:`clearly_red_or_blue`."""
    if len(color) == 0:
        return dict.fromkeys(("CLIP color = pixels", "purple share",
                              "CLIP color = pixels, red or blue images"), np.nan)
    hit = red == (color < 0.5)
    clear = clearly_red_or_blue(color)
    return {"CLIP color = pixels": float(hit.mean()), "purple share": float(1 - clear.mean()),
            "CLIP color = pixels, red or blue images":
                float(hit[clear].mean()) if clear.any() else np.nan}


def label_audit(p: dict[str, Any], synthetic: dict[str, dict], oracle: ShapeOracle | None = None,
                device: str | torch.device = "auto") -> pd.DataFrame:
    """How good is each synthetic set as training data? The shipped :mod:`.shapes_oracle`
    (three render classifiers) reads every synthetic image; per set: agreement of the CLIP
    labels with the oracle on the images its members label unanimously, and on all images
    (mean probability), the unanimous share, the oracle's mean confidence (low on
    off-manifold "splatters"), how often the CLIP color measure's sign matches the pixels'
    color (on all images, and on the clearly red or blue ones: a purple shape has no right
    answer), the purple share, and the share of each color x shape group (color from the CLIP
    color measure, shape from the oracle)."""
    oracle = oracle if oracle is not None else load_shapes_oracle(device=resolve_device(device))
    rows = {}
    for name, data in synthetic.items():
        shape, unanimous, confidence = oracle.labels(data["images"])
        hit = shape == data["labels"].numpy()
        red = is_red(data["measures"], p)
        row = {"images": len(shape),
               "CLIP label = oracle": float(hit[unanimous].mean()) if unanimous.any() else np.nan,
               "CLIP label = oracle, all images": float(hit.mean()) if len(hit) else np.nan,
               "oracle unanimous": float(unanimous.mean()) if len(hit) else np.nan,
               "oracle confidence": float(confidence.mean()) if len(hit) else np.nan,
               **_color_columns(red, pixel_color(data["images"]))}
        for c, want_red in (("red", True), ("blue", False)):
            for s, k in zip(SHAPES, range(2), strict=True):
                row[f"{c} {s}"] = float(((red == want_red) & (shape == k)).mean())
        rows[name] = row
    return pd.DataFrame(rows).T
