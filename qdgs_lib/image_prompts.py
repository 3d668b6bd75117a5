"""Prompts made of example images, for measures that words do not pin down.

A text prompt places an image by its CLIP angle to a sentence. An :class:`ImagePrompt` puts
example images in a prompt's place: the measure of a pair of example sets is the mean angular
distance to the second set's embeddings minus the mean distance to the first's, as a text
prompt's alternatives are averaged::

    smiling = ImagePrompt("refs/smiling")                   # a folder of .jpg / .png files
    neutral = ImagePrompt(neutral_images, name="neutral")   # (N, 3, H, W): [0, 1] or uint8
    age = ("A person in their 50s.", "A person in their 20s.")
    scorer = PromptScorer(gen, clip, objective, [(smiling, neutral), age])

Both prompts of a pair are example images, or both text: CLIP's image embeddings lie much closer
to one another than to any sentence (the modality gap), so a mixed pair would measure how much an
image looks like a photo rather than the attribute. A search records each set by name, count and
sha256 of its pixels and resumes only with the same images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from .utils import check_unit_images, tensor_digest, unit_range

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
EMBED_BATCH = 64  # example images embedded at a time
QUIET_BELOW = 256  # example sets smaller than this are read and embedded without a progress bar


def _rgb(img: Image.Image) -> Image.Image:
    """RGB as CLIP's own preprocessing converts (alpha dropped, not composited), upright by
    the file's EXIF orientation (phone photos), 16-bit grey scaled to 8 bits (PIL's convert
    would clip it to white)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.asarray(img, dtype=np.float64)
        if grey.min() < 0 or grey.max() > 65535:
            raise ValueError(f"{img.mode} pixels outside 0..65535")
        img = Image.fromarray(np.round(grey / 257).astype(np.uint8))
    elif img.mode == "F":
        raise ValueError("float pixels (mode F): save the image as 8-bit PNG or JPEG")
    return img.convert("RGB")


def _square_image(path: Path, size: int) -> torch.Tensor:
    """A file as (3, size, size) uint8: RGB (:func:`_rgb`), centre-cropped to a square (as
    CLIP's own preprocessing crops), resized with PIL's bicubic filter."""
    try:
        with Image.open(path) as img:
            img = _rgb(img)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path} is not an image PIL can read ({e}): remove it from the "
                         "example set or convert it to PNG or JPEG") from None
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def _files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(source, str | os.PathLike):
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder of example images at {folder}: give a folder "
                                    "holding the images themselves (.jpg, .png, ...), a list of "
                                    "image files, or a tensor (N, 3, H, W)")
        files = sorted(p for p in folder.iterdir()  # (hidden files: macOS's ._x.jpg)
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} files (sub-folders "
                             "are not searched): put the example images directly in it")
        return files
    source = list(source)  # (a generator is read once)
    if not all(isinstance(p, str | os.PathLike) for p in source):
        raise TypeError("example images are a folder, a list of image files, or one tensor "
                        "(N, 3, H, W): stack a list of image tensors with torch.stack")
    if not source:
        raise ValueError("the list of example image files is empty: give at least one file")
    files = [Path(p) for p in source]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} example image file(s) do not exist, e.g. "
                                f"{missing[:3]}")
    return files


class ImagePrompt:
    """Example images standing in for a text prompt (see the module's docstring).

    Args:
        images: a folder of image files (the files directly inside it, in name order), a list
            of image files, or a tensor / array (N, 3, H, W) of float images in [0, 1] or
            uint8 images. Files are read as RGB (upright by their EXIF orientation; alpha
            dropped, as CLIP's own preprocessing does), centre-cropped to squares and resized
            to ``size``; tensors are kept as they are, and CLIP resizes them as it resizes the
            generator's images (a non-square tensor is stretched to a square, not cropped).
        name: how plots, records and errors name the set; default: the folder's name, or
            ``"<N> images"``.
        size: the side files are resized to (CLIP resizes again to its input size).
    """

    def __init__(self, images: torch.Tensor | np.ndarray | str | os.PathLike
                 | Sequence[str | os.PathLike], name: str | None = None, size: int = 224):
        if not isinstance(size, int) or isinstance(size, bool) or size < 8:
            raise ValueError(f"size must be an int >= 8 (pixels), got {size!r}")
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if isinstance(images, torch.Tensor):
            images = self._checked(images.detach().cpu().clone())  # (not the caller's to change)
            default_name = f"{len(images)} images"
        else:
            files = _files(images)
            default_name = (Path(os.path.abspath(images)).name or str(images)) if isinstance(
                images, str | os.PathLike) \
                else f"{len(files)} images"  # ("." named by its folder; a link by its own name)
            images = torch.stack([_square_image(p, size) for p in tqdm(
                files, desc=f"read {default_name}", leave=False,
                disable=len(files) < QUIET_BELOW)])
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.images = images
        self.name = name if name is not None else default_name
        self.sha256 = tensor_digest(images)

    @staticmethod
    def _checked(images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
            raise ValueError(f"example images must be a tensor (N >= 1, 3, H, W), got shape "
                             f"{tuple(images.shape)}: stack RGB images, channels first")
        if images.dtype != torch.uint8:
            if not images.is_floating_point():
                raise TypeError(f"example images must be float in [0, 1] or uint8, got "
                                f"{images.dtype}")
            if not torch.isfinite(images).all():
                raise ValueError("example images contain NaN or inf: check how they were "
                                 "made or loaded")
            check_unit_images(images, "example images")
            images = images.float()
        return images.contiguous()

    def __len__(self) -> int:
        return len(self.images)

    # A set is a value: equal to a set of the same name and pixels; copies (a profile is
    # deep-copied) share its images rather than duplicate them (nothing changes them).
    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImagePrompt) and (self.name, self.sha256) == (other.name,
                                                                               other.sha256)

    def __hash__(self) -> int:
        return hash((self.name, self.sha256))

    def __copy__(self) -> ImagePrompt:
        return self

    def __deepcopy__(self, memo: dict) -> ImagePrompt:
        return self

    def __repr__(self) -> str:
        return f"ImagePrompt({self.name!r}, {len(self)} images, sha256 {self.sha256[:12]})"

    def record(self) -> dict:
        """What a search's ``config.json`` keeps of the set (and compares on resume)."""
        return {"images": self.name, "count": len(self), "sha256": self.sha256}

    @torch.no_grad()
    def embed(self, clip) -> torch.Tensor:
        """(N, D) unit float32 embeddings of the examples by ``clip`` (its cutouts, if any,
        drawn from torch's global generator: seed it, as :class:`PromptScorer` does)."""
        out = [clip.encode_image(unit_range(x.to(clip.device)), normalize=False)
               for x in tqdm(self.images.split(EMBED_BATCH), desc=f"embed {self.name}",
                             leave=False, disable=len(self) < QUIET_BELOW)]
        return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1)  # (once, in fp32)


def prompt_record(prompt) -> object:
    """A prompt as a search records it: text as given, example images by :meth:`record`."""
    if isinstance(prompt, ImagePrompt):
        return prompt.record()
    if isinstance(prompt, tuple | list):
        return [prompt_record(p) for p in prompt]
    return prompt
