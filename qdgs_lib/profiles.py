"""Parameter sets: ``smoke`` (CI, minutes), ``default`` (offline CPU reproduction), ``paper``
(real weights and data), ``paper-mini`` (the paper's architectures and formats at toy sizes, on
random-weight assets: a plumbing check).

A notebook calls ``get_profile(profile, section, **overrides)`` (``profile=None`` reads
``QDGS_PROFILE``, falling back to ``default``; ``section``: ``shapes``, ``faces`` or
``recognition``); overrides must be known keys with values of the profile's types.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

from .measures import Measure, as_measures, as_prompt, check_pair, placed

SHAPES_OBJECTIVE = ("A regular square or a triangle.", "Splatters of colors.")
# ranges: the project's shapes CLIP, read off its scores of the VAE's prior samples and of
# renders (not of any evaluation data); the paper's ViT-B/32 used +-0.1
SHAPES_MEASURES = (
    Measure("color", "A red shape.", "A blue shape.", "red (+) vs blue", (-0.9, 0.9), 50),
    Measure("shape", "A triangle with 3 edges.", "A square or diamond with 4 edges.",
            "triangle (+) vs square", (-0.9, 0.9), 50),
)

FACES_OBJECTIVE = ("A detailed photo of an individual with diverse features.",
                   "An obscure, fake, or discolored photo of a person.")
# ranges: the project's faces CLIP, face_synthesis.calibrate_ranges (1%/99% quantiles) of its
# measures of 1024 toy renders with balanced attributes (notebook 02 prints them again); the
# paper's ViT-B/32: +-0.1. Datasets are balanced over skin x gender, as in the paper.
FACES_MEASURES = (
    Measure("skin", "A person with dark skin.", "A person with light skin.",
            "dark skin (+) vs light", (-0.85, 0.85), 20, attribute="skin", balanced=True),
    Measure("gender", "A masculine person.", "A feminine person.",
            "masculine (+) vs feminine", (-0.85, 0.85), 10, attribute="masc", balanced=True),
    Measure("hair", "A person with long hair.", "A person with short hair.",
            "long hair (+) vs short", (-0.7, 0.7), 5, attribute="hair"),
    Measure("age", "A person in their 20s.", "A person in their 50s.",
            "20s (+) vs 50s", (-0.85, 0.8), 10, attribute="age", sign=-1),
)

_SHAPES_BASE: dict[str, Any] = {
    "objective": SHAPES_OBJECTIVE,
    "measures": SHAPES_MEASURES,
    "clip": "qdgs-shapes-clip",
    # None: the default file for `clip`; else a weights file (relative paths: under data/)
    "clip_weights": None,
    # None: the project's VAE; else a .safetensors in its format, or the released code's
    # vae-shapes.pt (relative paths: under data/)
    "shapes_vae": None,
    # prompt gap, latent norm, uniqueness. The paper used (1, 0, 0) for shapes; without the
    # latent-norm penalty 87-98% of the elites left the VAE's prior (first VAE: median norm
    # 14.6 vs 2.3, the CLIP's shape labels agreeing with the first oracle for 62-68% of the
    # images); weight 2 keeps them at the prior's norm (first VAE: agreement 0.79-0.80,
    # bench/shapes_support.py, issue 15; the committed figures: 95.4%, README)
    "objective_weights": (1.0, 2.0, 0.0),
    # the latent-norm penalty starts at this multiple of the prior's typical norm
    "latent_norm_scale": 1.0,
    # objective softplus(100 - 50 loss) >= 0; off: the released code's 100 - 50 loss as it is
    "objective_floor": True,
    "cutouts": 0,  # random crops CLIP scores and averages (0: the whole image once)
    # CLIP's weights: "float32", "float16" (as OpenAI's clip.load converts them on a GPU) or
    # "released" (float16 on CUDA, float32 elsewhere: what the released code's clip.load gave)
    "clip_precision": "float32",
    # their sizes and resize: "project" (60-100% of the side) or "released" (the released
    # code's MakeCutouts: 224 px to the side, average-pooled; with cutouts 1, its input).
    # With cutouts 0: the whole image resized (bilinear) or average-pooled ("released": for
    # the released 128 px shapes, exactly its input)
    "cutout_style": "project",
    "tf32_matmul": False,  # CUDA only: CLIP's matmuls in TF32 while scoring (PromptScorer._tf32)
    "autocast": None,  # or "float16"/"bfloat16": the networks in half precision while scoring
    # torch.compile'd static scoring calls (PromptScorer.compile_static; CUDA graphs' calls),
    # each checked once against eager; a mode whose compile fails or is off runs uncompiled
    "compile_static": False,
    # deterministic kernels while scoring (PromptScorer.deterministic): a seeded GPU search
    # reproduces bit for bit; off: the last bits of jacobians vary from run to run on CUDA
    "deterministic": False,
    "batch_size": 4,
    "num_emitters": 1,
    "sigma0": 0.5,
    "lr": 0.5,
    "bias_levels": (0.98, 0.95, 0.90, 0.85, 0.80),
    "label_margin": 0.01,  # |shape measure| below this: ambiguous, left out of the dataset
    # "released": square at or below 0 (its bins), triangle above label_margin
    "label_style": "project",
    "image_format": "png",  # the synthetic set's pixels; "jpg": through JPEG files (released)
    "shapes_data": "project",  # the real sets: this project's renders, or "released" ones
    # the biased training set: drawn per seed, or "per_bias": one per bias level for every
    # seed (seed 0's), as the released code stores one set per bias for all its trials
    "train_sets": "per_seed",
    "image_size": 64,  # classifier resolution
    "finetune_lr": 1e-4,  # Adam's learning rate on the synthetic set (the first stage: 1e-3)
    "classifier": "project",  # or "released": the released code's CNN (sigmoid output)
    "archive_learning_rate": 0.02,
    "x0": "prior_best",  # the start: the best prior draw, or "released" (its pick)
    "x0_samples": 64,  # the emitters start at the best of this many prior samples
    "x0_truncation": None,  # StyleGAN2: those samples' truncation psi (None: none)
    "selection_rule": "mu",  # CMA-ES parents: the better half ("mu") or the added ("filter")
    # solutions whose images score NaN/inf: stop the search (False) or skip them (True)
    "skip_nonfinite": False,
    "plumbing_check": False,
}

_FACES_BASE: dict[str, Any] = {
    "objective": FACES_OBJECTIVE,
    "measures": FACES_MEASURES,
    "objective_weights": (1.0, 0.5, 0.2),  # prompt gap, latent norm, uniqueness (the paper)
    "latent_norm_scale": 1.0,  # as in the shapes section (the released code: 0.5)
    "objective_floor": True,
    # uniqueness x memory size / its length while it fills (the released code: x 100 / length)
    "uniqueness_fill_scale": False,
    "world": "toy",
    "latent_space": "w",  # ffhq world: "w" (one w for all layers) or "w+" (one per layer)
    "clip": "qdgs-faces-clip",
    "clip_weights": None,  # as in the shapes section
    # None: data/pretrained/stylegan2-ffhq-256x256.pkl; else NVIDIA's network pickle or our
    # .safetensors from save_stylegan2 (relative paths: under data/)
    "stylegan_weights": None,
    "cutouts": 0,
    "cutout_style": "project",
    "clip_precision": "float32",
    # CLIP sees the images clamped to [0, 1]; False: unclamped, as the released faces code
    "clamp_images": True,
    "tf32_matmul": False,
    "autocast": None,
    "compile_static": False,
    "deterministic": False,
    "batch_size": 4,
    "num_emitters": 1,
    "sigma0": 0.5,
    "lr": 0.5,
    "archive_learning_rate": 0.02,
    "x0": "prior_best",
    "x0_samples": 64,
    "x0_truncation": None,
    "selection_rule": "mu",
    "skip_nonfinite": False,  # as in the shapes section
    "bin_edge": 0.1,  # balanced measures' bins (-inf, -e), (-e, e), (e, inf); the paper: 0.03
    "per_identity": 2,  # solutions per K-means identity
    "kmeans_n_init": 4,  # K-means restarts and iterations (scikit-learn's default: 300)
    "kmeans_max_iter": 300,
    "offsets": 4,  # images per solution (latent augmentations)
    "offset_scale": 0.1,
    # None: offsets - 1 seeded random offsets of scale offset_scale; else a file of offsets
    # (relative paths: under data/), e.g. the released code's augmentations.pt
    "offsets_file": None,
    "image_size": 64,
    # ffhq world: "crop" (a fixed template crop) or "mtcnn" (the released code's alignment:
    # MTCNN landmarks, a similarity warp), with the released MTCNN weights in this folder
    # (relative paths: under data/)
    "align": "crop",
    "mtcnn_weights": "pretrained/mtcnn",
    "dataset_solutions": None,  # cap on solutions per dataset (uniform subsample of the archive)
    "prior_samples": 4000,  # random samples drawn to show the generator's bias
    "preview_images": 32,  # of which this many are drawn
    "plumbing_check": False,  # True: random weights; outputs check the code, not the method
}

_RECOGNITION_BASE: dict[str, Any] = {
    "backbone": "ir_small",
    "head": "adaface",
    "lr": 0.01,
    "batch": 64,
    "real_identities": 300,
    "real_views": 5,
    "benchmark_pairs": 600,  # per skin x age group
    "toy_benchmark": True,  # notebook 04 also evaluates on the toy world's benchmark
    "benchmark_size": 112,  # real benchmarks are read at this size (then resized to the model)
    "seeds": (0,),
    # None: the toy world's biased "real" set; else a folder (relative to data/) holding
    # InsightFace's train.rec + train.idx, or <identity>/<image> folders
    "real_dataset": None,
    "workers": 0,  # DataLoader processes decoding a real set from disk
    "benchmarks": (),  # real benchmarks a run requires (notebook 04 uses any it finds)
    # torch.compile the backbone: on 2 CPU cores ir_small trains 1.2-1.4x faster after a ~1 min
    # compile (bench/run.py); off where a stage is too short to pay for it
    "compile": False,
    "plumbing_check": False,
    # AdaFace's augmentations: "project" (float, RGB, torch's interpolations) or "released"
    # (as the paper's pipeline ran them: uint8, ColorJitter on BGR, cv2's five interpolations)
    "augment_style": "project",
}

# Keys added after runs and hand-made profile dicts existed, with the behaviour before them:
# readers fill a dict's missing ones from here (with_earlier), and a resume accepts a file
# written without one of them when this run keeps its earlier value.
EARLIER = {"x0_truncation": None, "selection_rule": "mu", "latent_norm_scale": 1.0,
           "objective_floor": True, "uniqueness_fill_scale": False, "latent_space": "w",
           "offsets_file": None, "kmeans_n_init": 4, "kmeans_max_iter": 300,
           "shapes_vae": None, "finetune_lr": 1e-4, "classifier": "project",
           "image_format": "png", "mtcnn_weights": "pretrained/mtcnn",
           "cutout_style": "project", "x0": "prior_best", "label_style": "project",
           "shapes_data": "project", "clamp_images": True, "clip_precision": "float32",
           "train_sets": "per_seed", "augment_style": "project", "skip_nonfinite": False}


def with_earlier(p: dict[str, Any]) -> dict[str, Any]:
    """``p`` with the keys it lacks among :data:`EARLIER` at their earlier values."""
    return {**EARLIER, **p}


REAL_BENCHMARKS = ("lfw", "cfp_fp", "cplfw", "calfw", "agedb_30", "rfw")

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "shapes": {**_SHAPES_BASE, "measures": placed(SHAPES_MEASURES, bins=(20, 20)),
                   "iterations": 60, "seeds": (0,),
                   "bias_levels": (0.95,), "n_train": 256, "n_test": 128, "train_epochs": 2,
                   "finetune_epochs": 2, "batch": 64},
        "faces": {**_FACES_BASE, "measures": placed(FACES_MEASURES, bins=(6, 4, 3, 4)),
                  "iterations": 30},
        "recognition": {**_RECOGNITION_BASE, "pretrain_epochs": 1, "real_epochs": 1,
                        "milestones": (1,), "real_identities": 24, "real_views": 3,
                        "benchmark_pairs": 40},
    },
    "default": {
        # CPU budget: 32x32 classifier input, fewer epochs (paper: 20 + 30) and three bias
        # levels; 5 seeds (search seed k paired with classifier seed k)
        "shapes": {**_SHAPES_BASE, "iterations": 2000, "seeds": (0, 1, 2, 3, 4),
                   "bias_levels": (0.98, 0.90, 0.80), "image_size": 32, "n_train": 1000,
                   "n_test": 2000, "train_epochs": 15, "finetune_epochs": 10, "batch": 64},
        # CPU budget: 400 solutions per dataset (x 4 augmentations), 8 + 8 epochs of ir_small;
        # 5 seeds, paired across pretrainings (same real data and initialisation)
        "faces": {**_FACES_BASE, "iterations": 2000, "dataset_solutions": 400},
        "recognition": {**_RECOGNITION_BASE, "pretrain_epochs": 8, "real_epochs": 8,
                        "milestones": (5, 7), "seeds": (0, 1, 2, 3, 4), "compile": True},
    },
    "paper": {
        # The released code's settings (github.com/Cylumn/qd-generative-sampling; README
        # "The paper profile and the released code" lists each, and what differs).
        # Its shapes objective has no latent-norm penalty; the offline profiles' weight 2 was
        # chosen for the project's shapes CLIP (issue 15) and is not checked with ViT-B/32:
        # override {"shapes": {"objective_weights": [1, 2, 0]}} to carry it over.
        "shapes": {**_SHAPES_BASE, "clip": "ViT-B-32-quickgelu",
                   "shapes_vae": "pretrained/vae-shapes.pt",
                   "objective_weights": (1.0, 0.0, 0.0), "objective_floor": False,
                   "measures": placed(SHAPES_MEASURES, ranges=((-0.1, 0.1),) * 2),
                   "cutout_style": "released", "clip_precision": "released",
                   # its emitter asks batch_size - 1 = 3 (+ the gradient step's point), keeps
                   # pyribs' default "filter" parents, starts at its pick of 32 x 16 draws
                   "batch_size": 3, "selection_rule": "filter", "x0": "released",
                   "x0_samples": 512,
                   "iterations": 70000, "seeds": (0, 1, 2, 3, 4), "n_train": 1000,
                   "n_test": 5000, "image_size": 128, "train_epochs": 20,
                   "finetune_epochs": 30, "finetune_lr": 1e-3, "batch": 128,
                   "classifier": "released", "shapes_data": "released",
                   "train_sets": "per_bias", "label_style": "released",
                   "image_format": "jpg"},
        # faces: w+ (14 x 512) latents, the penalty from half the prior's typical norm, the
        # start at truncation 0.7 (so outside that: negative scores, ranked, hence no floor),
        # 9 images per solution from its augmentations.pt
        "faces": {**_FACES_BASE, "world": "ffhq", "clip": "ViT-B-32-quickgelu",
                  "measures": placed(FACES_MEASURES, ranges=((-0.1, 0.1),) * 4,
                                     bins=(50, 25, 5, 25)),
                  "cutout_style": "released", "clamp_images": False,
                  "clip_precision": "released",
                  "iterations": 60000, "latent_space": "w+", "latent_norm_scale": 0.5,
                  "objective_floor": False, "uniqueness_fill_scale": True,
                  "batch_size": 3, "selection_rule": "filter", "x0": "released",
                  "x0_samples": 512, "x0_truncation": 0.7,
                  "sigma0": 0.5, "lr": 0.5, "bin_edge": 0.03, "offsets": 9,
                  "kmeans_n_init": 10, "kmeans_max_iter": 2000,
                  "offsets_file": "pretrained/augmentations.pt", "image_size": 112,
                  "image_format": "jpg", "align": "mtcnn"},
        "recognition": {**_RECOGNITION_BASE, "backbone": "ir101", "pretrain_epochs": 26,
                        "real_epochs": 26, "milestones": (12, 20, 24), "seeds": (0,),
                        "real_dataset": "benchmarks/train", "workers": 8,
                        "toy_benchmark": False, "benchmarks": REAL_BENCHMARKS,
                        "augment_style": "released"},
    },
    # The paper's architectures and file formats at toy sizes, on random-weight assets that
    # `python -m qdgs_lib.plumbing` writes in the real formats: a plumbing check of the paper
    # path (CI runs it on CPU; run it on a GPU before a real paper run). Never a result.
    "paper-mini": {
        # ranges +-0.01: the measures of a random-weight CLIP are ~1e-3..1e-2
        "shapes": {**_SHAPES_BASE, "clip": "ViT-B-32-quickgelu",
                   "shapes_vae": "pretrained/vae-shapes.pt",
                   "objective_weights": (1.0, 0.0, 0.0), "objective_floor": False,
                   "measures": placed(SHAPES_MEASURES, ranges=((-0.01, 0.01),) * 2,
                                      bins=(10, 10)), "cutout_style": "released",
                   "clip_precision": "released",
                   "batch_size": 3, "selection_rule": "filter", "finetune_lr": 1e-3,
                   "classifier": "released", "x0": "released", "shapes_data": "released",
                   "train_sets": "per_bias", "label_style": "released", "image_format": "jpg",
                   "iterations": 2, "x0_samples": 16, "seeds": (0,),
                   "bias_levels": (0.95,), "n_train": 64, "n_test": 64, "train_epochs": 1,
                   "finetune_epochs": 1, "batch": 32, "image_size": 32, "label_margin": 0.0,
                   "plumbing_check": True},
        "faces": {**_FACES_BASE, "world": "ffhq", "clip": "ViT-B-32-quickgelu",
                  "measures": placed(FACES_MEASURES, ranges=((-0.01, 0.01),) * 4,
                                     bins=(5, 3, 3, 3)), "cutout_style": "released",
                  "clamp_images": False, "clip_precision": "released",
                  "iterations": 2, "latent_space": "w+", "latent_norm_scale": 0.5,
                  "objective_floor": False, "uniqueness_fill_scale": True,
                  "batch_size": 3, "selection_rule": "filter", "x0_truncation": 0.7,
                  "x0": "released", "x0_samples": 16, "bin_edge": 0.003, "offsets": 9,
                  "offsets_file": "pretrained/augmentations.pt", "image_size": 112,
                  "image_format": "jpg", "align": "mtcnn", "dataset_solutions": 6,
                  "prior_samples": 64,
                  "preview_images": 8,
                  "plumbing_check": True},
        "recognition": {**_RECOGNITION_BASE, "backbone": "ir101", "pretrain_epochs": 1,
                        "real_epochs": 1, "milestones": (1,), "batch": 8, "seeds": (0,),
                        "real_dataset": "benchmarks/train", "workers": 2,
                        "toy_benchmark": False, "benchmarks": REAL_BENCHMARKS,
                        "augment_style": "released", "plumbing_check": True},
    },
}


def profile_name(profile: str | None = None) -> str:
    """The profile to run: ``profile``, else ``$QDGS_PROFILE``, else "default"; refused
    (ValueError) unless it is one of :data:`PROFILES`."""
    name = profile or os.environ.get("QDGS_PROFILE") or "default"
    if name not in PROFILES:
        raise ValueError(f"unknown profile '{name}'; choose from {sorted(PROFILES)}")
    return name


def parse_overrides(overrides: dict | str | None) -> dict[str, Any]:
    """Overrides as a dict; papermill passes ``-p overrides '{"iterations": 10}'`` as a JSON
    string (``-y`` passes YAML, which arrives as a dict)."""
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as e:
            raise ValueError(f"overrides {overrides!r} is not a JSON object: {e}; write e.g. "
                             '\'{"iterations": 10}\' (or use papermill -y for YAML)') from e
    if not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a dict (or a JSON object), got "
                         f"{type(overrides).__name__}")
    return dict(overrides)


def _check_type(key: str, default: Any, value: Any) -> None:
    """An override has the type of the profile's value: an int may replace a float, not the
    reverse (no bools), lists and tuples interchange, None defaults take anything, None
    replaces optional paths."""
    if value is None and (key in _OPTIONAL or key == "x0_truncation"):
        return
    if key in _OPTIONAL:  # paths, or a count
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) \
            if key == "dataset_solutions" else isinstance(value, str | os.PathLike)
        if not ok:
            raise ValueError(f"override {key}={value!r} ({type(value).__name__}) must be "
                             f"{'an int >= 1' if key == 'dataset_solutions' else 'a path'} "
                             "or None")
        return
    if default is None:
        return
    number = (int, float)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, number):
        ok = isinstance(value, number) and (isinstance(value, int) or isinstance(default, float))
    elif isinstance(default, list | tuple):
        ok = isinstance(value, list | tuple)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"override {key}={value!r} ({type(value).__name__}) does not match the "
                         f"profile's {key}={default!r} ({type(default).__name__})")
    if isinstance(default, list | tuple) and default:
        # a list holds what the profile's list holds; some cannot be empty
        if not value and key in _NON_EMPTY:
            raise ValueError(f"override {key}={value!r} is empty; the profile's {key} is "
                             f"{default!r}")
        if key in _FIXED_LENGTH and len(value) != len(default):
            raise ValueError(f"override {key}={value!r} needs {len(default)} entries, like "
                             f"the profile's {default!r}")
        for item in value:
            _check_type(f"{key}[]", default[0], item)
    elif isinstance(value, number) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"override {key}={value!r} must be finite")
        if isinstance(default, int) and default >= 1 and value < 1:  # counts: epochs, sizes
            raise ValueError(f"override {key}={value!r} must be >= 1 (a count, like the "
                             f"profile's {default!r})")


_OPTIONAL = {"clip_weights", "stylegan_weights", "real_dataset", "dataset_solutions",
             "shapes_vae", "offsets_file"}
# keys that name one of a few settings, checked when the profile is read (a typo would
# otherwise surface only where the key is used, possibly after hours of search); the modules
# that use them take their tuples from here (tests/test_profiles.py checks the others agree)
CHOICES: dict[str, tuple[str, ...]] = {
    "x0": ("prior_best", "released", "zeros"),
    "cutout_style": ("project", "released"),
    "clip_precision": ("float32", "float16", "released"),
    "classifier": ("project", "released"),
    "shapes_data": ("project", "released"),
    "train_sets": ("per_seed", "per_bias"),
    "label_style": ("project", "released"),
    "image_format": ("png", "jpg"),
    "selection_rule": ("mu", "filter"),
    "align": ("crop", "mtcnn"),
    "augment_style": ("project", "released"),
}


def _check_choices(p: dict[str, Any]) -> None:
    """Each key of :data:`CHOICES` one of its settings; the released shapes sets need even
    sizes (half triangles, half squares), the project's balanced test set a multiple of 4."""
    for key, allowed in CHOICES.items():
        if key in p and p[key] not in allowed:
            raise ValueError(f"{key}={p[key]!r} is not one of {allowed}")
    if p.get("shapes_data") == "released":
        odd = {k: p[k] for k in ("n_train", "n_test") if k in p and p[k] % 2}
        if odd:
            raise ValueError(f"shapes_data 'released' builds sets of half triangles and half "
                             f"squares, as its code does: {odd} must be even")
    elif "n_test" in p and p["n_test"] % 4:
        raise ValueError(f"n_test={p['n_test']}: the balanced shapes test set holds as many "
                         "images of each color and shape, so n_test must be divisible by 4")
_NON_EMPTY = {"seeds", "bias_levels", "objective", "objective_weights"}  # (benchmarks may be)
_FIXED_LENGTH = {"objective", "objective_weights"}  # a prompt pair; 3 loss weights


def get_profile(profile: str | None = None, section: str | None = None,
                **overrides) -> dict[str, Any]:
    """A deep copy of a profile (or one of its sections), with ``overrides`` applied (checked:
    known keys, and values of the profile's types).

    In a section with ``measures``, ``measures`` may be given as dicts (JSON overrides), and
    ``ranges`` / ``grid`` (one value per measure) set the measures' archive ranges / bins.
    """
    p = copy.deepcopy(PROFILES[profile_name(profile)])
    if overrides and section is None:
        raise ValueError(f"overrides {sorted(overrides)} need a section (shapes, faces or "
                         "recognition): get_profile(profile, section, **overrides)")
    if section is not None:
        if section not in p:
            raise ValueError(f"profile '{profile_name(profile)}' has no section '{section}'")
        p = p[section]
    shortcuts = {k: overrides.pop(k) for k in ("ranges", "grid")
                 if k in overrides and section is not None and "measures" in p}
    unknown = set(overrides) - set(p)
    if unknown:
        raise ValueError(f"unknown override(s) {sorted(unknown)}; known: "
                         f"{sorted(p) + (['grid', 'ranges'] if 'measures' in p else [])}")
    if section is not None:
        for key, value in overrides.items():
            if key not in ("measures", "objective"):
                _check_type(key, p[key], value)
        if "objective" in overrides:
            overrides["objective"] = _objective(overrides["objective"])
    p.update(overrides)
    for part in ([p] if section is not None else p.values()):
        _check_choices(part)
    if "measures" in overrides:
        p["measures"] = as_measures(_sequence("measures", overrides["measures"]))
    if shortcuts:
        p["measures"] = placed(p["measures"],
                               ranges=_sequence("ranges", shortcuts.get("ranges")),
                               bins=_sequence("grid", shortcuts.get("grid")))
    return p


def _objective(value: Any) -> tuple:
    """An ``objective`` override: a (positive, negative) pair of text or of example images
    (:func:`qdgs_lib.measures.as_prompt`)."""
    if isinstance(value, str) or not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"override objective={value!r} must be a (positive, negative) pair, "
                         "e.g. ['A photo of a face.', 'A blurry image.'] or two example image "
                         "sets [{'images': 'good'}, {'images': 'bad'}]")
    pair = tuple(as_prompt(v, f"objective's {end}")
                 for v, end in zip(value, ("positive", "negative"), strict=True))
    check_pair(pair, "the objective")
    return pair


def section_keys(profile: str | None, section: str) -> set[str]:
    """The override keys ``section`` of ``profile`` takes (``grid`` / ``ranges`` with
    ``measures``)."""
    keys = set(get_profile(profile, section))
    return keys | {"grid", "ranges"} if "measures" in keys else keys


def split_overrides(profile: str | None, section: str,
                    overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``overrides`` as (what ``section`` takes, what only other sections take), so that one
    set of overrides serves every notebook of a profile.

    A plain key applies to every section that takes it: ``stylegan_weights`` to faces,
    ``real_dataset`` to recognition, but ``seeds``, ``lr``, ``batch``, ``image_size`` or
    ``iterations`` to several sections, where they mean different things. A section's name
    holds overrides for that section alone (``{"recognition": {"seeds": [0, 1, 2]}}``), and
    wins over a plain key. A key no section takes (a typo) is refused, as is a section key
    the section does not take."""
    name = profile_name(profile)
    keys = {s: section_keys(name, s) for s in PROFILES[name]}
    if section not in keys:
        raise ValueError(f"profile '{name}' has no section '{section}'")
    scoped = {k: v for k, v in overrides.items() if k in keys}
    plain = {k: v for k, v in overrides.items() if k not in keys}
    for part, extra in scoped.items():
        if not isinstance(extra, dict):
            raise ValueError(f"override {part!r} names a section: give it a dict of that "
                             "section's keys, e.g. {\"recognition\": {\"seeds\": [0, 1]}}")
        unknown = set(extra) - keys[part]
        if unknown:
            raise ValueError(f"unknown override(s) {sorted(unknown)} for section {part!r} "
                             f"of profile '{name}'; it takes {sorted(keys[part])}")
    unknown = set(plain).difference(*keys.values())
    if unknown:
        raise ValueError(f"unknown override(s) {sorted(unknown)}: no section of profile "
                         f"'{name}' takes them; {section} takes "
                         f"{sorted(keys[section])}")
    mine = {k: v for k, v in plain.items() if k in keys[section]} | scoped.get(section, {})
    elsewhere = {k: v for k, v in plain.items() if k not in keys[section]}
    elsewhere |= {k: v for k, v in scoped.items() if k != section}
    return mine, elsewhere


def shared_overrides(profile: str | None, section: str, overrides: dict[str, Any]) -> list[str]:
    """The plain keys of ``overrides`` that ``section`` takes and other sections take too
    (each notebook of those sections applies them)."""
    name = profile_name(profile)
    others = set().union(*(section_keys(name, s) for s in PROFILES[name] if s != section))
    return sorted(k for k in overrides if k in others and k in section_keys(name, section))


def _sequence(key: str, value: Any) -> Any:
    if value is not None and not isinstance(value, list | tuple):
        raise ValueError(f"override {key}={value!r} ({type(value).__name__}) must be a list "
                         "with one entry per measure")
    return value
