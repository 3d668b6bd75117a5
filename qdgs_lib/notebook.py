"""The first cell of every notebook as one call: profile, asset check, run folders, run record.

``start`` checks every file the notebook's section needs *before* any folder is created, picks
the device ("auto": CUDA when available), writes ``config.json`` (parameters, device, package
versions) next to the outputs, and labels plumbing-check runs (random weights) on every figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import plots
from .assets import check_assets, fingerprint, required_assets
from .paths import notebook_dirs
from .profiles import get_profile, parse_overrides, profile_name
from .utils import resolve_device, write_run_info

PLUMBING_LABEL = "RANDOM WEIGHTS - plumbing check, not a result"


def _repo_relative(path: Path) -> Path:
    from .paths import REPO_ROOT

    path = Path(path).resolve()
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


@dataclass
class NotebookRun:
    profile: str
    p: dict[str, Any]
    fig_dir: Path
    run_dir: Path
    device: torch.device


def start(notebook: str, profile: str | None, section: str,
          overrides: dict | str | None = None, device: str | torch.device = "auto",
          part: str | None = None) -> NotebookRun:
    """Resolve the profile (``overrides``: a dict or a JSON string) and device, check assets
    (``part``: what of a "recognition" section this notebook reads: "train" or "eval"),
    create the run folders, record the run (with the sha256 of the inputs read from disk)."""
    name = profile_name(profile)
    overrides = parse_overrides(overrides)
    p = get_profile(name, section, **overrides)
    dev = resolve_device(device)
    check_assets(name, section, part, **overrides)
    inputs = {str(_repo_relative(a.path)): fingerprint(a.path)
              for a in required_assets(name, section, part, **overrides)}
    fig_dir, run_dir = notebook_dirs(notebook, name)
    record = {"profile": name, "device": str(dev), **p, "inputs": inputs}
    write_run_info(run_dir, record, also=fig_dir / f"{notebook}_config.json")
    plots.set_watermark(PLUMBING_LABEL if p["plumbing_check"] else None)
    if p["plumbing_check"]:
        (run_dir / "RANDOM_WEIGHTS.txt").write_text(
            f"{PLUMBING_LABEL}: profile '{name}' runs the paper's architectures and file "
            "formats on random-weight assets (qdgs_lib.plumbing). Its numbers mean nothing.\n")
        print(f"*** {PLUMBING_LABEL} ***")
    return NotebookRun(name, p, fig_dir, run_dir, dev)
