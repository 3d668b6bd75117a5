"""The first cell of every notebook as one call: profile, asset check, run folders, run record.

``start`` checks every file the notebook's section needs *before* any folder is created, picks
the device ("auto": CUDA when available), writes ``config.json`` (parameters, device, package
versions) into the run folder, names the profile and its assets under every figure, and labels
plumbing-check runs (random weights) across every figure. The notebook adds what it read from
earlier notebooks (:meth:`NotebookRun.record_inputs`), and :meth:`NotebookRun.finish` copies
the record next to the figures once the notebook has run through (an interrupted run leaves
the figures' record as it was).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import plots
from .assets import check_assets, fingerprint, required_assets
from .paths import in_data_dir, is_released_file, notebook_dirs
from .profiles import (
    get_profile,
    parse_overrides,
    profile_name,
    shared_overrides,
    split_overrides,
)
from .utils import resolve_device, write_run_info

PLUMBING_LABEL = "RANDOM WEIGHTS - plumbing check, not a result"


def _repo_relative(path: Path) -> Path:
    from .paths import REPO_ROOT

    path = Path(path).resolve()
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def provenance(profile: str, section: str, p: dict[str, Any]) -> str:
    """One line under every figure: the profile and the assets its numbers come from."""
    def clip(name: str) -> str:
        return (f"CLIP {name} (the project's own small CLIP)" if name.startswith("qdgs-")
                else f"CLIP {name}")

    if section == "shapes":
        vae = p["shapes_vae"]
        if vae is None:
            vae = "the project's shapes VAE"
        elif str(vae).endswith(".safetensors"):
            vae = f"shapes VAE {vae}"
        elif is_released_file(in_data_dir(vae)):
            vae = "the released code's shapes VAE"
        else:
            vae = f"shapes VAE {vae} (in the released code's format)"
        what = f"{vae}, {clip(p['clip'])}"
    elif section == "faces":
        world = ("the project's toy-face world (renderer)" if p["world"] == "toy"
                 else "StyleGAN2-FFHQ-256" if p["stylegan_weights"] is None
                 else f"StyleGAN2 {p['stylegan_weights']}")
        what = f"{world}, {clip(p['clip'])}"
    else:
        real = ("the toy world's biased photos" if p["real_dataset"] is None
                else p["real_dataset"])
        what = f"{p['backbone']} + {p['head']}, real data: {real}"
    weights = " - RANDOM WEIGHTS" if p["plumbing_check"] else ""
    return f"qdgs - profile {profile}{weights}: {what}"


def expect_complete(table, grid: dict[str, Any], values: tuple[str, ...] = (),
                    unit: bool = True,
                    fix: str = "Rerun the cells above (finished parts resume).") -> None:
    """A notebook's last check that a resumed or partial run left no gap: ``table`` has
    exactly one row per combination of ``grid``'s values (column -> values) and its
    ``values`` columns are finite (and in [0, 1] when ``unit``: accuracies, shares). Raises a
    ValueError naming what is missing, repeated or out of range."""
    import itertools
    from collections import Counter

    import numpy as np
    import pandas as pd

    cols = list(grid)
    absent = [c for c in (*cols, *values) if c not in table.columns]
    if absent:
        raise ValueError(f"the table has no column(s) {absent} (it has {list(table.columns)})")

    def same(v):  # 0.9 in float32 is 0.8999999761: numbers compared to 6 decimals
        return round(float(v), 6) if isinstance(v, float | np.floating) else v

    def row(r):
        return dict(zip(cols, r, strict=True))

    have = Counter(tuple(map(same, r)) for r in table[cols].itertuples(index=False))
    want = set(itertools.product(*([same(x) for x in ([v] if isinstance(v, str) else v)]
                                   for v in grid.values())))
    missing = sorted(want - set(have), key=str)
    repeated = sorted((r for r, n in have.items() if n > 1), key=str)
    extra = sorted(set(have) - want, key=str)
    problems = []
    if missing:
        problems.append(f"{len(missing)} row(s) missing, e.g. {row(missing[0])}")
    if repeated:
        problems.append(f"rows repeated, e.g. {row(repeated[0])}")
    if extra:
        problems.append(f"rows not asked for, e.g. {row(extra[0])}")
    for c in values:
        x = pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float)  # text: NaN
        if not np.isfinite(x).all():
            problems.append(f"{c}: {int((~np.isfinite(x)).sum())} NaN/inf value(s)")
        elif unit and ((x < 0) | (x > 1)).any():
            problems.append(f"{c}: values outside [0, 1] ({x.min():.3g} .. {x.max():.3g})")
    if problems:
        raise ValueError(f"incomplete results over {cols}: " + "; ".join(problems) + ". "
                         + fix)


@dataclass
class NotebookRun:
    """What :func:`start` returns: the ``profile`` name, its resolved section ``p``, the
    notebook's figure and run folders, the ``device``, the notebook's name, and the run
    ``record`` (written to the run folder's ``config.json``)."""

    profile: str
    p: dict[str, Any]
    fig_dir: Path
    run_dir: Path
    device: torch.device
    notebook: str = ""
    record: dict[str, Any] = field(default_factory=dict)

    def record_inputs(self, paths: dict[str, str | Path] | list, **fields: Any) -> None:
        """Add files this notebook reads from earlier notebooks (their sha256) and other
        ``fields`` (e.g. the seeds it evaluates) to its run record."""
        paths = paths if isinstance(paths, dict) else {str(_repo_relative(x)): x for x in paths}
        self.record["inputs"].update({k: fingerprint(Path(v)) for k, v in paths.items()})
        self.record.update(fields)
        write_run_info(self.run_dir, self.record)

    def finish(self) -> Path:
        """Copy the run record next to the figures (call at the notebook's end)."""
        path = self.fig_dir / f"{self.notebook}_config.json"
        write_run_info(self.run_dir, self.record, also=path)
        return path


def start(notebook: str, profile: str | None, section: str,
          overrides: dict | str | None = None, device: str | torch.device = "auto",
          part: str | None = None) -> NotebookRun:
    """Resolve the profile (``overrides``: a dict or a JSON string) and device, check assets
    (``part``: what of a "recognition" section this notebook reads: "train" or "eval"),
    create the run folders, record the run (with the sha256 of the inputs read from disk).

    ``overrides`` may hold keys of the profile's other sections (one set for all notebooks):
    they are named and left out here; a key no section takes is refused."""
    name = profile_name(profile)
    overrides = parse_overrides(overrides)
    mine, elsewhere = split_overrides(name, section, overrides)
    if elsewhere:
        print(f"overrides for other notebooks, not used here: {sorted(elsewhere)}")
    shared = shared_overrides(name, section, overrides)
    if shared:
        print(f"overrides {shared} apply here and to the other notebooks that take them; "
              f'for this notebook alone write {{"{section}": {{...}}}}')
    p = get_profile(name, section, **mine)
    dev = resolve_device(device)
    check_assets(name, section, part, **overrides)
    inputs = {str(_repo_relative(a.path)): fingerprint(a.path)
              for a in required_assets(name, section, part, **mine)}
    fig_dir, run_dir = notebook_dirs(notebook, name)
    record = {"profile": name, "device": str(dev), **p, "inputs": inputs}
    write_run_info(run_dir, record)
    plots.set_watermark(PLUMBING_LABEL if p["plumbing_check"] else None)
    plots.set_footer(provenance(name, section, p))
    if p["plumbing_check"]:
        (run_dir / "RANDOM_WEIGHTS.txt").write_text(
            f"{PLUMBING_LABEL}: profile '{name}' runs the paper's architectures and file "
            "formats on random-weight assets (qdgs_lib.plumbing). Its numbers mean nothing.\n")
        print(f"*** {PLUMBING_LABEL} ***")
    return NotebookRun(name, p, fig_dir, run_dir, dev, notebook, record)
