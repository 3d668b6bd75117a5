"""What each archive axis means: one :class:`Measure` record per CLIP prompt pair.

A profile's ``measures`` is a tuple of records; the scorer's prompts, the archive's grid and
ranges, the plots' labels, the toy world's ground truth and the datasets' balancing bins are all
read from it, so adding or reordering a measure is one edit. Code names a measure by ``key``
(``index(p, "skin")``), never by position.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .image_prompts import ImagePrompt
from .paths import in_data_dir


@dataclass(frozen=True)
class Measure:
    """One measure: ``angdist(e, negative) - angdist(e, positive)`` of an image embedding e.

    Args:
        key: short name code refers to (``"skin"``).
        positive, negative: the prompt pair; the measure grows towards ``positive``. Text, or
            example images: an :class:`ImagePrompt`, or (JSON overrides) a dict
            ``{"images": folder or list of files, "name": ...}`` (see :func:`as_prompt`);
            both of a pair text, or both images.
        label: axis label for plots.
        range: archive range (low, high) of the measure for this profile's CLIP.
        bins: archive cells along this measure.
        attribute: the toy world's true attribute the measure should track
            (:func:`qdgs_lib.generators.toy_faces.attributes` key), if any.
        sign: +1 if ``positive`` means a high ``attribute``, -1 if it means a low one.
        balanced: face datasets bin the solutions by this measure's three ranges
            ``(-inf, -e), (-e, e), (e, inf)`` (``e``: the profile's ``bin_edge``; the paper
            bins skin tone and gender) and form identities within a bin. The bins are not
            equalized: they hold what the archive holds (a QDGS archive spreads over the
            measures, so its bins are far more even than random sampling's, not equal).
    """

    key: str
    positive: str
    negative: str
    label: str
    range: tuple[float, float]
    bins: int
    attribute: str | None = None
    sign: int = 1
    balanced: bool = False

    def __post_init__(self):
        for end in ("positive", "negative"):
            object.__setattr__(self, end, as_prompt(getattr(self, end),
                                                    f"measure {self.key!r}'s {end}"))
        check_pair((self.positive, self.negative), f"measure {self.key!r}")
        lo, hi = (float(v) for v in self.range)
        object.__setattr__(self, "range", (lo, hi))
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"measure {self.key!r}: range needs finite low < high, got "
                             f"{self.range}")
        if int(self.bins) != self.bins or self.bins < 1:
            raise ValueError(f"measure {self.key!r}: bins must be a positive int, got "
                             f"{self.bins!r}")
        if self.sign not in (1, -1):
            raise ValueError(f"measure {self.key!r}: sign must be +1 or -1, got {self.sign!r}")

    @property
    def prompts(self) -> tuple[str | ImagePrompt, str | ImagePrompt]:
        """``(positive, negative)``: the prompt pair (text or :class:`ImagePrompt`) as the scorer
        takes it."""
        return (self.positive, self.negative)

    def oriented(self, attribute_values):
        """The true attribute oriented like the prompt (high = more like ``positive``)."""
        return attribute_values if self.sign > 0 else 1 - attribute_values

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measure:
        """From a JSON-like dict (papermill overrides); ``range`` may be a list."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown measure field(s) {sorted(unknown)}; known: "
                             f"{sorted(fields)}")
        d = dict(d)
        if "range" in d:
            d["range"] = tuple(d["range"])
        return cls(**d)


def text_alternatives(p: str | Iterable[str]) -> list[str]:
    """``"a | b"`` or ``["a", "b"]`` -> ["a", "b"] (the scorer averages
    distances over alternatives); TypeError for anything but text, ValueError for none."""
    items = [p] if isinstance(p, str) else list(p) if isinstance(p, Iterable) else None
    if items is None or not all(isinstance(item, str) for item in items):
        raise TypeError(f"a prompt is a string (alternatives joined by '|'), a list of "
                        f"strings or example images (qdgs_lib.image_prompts.ImagePrompt), "
                        f"got {p!r}")
    out = [s.strip() for item in items for s in item.split("|") if s.strip()]
    if not out:
        raise ValueError(f"empty prompt: {p!r}")
    return out


def as_prompt(value: Any, where: str = "prompt") -> str | ImagePrompt:
    """A prompt as a profile gives it: text (alternatives: ``"a | b"`` or a list of strings,
    kept as a tuple), an :class:`ImagePrompt`, or (JSON overrides) a
    dict ``{"images": folder or [files], "name": str, "size": int}`` read into one (``name``
    and ``size`` optional; relative paths are under the data folder, as the profile's other
    paths: ``{"images": "examples/smiling"}`` is ``data/examples/smiling``)."""
    if isinstance(value, ImagePrompt):
        return value
    if isinstance(value, str) or (isinstance(value, list | tuple) and value
                                  and all(isinstance(v, str) for v in value)):
        try:
            text_alternatives(value)  # (as the scorer will split them)
        except ValueError:
            raise ValueError(f"{where} is empty ({value!r}): give a sentence, e.g. 'A person "
                             "with dark skin.', or example images ({'images': 'folder'})"
                             ) from None
        return value if isinstance(value, str) else tuple(value)  # (averaged, as "a | b")
    if isinstance(value, dict):
        unknown = set(value) - {"images", "name", "size"}
        if "images" not in value or unknown:
            raise ValueError(f"{where}: example images are given as {{'images': folder or "
                             f"list of files, 'name': optional, 'size': optional}}, got keys "
                             f"{sorted(value)}")
        images = value["images"]
        if isinstance(images, str | os.PathLike):
            images = in_data_dir(images)
        elif isinstance(images, list | tuple) and all(isinstance(v, str | os.PathLike)
                                                       for v in images):
            images = [in_data_dir(v) for v in images]
        else:
            raise ValueError(f"{where}: 'images' must be a folder or a list of image files "
                             f"(paths; relative ones under the data folder), got {images!r}")
        return ImagePrompt(images, name=value.get("name"), size=value.get("size", 224))
    raise ValueError(f"{where} must be text (a string, or a list of alternative strings) or "
                     f"example images ({{'images': folder}} or an ImagePrompt), got {value!r} "
                     f"({type(value).__name__})")


def check_pair(pair: Sequence, where: str) -> None:
    """A prompt pair is both text or both example images (the scorer's rule, checked when a
    profile is read rather than when the search starts)."""
    if isinstance(pair[0], ImagePrompt) != isinstance(pair[1], ImagePrompt):
        raise ValueError(
            f"{where} mixes example images with text ({pair[0]!r}, {pair[1]!r}): CLIP's image "
            "embeddings lie much closer to each other than to any text (the modality gap), so "
            "such a measure says how much an image looks like the examples rather than which "
            "end of the attribute it is nearer; give both ends as example images (ImagePrompt, "
            "or {'images': folder} in overrides) or both as text")


def placed(measures: Sequence[Measure], ranges: Iterable | None = None,
           bins: Iterable[int] | None = None) -> tuple[Measure, ...]:
    """The same measures with new archive ranges and/or bins (one per measure)."""
    out = tuple(measures)
    for name, values in (("range", ranges), ("bins", bins)):
        if values is None:
            continue
        values = list(values)
        if len(values) != len(out):
            raise ValueError(f"{len(values)} {name} values for {len(out)} measures "
                             f"({[m.key for m in out]})")
        out = tuple(dataclasses.replace(m, **{name: tuple(v) if name == "range" else v})
                    for m, v in zip(out, values, strict=True))
    return out


def as_measures(value: Iterable) -> tuple[Measure, ...]:
    """Records from records or dicts, keys checked unique."""
    out = tuple(v if isinstance(v, Measure) else Measure.from_dict(v) for v in value)
    keys = [m.key for m in out]
    if len(set(keys)) != len(keys):
        raise ValueError(f"measure keys must be unique, got {keys}")
    return out


def index(p: dict[str, Any], key: str) -> int:
    """Position of measure ``key`` in a profile section (its column in measure arrays)."""
    keys = [m.key for m in p["measures"]]
    if key not in keys:
        raise KeyError(f"no measure {key!r} in this profile; measures: {keys}")
    return keys.index(key)


def prompts(p: dict[str, Any]) -> list[tuple[str, str]]:
    """The (positive, negative) prompt pair of each measure of a profile section, in order
    (what the scorer encodes)."""
    return [m.prompts for m in p["measures"]]


def labels(p: dict[str, Any]) -> list[str]:
    """The plot axis label of each measure of a profile section, in order."""
    return [m.label for m in p["measures"]]


def ranges(p: dict[str, Any]) -> tuple[tuple[float, float], ...]:
    """The archive range (low, high) of each measure of a profile section, in order."""
    return tuple(m.range for m in p["measures"])


def grid(p: dict[str, Any]) -> tuple[int, ...]:
    """The archive's cells along each measure of a profile section: its grid shape."""
    return tuple(int(m.bins) for m in p["measures"])


def dataset_bins(p: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """Bins that face datasets group solutions by (identities form within a bin): three per
    ``balanced`` measure, split at +-``bin_edge``; one unbounded bin for the others. Counts
    per bin are not equalized (:func:`qdgs_lib.sampling.balanced_indices` does that)."""
    e = p["bin_edge"]
    three = [(-np.inf, -e), (-e, e), (e, np.inf)]
    return [three if m.balanced else [(-np.inf, np.inf)] for m in p["measures"]]


def ranges_from_samples(measures: np.ndarray, q: float = 0.01,
                        step: float | None = None) -> tuple[tuple[float, float], ...]:
    """Archive ranges for new prompts: per measure (column), the [q, 1 - q] quantiles of the
    measures of samples (e.g. the generator's prior, or balanced renders), rounded outwards to
    ``step``. ``None``: 0.05 (how the default profiles' ranges were set) for a measure
    that spreads over 0.5 or more, else the largest 1, 2 or 5 x 10^k within a tenth of its
    spread (random-weight or weakly prompted CLIPs spread measures over 1e-3..1e-2: 0.05
    steps would leave most of a grid unreachable)."""
    measures = np.asarray(measures, dtype=float)
    if measures.ndim != 2 or len(measures) < 2:
        raise ValueError(f"measures must be (N >= 2 samples, measures), got {measures.shape}")
    if not np.isfinite(measures).all():
        raise ValueError("measures contain NaN or inf: check the generator's images")
    if not 0 <= q < 0.5:
        raise ValueError(f"q must lie in [0, 0.5), got {q}")
    if step is not None and not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    lo, hi = np.quantile(measures, q, axis=0), np.quantile(measures, 1 - q, axis=0)
    flat = [k for k, spread in enumerate(hi - lo) if not spread >= 1e-4]
    if flat:
        warnings.warn(f"measure(s) {flat} barely vary over these {len(measures)} samples "
                      f"(spread {[float(f'{hi[k] - lo[k]:.2g}') for k in flat]}): their "
                      "prompts do not tell the generator's images apart (a CLIP that does not "
                      "know the attribute, or prompts about something the images do not "
                      "show); an archive over them sorts rounding noise", stacklevel=2)
    return tuple(_round_outwards(a, b, step if step is not None else _step_for(b - a))
                 for a, b in zip(lo, hi, strict=True))


def _step_for(spread: float) -> float:
    """0.05, or the largest 1, 2 or 5 x 10^k <= spread / 10 for a spread under 0.5."""
    if spread >= 0.5 or not spread > 0:
        return 0.05
    scale = 10.0 ** math.floor(math.log10(spread / 10))
    return next(m * scale for m in (5, 2, 1) if m * scale <= spread / 10 * (1 + 1e-9))


def _round_outwards(lo: float, hi: float, step: float) -> tuple[float, float]:
    per = round(1 / step)
    if abs(1 / step - per) > 1e-9 * per:  # a step like 0.3: multiples of it
        per = 1 / step
    # steps of 1 / per as (x * 20) / 20, not (x / 0.05) * 0.05: 0.35, not 0.35000000000000003
    k_lo, k_hi = math.floor(lo * per), math.ceil(hi * per)
    k_hi = max(k_hi, k_lo + 1)  # a measure that never varied still gets one step
    digits = max(12, 6 - math.floor(math.log10(step)))  # (steps below 1e-6 too)
    return float(round(k_lo / per, digits)), float(round(k_hi / per, digits))
