"""Compare a reproduction's result tables and verdicts with the committed ones.

``make reproduce`` on another CPU type, torch version or GPU rounds floats otherwise, and the
searches and trainings amplify that into other draws of the same experiment: numbers move, and
what matters is whether the conclusions hold. ``python -m qdgs_lib.reproduction`` compares the
CSVs in ``figures/`` with those of a git revision (default ``HEAD``: the committed ones) or of
another folder, column by column, and recomputes every verdict the notebooks print
(:mod:`qdgs_lib.claims`) from both sets of tables, side by side.
"""

from __future__ import annotations

import argparse
import functools
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from . import claims
from .paths import figures_dir, project_root


class FolderTables:
    """The CSVs of a folder: ``tables(name)`` is a CSV's bytes (None where absent),
    ``tables.names()`` the CSVs there are."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"no figures folder at {self.folder}")

    def __call__(self, name: str) -> bytes | None:
        path = self.folder / name
        return path.read_bytes() if path.is_file() else None

    def names(self) -> list[str]:
        """The names of the folder's ``.csv`` files, sorted."""
        return sorted(p.name for p in self.folder.glob("*.csv"))

    def __str__(self) -> str:
        return str(self.folder)


class GitTables:
    """The CSVs of ``folder`` as committed at ``revision`` of the git checkout ``repo``
    (default: this project's), read as :class:`FolderTables`."""

    def __init__(self, revision: str = "HEAD", repo: str | Path | None = None,
                 folder: str = "figures"):
        self.repo = Path(repo) if repo is not None else project_root()
        self.revision, self.folder = revision, folder
        if self._git("rev-parse", "--git-dir").returncode != 0:
            raise ValueError(f"{self.repo} is not a git checkout: give the reference tables "
                             "as a folder instead (--ref-dir)")
        if self._git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").returncode:
            raise ValueError(f"no revision {revision!r} in {self.repo} (a commit, branch or "
                             "tag, e.g. HEAD~1 or main)")

    def _git(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(self.repo), *args], capture_output=True)

    def __call__(self, name: str) -> bytes | None:
        out = self._git("show", f"{self.revision}:{self.folder}/{name}")
        return out.stdout if out.returncode == 0 else None

    def names(self) -> list[str]:
        """The names of the ``.csv`` files directly in ``folder`` at ``revision``, sorted
        (empty where git lists none)."""
        out = self._git("ls-tree", "--name-only", self.revision, f"{self.folder}/")
        return sorted(Path(p).name for p in out.stdout.decode().splitlines()
                      if p.endswith(".csv"))

    def __str__(self) -> str:
        return f"git {self.revision}"


Reader = Callable[[str], bytes | None]  # a CSV's name -> its bytes, None where absent


def folder_reader(folder: str | Path) -> FolderTables:
    """The tables of ``folder``."""
    return FolderTables(folder)


def git_reader(revision: str = "HEAD", repo: str | Path | None = None,
               folder: str = "figures") -> GitTables:
    """The tables of ``folder`` as committed at ``revision`` of the git checkout ``repo``
    (default: this project's)."""
    return GitTables(revision, repo, folder)


def column_drift(ref: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Per column of two tables of the same shape: how many cells differ, and for numbers the
    largest absolute difference and that relative to the column's largest reference value."""
    if set(ref.columns) == set(new.columns) and len(ref.columns) == len(new.columns):
        new = new[list(ref.columns)]  # the same columns in another order: compared by name
    if list(ref.columns) != list(new.columns) or ref.shape != new.shape:
        raise ValueError(f"the tables differ in shape or columns ({ref.shape} vs {new.shape}; "
                         f"columns only in one: "
                         f"{sorted(set(ref.columns) ^ set(new.columns))}): they come from "
                         "different code or profiles, not a rerun")
    rows = {}
    for col in ref.columns:
        a, b = ref[col], new[col]
        numeric = pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b)
        if numeric:
            x, y = a.to_numpy(float), b.to_numpy(float)
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            # a cell that became (or stopped being) NaN or inf moved without bound
            with np.errstate(invalid="ignore"):  # inf - inf: NaN, then unbounded below
                diff = np.where(same, 0.0, np.abs(x - y))
            biggest = float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0
            finite = np.abs(x[np.isfinite(x)])
            scale = float(finite.max()) if finite.size else 0.0
            rows[col] = {"cells differ": int((~same).sum()), "max |diff|": biggest,
                         "max |diff| / scale": biggest / scale if scale > 0 else np.nan}
        else:
            differ = (a.astype(str) != b.astype(str)).sum()
            rows[col] = {"cells differ": int(differ), "max |diff|": np.nan,
                         "max |diff| / scale": np.nan}
    return pd.DataFrame.from_dict(rows, orient="index")


def _csv(read: Reader, name: str, **kw) -> pd.DataFrame | None:
    data = read(name)
    if data is None:
        return None
    try:
        return pd.read_csv(io.BytesIO(data), **kw)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{name} is empty") from None


def _fairness_groups(results: pd.DataFrame, benchmark: str) -> list[str]:
    """The group columns (between ``all`` and ``fair_mean``) a benchmark has values in."""
    cols = list(results.columns)
    inner = cols[cols.index("all") + 1:cols.index("fair_mean")]
    rows = results[results.benchmark == benchmark]
    return [c for c in inner if rows[c].notna().all()]


def _shapes(read: Reader) -> dict[str, str]:
    results = _csv(read, "01_shapes_results.csv")
    if results is None:
        return {}
    return {f"01 shapes, bias {bias:g}": v
            for bias, v in claims.shapes_verdicts(results)["verdict"].items()}


def _label_audit(read: Reader) -> dict[str, str]:
    audit = _csv(read, "01_shapes_label_audit.csv", index_col=0)
    if audit is None:
        return {}
    per_seed = audit[audit.index.astype(str).str.contains(" seed ")]
    return {f"01 label audit: {col}": v
            for col, v in claims.label_audit_verdicts(per_seed)["verdict"].items()}


def _shares(read: Reader) -> dict[str, str]:
    shares = _csv(read, "02_faces_shares.csv", index_col=0)
    if shares is None:
        return {}
    return {f"02 share: {col}": v
            for col, v in claims.share_verdicts(shares)["verdict"].items()}


def _fairness(read: Reader) -> dict[str, str]:
    results = _csv(read, "04_results.csv")
    if results is None:
        return {}
    out = {}
    for bench in results.benchmark.unique():
        groups = _fairness_groups(results, bench)
        if groups:
            table = claims.fairness_verdicts(results, bench, groups)
            for _, r in table.iterrows():
                out[f"04 fairness on {bench}, QDGS vs {r['versus']}"] = r["verdict"]
    return out


CLAIMS = {"01 shapes": _shapes, "01 label audit": _label_audit, "02 shares": _shares,
          "04 fairness": _fairness}


def verdicts(read: Reader) -> pd.Series:
    """Every verdict the notebooks print, recomputed from the result tables ``read`` gives
    (those absent are left out), by claim: "01 shapes, bias 0.98", "02 share: true dark
    skin", ...; a table of another layout gives one "(cannot compute: why)" for its claims."""
    out: dict[str, str] = {}
    for group, recompute in CLAIMS.items():
        try:
            out.update(recompute(read))
        except (ValueError, KeyError, AttributeError, IndexError) as e:
            out[f"{group} (all)"] = f"(cannot compute: {type(e).__name__}: {e})"
    return pd.Series(out, dtype=object)


def compare(new: Reader, ref: Reader, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(drift, verdicts) of the CSVs ``names``: one drift row per column of each table
    (:func:`column_drift`; a byte-identical table is one row, "identical"), and the verdicts
    of both sides with ``same`` (True where they agree)."""
    ref, new = functools.cache(ref), functools.cache(new)  # each table read once for both
    drift = []
    for name in names:
        a, b = ref(name), new(name)
        if a is None or b is None:
            drift.append(pd.DataFrame({"file": [name], "column": ["(missing in the "
                                       f"{'reference' if a is None else 'reproduction'})"]}))
        elif a == b:
            drift.append(pd.DataFrame({"file": [name], "column": ["(identical)"],
                                       "cells differ": [0]}))
        else:
            try:
                d = column_drift(pd.read_csv(io.BytesIO(a)), pd.read_csv(io.BytesIO(b)))
            except ValueError as e:  # another layout: reported, the other tables still compared
                drift.append(pd.DataFrame({"file": [name], "column": [f"(not comparable: {e})"]}))
                continue
            drift.append(d.rename_axis("column").reset_index().assign(file=name))
    drift = pd.concat(drift, ignore_index=True)
    drift = drift[["file", "column", *[c for c in drift.columns if c not in ("file", "column")]]]
    ref_v, new_v = verdicts(ref), verdicts(new)
    table = pd.DataFrame({"reference": ref_v, "reproduction": new_v})
    table["same"] = table["reference"] == table["reproduction"]
    return drift, table


def main(argv: list[str] | None = None) -> int:
    """``python -m qdgs_lib.reproduction [FIGURES] [--ref REV | --ref-dir DIR]``: print the
    drift of every result CSV and the verdicts of both sides; exit status 1 where a verdict
    changed (or a table is missing)."""
    ap = argparse.ArgumentParser(prog="python -m qdgs_lib.reproduction", description=__doc__
                                 .split("\n\n")[0])
    ap.add_argument("figures", nargs="?", default=None,
                    help="the reproduction's figures folder (default: the project's figures/)")
    ap.add_argument("--ref", default="HEAD", help="git revision of the reference tables "
                    "(default HEAD: the committed ones)")
    ap.add_argument("--ref-dir", default=None, help="a folder of reference tables instead")
    args = ap.parse_args(argv)
    folder = Path(args.figures) if args.figures else figures_dir()
    try:
        new = folder_reader(folder)
        ref = folder_reader(args.ref_dir) if args.ref_dir else git_reader(args.ref)
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    if not new.names():
        print(f"no result CSVs in {folder}: run make reproduce first", file=sys.stderr)
        return 1
    names = sorted(set(new.names()) | set(ref.names()))  # (one side's missing tables too)
    drift, table = compare(new, ref, names)
    table[["reference", "reproduction"]] = table[["reference", "reproduction"]].fillna(
        "(no table)")
    with pd.option_context("display.width", 200, "display.max_rows", None,
                           "display.max_colwidth", 70, "display.float_format", "{:.3g}".format):
        print(f"== {folder} against {ref}: drift per column")
        print(drift.to_string(index=False))
    print(f"\n== verdicts ({len(table)})")
    for claim, r in table.iterrows():
        print(f"  same     {claim}: {r['reference']}" if r["same"] else
              f"  CHANGED  {claim}: {r['reference']} -> {r['reproduction']}")
    changed = int((~table["same"]).sum())
    missing = int(drift["column"].astype(str).str.startswith(("(missing", "(not comp")).sum())
    print(f"\n{len(table) - changed} of {len(table)} verdicts the same; {changed} changed"
          + (f"; {missing} table(s) missing or not comparable" if missing else ""))
    return 1 if changed or missing else 0


if __name__ == "__main__":
    sys.exit(main())
