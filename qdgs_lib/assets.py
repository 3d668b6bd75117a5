"""The files a profile needs, checked all at once before a notebook writes anything.

``check_assets(profile, section)`` raises one :class:`MissingAssetsError` that lists every
missing file of that notebook's section (with where to get it and where to put it), and names
the files later notebooks will also need, so a paper run does not fail one file at a time.
``python -m qdgs_lib.assets paper`` prints the checklist.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import (
    MTCNN_NETS,
    RELEASED_MTCNN_WHERE,
    RELEASED_OFFSETS_WHERE,
    RELEASED_SHAPES_VAE_WHERE,
    STYLEGAN2_FFHQ_URL,
    benchmarks_dir,
    in_data_dir,
    misplaced_recordio,
    nested_recordio,
    pretrained_dir,
    real_dataset_path,
    shipped_weights_fix,
    weights_dir,
)
from .profiles import get_profile, profile_name, section_keys, split_overrides

SECTIONS = ("shapes", "faces", "recognition")
# what a recognition notebook reads: 03 trains (the real set), 04 evaluates (the benchmarks)
PARTS = {"train": "the real training set", "eval": "the benchmarks"}
PLUMBING_HINT = ("random-weight stand-in: write all of them with `python -m qdgs_lib.plumbing` "
                 "and set QDGS_DATA_DIR=runs/paper-mini/data (or run `make paper-mini`)")

WHERE = {
    "stylegan": "NVIDIA's StyleGAN2 FFHQ 256x256 network pickle `stylegan2-ffhq-256x256.pkl` "
                "(NGC model nvidia/research/stylegan2, version 1: "
                f"{STYLEGAN2_FFHQ_URL}; non-commercial licence; never commit it)",
    "clip": "the OpenAI ViT-B/32 weights: Hugging Face repo timm/vit_base_patch32_clip_224.openai, "
            "file open_clip_model.safetensors, put at data/pretrained/open_clip_model.safetensors "
            "(or OpenAI's original ViT-B-32.pt, put at data/pretrained/ViT-B-32.pt)",
    "bin": "InsightFace's validation files (inside faces_webface_112x112.zip / faces_emore.zip "
           "from the InsightFace dataset zoo, or AdaFace's validation set release)",
    "rfw": "RFW (Racial Faces in-the-Wild), on request from its authors; unpack so that "
           "rfw/test/data/<Race>/ and rfw/test/txts/<Race>/<Race>_pairs.txt (+ _lmk.txt: the "
           "photos are aligned with its landmarks) exist",
    "train": "an aligned 112x112 training set: InsightFace's train.rec + train.idx (e.g. "
             "faces_webface_112x112 = CASIA-WebFace, the released code's data; its files "
             "straight in this folder) or "
             "<identity>/<image>.jpg folders",
}


@dataclass(frozen=True)
class Asset:
    """One file a notebook reads: ``path``, ``what`` it is, ``where`` to get it (or how to
    make it), and its ``kind``: "file", "dir" or "trainset" (a RecordIO pair or identity
    folders), which decides what :meth:`present` checks."""

    path: Path
    what: str
    where: str
    kind: str = "file"  # file | dir | trainset

    def present(self) -> bool:
        """Whether the asset is there in a usable form: a file that exists and has no
        :meth:`problem`; a folder that exists; a training set as a ``.rec``
        (or a folder's ``train.rec``) with its ``.idx`` beside it, or else a folder of identity
        subfolders with no RecordIO pair nested one level too deep."""
        if self.kind == "file":
            return self.path.is_file() and self.problem() is None
        if self.kind == "trainset":  # what data.identities.open_training_set reads
            rec = self.path if self.path.suffix == ".rec" else self.path / "train.rec"
            if rec.is_file() or self.path.suffix == ".rec":
                return rec.is_file() and rec.with_suffix(".idx").is_file()
            return self.problem() is None and self.path.is_dir() and any(
                d.is_dir() for d in self.path.iterdir())
        return self.path.is_dir()

    def problem(self) -> str | None:
        """Why a file that exists cannot be the weights asked for (empty, or not in the
        format its suffix names: an interrupted download, an HTML error page), else None; for a
        training set, RecordIO files one folder too deep."""
        if self.kind == "trainset":
            nested = nested_recordio(self.path)
            return None if nested is None else misplaced_recordio(self.path, nested)
        if self.kind != "file" or not self.path.is_file():
            return None
        with open(self.path, "rb") as f:
            head = f.read(16)
        if not head:
            return "the file is empty (an interrupted download?)"
        suffix = self.path.suffix.lower()
        if suffix == ".safetensors":
            n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
            if len(head) < 9 or head[8:9] != b"{" or n > self.path.stat().st_size:
                return "not a safetensors file (no JSON header)"
        elif suffix == ".npy" and head[:6] != b"\x93NUMPY":
            return f"not a numpy .npy file (first bytes {head[:8]!r})"
        elif suffix in (".pkl", ".pt", ".pth") and not (head[:1] == b"\x80"
                                                       or head[:2] == b"PK"):
            return f"not a pickle or torch {suffix} file (first bytes {head[:8]!r})"
        return None


class MissingAssetsError(FileNotFoundError):
    """Every missing file of a run, in one message."""


def _clip_asset(p: dict[str, Any]) -> Asset:
    from .clip import KNOWN_PRETRAINED, OWN_MODELS, OWN_MODELS_REBUILD

    name = p["clip"]
    if p["clip_weights"]:
        path = in_data_dir(p["clip_weights"])
        if path.is_dir():  # a transformers checkpoint folder: the weights file in it
            from .hf_clip import WEIGHT_FILES, weights_in

            path = weights_in(path) or path / WEIGHT_FILES[0]
        return Asset(path, f"CLIP {name} weights", "the file (or transformers checkpoint "
                     "folder) you named")
    if name in OWN_MODELS:
        return Asset(weights_dir() / OWN_MODELS[name], f"the project's CLIP {name}",
                     shipped_weights_fix(OWN_MODELS[name], OWN_MODELS_REBUILD[name]))
    if name in KNOWN_PRETRAINED:
        from .clip import resolve_weights

        try:  # the file create_clip will load (the first of its candidates that exists)
            path = resolve_weights(name, None)
        except FileNotFoundError:
            path = pretrained_dir() / KNOWN_PRETRAINED[name][0]
        return Asset(path, f"CLIP {name} weights", WHERE["clip"])
    return Asset(Path(f"<weights for {name}>"), f"CLIP {name} weights",
                 "set clip_weights in the profile overrides")


def required_assets(profile: str | None, section: str, part: str | None = None,
                    **overrides) -> list[Asset]:
    """What ``section`` ("shapes" | "faces" | "recognition") of ``profile`` reads from disk;
    for "recognition", ``part`` "train" (notebook 03) or "eval" (notebook 04) narrows it to
    what that notebook reads (None: both)."""
    if part is not None and (section != "recognition" or part not in PARTS):
        raise ValueError(f"part must be None, or for 'recognition' one of {sorted(PARTS)}, "
                         f"got {part!r} for {section!r}")
    name = profile_name(profile)
    p = get_profile(name, section, **overrides)
    out: list[Asset] = []
    if section == "shapes":
        vae = in_data_dir(p["shapes_vae"])
        if vae is None:
            out.append(Asset(weights_dir() / "shapes_vae.safetensors", "the project's shapes VAE",
                             shipped_weights_fix("shapes_vae.safetensors",
                                                 "train_shapes_vae.py")))
        elif vae.suffix == ".safetensors":
            out.append(Asset(vae, "shapes VAE weights", "the file you named"))
        else:
            out.append(Asset(vae, "the released code's shapes VAE", RELEASED_SHAPES_VAE_WHERE))
        out += [Asset(weights_dir() / "shapes_oracle.safetensors",
                      "the project's shapes oracle (the label audit's reference)",
                      shipped_weights_fix("shapes_oracle.safetensors",
                                          "train_shapes_oracle.py")),
                _clip_asset(p)]
    elif section == "faces":
        if p["world"] == "ffhq":
            path = in_data_dir(p["stylegan_weights"]) if p["stylegan_weights"] else \
                pretrained_dir() / "stylegan2-ffhq-256x256.pkl"
            out.append(Asset(path, "StyleGAN2-FFHQ-256", WHERE["stylegan"]))
        if p["offsets_file"]:
            out.append(Asset(in_data_dir(p["offsets_file"]), "latent augmentations",
                             RELEASED_OFFSETS_WHERE))
        if p["world"] == "ffhq" and p["align"] == "mtcnn":
            out += [Asset(in_data_dir(p["mtcnn_weights"]) / f"{net}.npy",
                          f"the released MTCNN's {net.upper()} (face alignment)",
                          RELEASED_MTCNN_WHERE) for net in MTCNN_NETS]
        out.append(_clip_asset(p))
    elif section == "recognition":
        if p["real_dataset"] and part in (None, "train"):
            out.append(Asset(real_dataset_path(p), "real face training set", WHERE["train"],
                             "trainset"))
        for bench in (p["benchmarks"] if part in (None, "eval") else ()):
            if bench == "rfw":
                out.append(Asset(benchmarks_dir() / "rfw" / "test" / "txts", "RFW",
                                 WHERE["rfw"], "dir"))
            else:
                out.append(Asset(benchmarks_dir() / f"{bench}.bin", f"{bench}.bin",
                                 WHERE["bin"]))
    else:
        raise ValueError(f"unknown section {section!r}; choose from {SECTIONS}")
    if p["plumbing_check"]:
        out = [Asset(a.path, a.what, PLUMBING_HINT, a.kind) for a in out]
    return out


def missing_assets(profile: str | None, sections=SECTIONS, **overrides) -> list[Asset]:
    """The files of ``sections`` that are missing or unusable (``overrides``: any section's
    keys, each section takes its own)."""
    seen, out = set(), []
    for section in sections:
        mine, _ = split_overrides(profile, section, overrides)
        for a in required_assets(profile, section, **mine):
            if a.path not in seen and not a.present():
                seen.add(a.path)
                out.append(a)
    return out


def fingerprint(path: Path, max_bytes: int = 2 << 30) -> dict[str, Any]:
    """What makes a run traceable to its inputs: sha256 of each file (files above
    ``max_bytes``, e.g. a multi-GB train.rec, by size and modification time; RecordIO sets by
    their .idx's sha256)."""
    from .utils import sha256_file

    path = Path(path)
    if path.is_file():
        st = path.stat()
        if st.st_size > max_bytes:
            return {"bytes": st.st_size, "mtime": int(st.st_mtime)}
        return {"sha256": sha256_file(path), "bytes": st.st_size}
    if (path / "train.idx").is_file():
        return {"train.idx": fingerprint(path / "train.idx"),
                "train.rec": fingerprint(path / "train.rec", max_bytes)}
    if path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file()]
        return {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}
    return {"missing": True}


def _lines(assets: list[Asset]) -> str:
    def why(a):
        bad = a.problem()
        fix = "" if a.kind == "trainset" else "; replace it"
        return f" [present but unusable: {bad}{fix}]" if bad else ""

    return "\n".join(f"  - {a.path}  ({a.what}){why(a)}: {a.where}" for a in assets)


def check_assets(profile: str | None, section: str, part: str | None = None,
                 **overrides) -> None:
    """Raise :class:`MissingAssetsError` naming every missing (or empty, or malformed) file
    of ``section`` (``part``: see :func:`required_assets`), and, as a note, those the other
    notebooks of the profile will need (``overrides``: any section's keys, as the notebooks
    take them). Call before writing outputs."""
    name = profile_name(profile)
    mine, _ = split_overrides(name, section, overrides)
    missing = [a for a in required_assets(name, section, part, **mine) if not a.present()]
    if not missing:
        return
    try:
        later = [a for a in missing_assets(name, **overrides)
                 if a.path not in {m.path for m in missing}]
    except ValueError:  # another section's bad override: its notebook will say so
        later = []
    msg = (f"profile '{name}' ({section}) cannot start: {len(missing)} file(s) missing or "
           f"unusable\n" + _lines(missing))
    if later:
        msg += "\nthe other notebooks of this profile will also need:\n" + _lines(later)
    raise MissingAssetsError(msg + "\nNothing was written. Paths under data/ move with "
                             "QDGS_DATA_DIR.")


def _released_note(paths: list[Path]) -> str:
    """Whether ``paths`` are the released code's files of those names (by sha256)."""
    from .paths import is_released_file

    verdicts = {x.name: is_released_file(x) for x in paths}
    known = {k: v for k, v in verdicts.items() if v is not None}
    other = [k for k, v in known.items() if not v]
    if not known:
        return ""
    if not other:
        return "; the released code's file" + ("s" if len(known) > 1 else "")
    return (f"; NOT the released code's {', '.join(other)} (another sha256): fine if you "
            "mean to use another")


def _load_steps(profile: str, section: str, overrides: dict[str, Any]) -> list[tuple]:
    """(what, the file, a function that loads it as the notebooks do and describes it)."""
    from . import face_synthesis, shapes_poc
    from .scoring import clip_for_profile

    p = get_profile(profile, section, **overrides)

    def clip():
        c = clip_for_profile(p, "cpu")
        emb = c.encode_text(["a photo"])
        on_gpu = {"released": "; float16 on CUDA (clip_precision 'released')"}
        return (f"{p['clip']}: {c.image_size} px images, {emb.shape[1]}-d embeddings, "
                f"{c.weights_dtype} weights here{on_gpu.get(p['clip_precision'], '')}")

    if section == "shapes":
        def vae():
            g = shapes_poc.build_generator(p, "cpu")
            return f"latent {g.latent_dim}, {g.image_size} px images"

        from .shapes_oracle import load_shapes_oracle

        vae_path = required_assets(profile, section, **overrides)[0].path
        return [("shapes VAE", vae_path, vae),
                ("shapes oracle", weights_dir() / "shapes_oracle.safetensors",
                 lambda: type(load_shapes_oracle()).__name__),
                ("CLIP", _clip_asset(p).path, clip)]
    if section == "faces":
        gen = {}

        def generator():
            gen["g"] = g = face_synthesis.build_generator(p, "cpu")
            name = getattr(g, "name", type(g).__name__)  # e.g. StyleGAN3Generator(w+)
            return f"{name}: latent {g.latent_dim}, {g.image_size} px images"

        def offsets():
            if "g" not in gen:
                raise RuntimeError("needs the generator, which did not load")
            off = face_synthesis.latent_offsets(p, gen["g"])
            return f"{len(off)} offsets of {off.shape[1]} numbers"

        def mtcnn():
            from .align import aligner

            aligner(p["align"], p["image_size"], in_data_dir(p["mtcnn_weights"]))
            return "P-, R- and O-Net"

        if p["world"] == "ffhq":  # (the toy world renders: no file)
            steps = [("StyleGAN2", required_assets(profile, section, **overrides)[0].path,
                      generator)]
            if p["align"] == "mtcnn":
                steps.append(("MTCNN", in_data_dir(p["mtcnn_weights"]), mtcnn))
        else:
            steps = [("generator", None, generator)]
        if p["offsets_file"]:
            steps.append(("latent offsets", in_data_dir(p["offsets_file"]), offsets))
        return [*steps, ("CLIP", _clip_asset(p).path, clip)]
    from .data.benchmarks import read_bin, read_rfw
    from .data.identities import open_training_set

    def train():
        ds = open_training_set(real_dataset_path(p))
        image = ds[0][0]
        return (f"{type(ds).__name__}: {len(ds)} images of {ds.num_classes} identities, "
                f"first image {tuple(image.shape)}")

    def bench(path):
        pairs = read_bin(path)
        return f"{len(pairs.issame)} pairs ({int(pairs.issame.sum())} same), " \
               f"{tuple(pairs.images.shape[1:])} images"

    def rfw(root):
        pairs = read_rfw(root, limit_per_race=10)
        return f"the first 10 pairs of {len(pairs.group_names)} races read and aligned"

    steps = [("training set", real_dataset_path(p), train)] if p["real_dataset"] else []
    for b in p["benchmarks"]:
        path = benchmarks_dir() / ("rfw" if b == "rfw" else f"{b}.bin")
        steps.append((b, path, (lambda x=path: rfw(x)) if b == "rfw" else
                      (lambda x=path: bench(x))))
    return steps


def load_assets(profile: str | None, overrides: dict[str, Any] | None = None) -> int:
    """Load every file of ``profile`` with the loader its notebook uses (on the CPU) and print
    one line each: ``[loaded]`` with what it holds (and, for the released code's data files,
    whether they are those files), or ``[FAILED]`` with the loader's error. Returns the number
    of failures. Slower than the checklist (it reads every file whole)."""
    name, overrides = profile_name(profile), dict(overrides or {})
    failed, seen = 0, set()
    for section in SECTIONS:
        try:
            steps = _load_steps(name, section, split_overrides(name, section, overrides)[0])
        except ValueError as e:  # a bad override: no file of this section can be named
            failed += 1
            print(f"[FAILED] {section:11s} overrides: {e}", flush=True)
            continue
        for what, path, load in steps:
            if (what, path) in seen:
                continue
            seen.add((what, path))
            try:
                summary = load()
                if path is not None:
                    summary += _released_note([path] if what != "MTCNN" else
                                              [path / f"{n}.npy" for n in MTCNN_NETS])
                print(f"[loaded] {section:11s} {what}: {path or '(no file)'}\n      {summary}",
                      flush=True)
            except Exception as e:  # noqa: BLE001 (every loader's error is the report)
                failed += 1
                print(f"[FAILED] {section:11s} {what}: {path or '(no file)'}\n      "
                      f"{type(e).__name__}: {e}", flush=True)
    print(f"{failed} of {len(seen)} failed" if failed else f"all {len(seen)} loaded")
    return failed


def main(argv: list[str] | None = None) -> int:
    """``python -m qdgs_lib.assets``: print a profile's checklist (ok / BAD / MISSING, with
    where to get each file), or with ``--load`` load every file; returns the exit status
    (1 if anything is missing, unusable or failed to load)."""
    import argparse

    from .profiles import PROFILES, parse_overrides

    ap = argparse.ArgumentParser(prog="python -m qdgs_lib.assets",
                                 description="Check the files a profile's notebooks read.")
    ap.add_argument("profile", nargs="?", default=None, choices=sorted(PROFILES),
                    help="default: $QDGS_PROFILE, else 'default'")
    ap.add_argument("--overrides", default=None,
                    help='JSON, as a notebook\'s overrides, e.g. \'{"benchmarks": ["lfw"]}\'')
    ap.add_argument("--load", action="store_true",
                    help="also load every file with the notebooks' loaders (slower: reads "
                         "each whole) and say what it holds")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    name = profile_name(args.profile)
    overrides = parse_overrides(args.overrides)
    known = set().union(*(section_keys(name, s) for s in SECTIONS), SECTIONS)
    if set(overrides) - known:
        ap.error(f"unknown override(s) {sorted(set(overrides) - known)}: no section of "
                 f"profile {name!r} has them; known: {sorted(known)}")
    needed = {}
    for section in SECTIONS:   # a bad override value: said without a traceback
        try:
            needed[section] = required_assets(name, section,
                                              **split_overrides(name, section, overrides)[0])
        except ValueError as e:
            ap.error(f"{section}: {e}")
    if args.load:
        return int(load_assets(name, overrides) > 0)
    status, seen = 0, set()
    for section in SECTIONS:
        for a in needed[section]:
            if a.path in seen:
                continue
            seen.add(a.path)
            ok = a.present()
            bad = None if ok else a.problem()
            status |= not ok
            print(f"[{'ok' if ok else 'BAD' if bad else 'MISSING'}] {section:11s} {a.path}")
            if bad and a.kind == "trainset":  # (the problem says where the files go)
                print(f"      {a.what}: {bad}")
            elif bad:
                print(f"      {a.what}: {bad}; replace it with {a.where}")
            elif not ok:
                print(f"      {a.what}: {a.where}")
    return status


if __name__ == "__main__":
    sys.exit(main())
