"""Evaluation: per-group and balanced accuracy."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .utils import resolve_device, unit_range


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
            device: str | torch.device = "auto") -> np.ndarray:
    """Predicted class (argmax of the logits) of each image, in eval mode and batches of
    ``batch_size`` on ``device`` (the model is moved there)."""
    device = resolve_device(device)
    model.to(device).eval()
    out = [model(images[i:i + batch_size].to(device)).argmax(1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def group_accuracy(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                   names: list[str] | None = None) -> dict[str, float]:
    """Accuracy within each group and their unweighted mean ("balanced accuracy")."""
    pred, labels, groups = map(np.asarray, (pred, labels, groups))
    if not (len(pred) == len(labels) == len(groups)):
        raise ValueError("pred, labels and groups must have the same length")
    out = {}
    for gid in np.unique(groups):
        mask = groups == gid
        key = names[gid] if names else str(gid)
        out[key] = float((pred[mask] == labels[mask]).mean())
    out["mean"] = float(np.mean(list(out.values())))
    return out


# --- face verification ------------------------------------------------------------------------
@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 128,
          device: str | torch.device = "auto", flip: bool = True,
          transform=None) -> np.ndarray:
    """L2-normalized embeddings; with ``flip``, of the sum of the image's and its mirror's
    features (the InsightFace protocol). ``model`` returns features or (features, norms).
    ``images``: float in [0, 1], or uint8, scaled to [0, 1] a batch at a time."""
    device = resolve_device(device)
    model.to(device).eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = unit_range(images[i:i + batch_size].to(device))
        if transform is not None:
            x = transform(x)
        f = _features(model(x))
        if flip:
            f = f + _features(model(x.flip(-1)))
        out.append(torch.nn.functional.normalize(f, dim=1).cpu())
    return torch.cat(out).numpy()


def _features(out) -> torch.Tensor:
    if isinstance(out, tuple | list):
        feats, norms = out[0], out[1]
        return feats * norms  # un-normalized features, as the AdaFace evaluation does
    return out


def contiguous_folds(n: int, n_folds: int = 10) -> np.ndarray:
    """Fold id per item: KFold without shuffling (contiguous blocks)."""
    if n < n_folds:
        raise ValueError(f"need at least {n_folds} pairs for {n_folds}-fold evaluation, got {n}")
    folds = np.zeros(n, dtype=int)
    for k, idx in enumerate(np.array_split(np.arange(n), n_folds)):
        folds[idx] = k
    return folds


def verification_accuracy(emb: np.ndarray, issame: np.ndarray, n_folds: int = 10,
                          folds: np.ndarray | None = None,
                          thresholds: np.ndarray | None = None) -> dict[str, float]:
    """The standard 10-fold protocol on pairs ``emb[2i], emb[2i+1]``.

    Squared L2 distance between unit embeddings; for each fold the threshold (from
    ``arange(0, 4, 0.01)``, first best) is chosen on the other folds and accuracy measured
    on it. Returns mean and std of the fold accuracies.
    """
    issame = np.asarray(issame, dtype=bool)
    if len(emb) != 2 * len(issame):
        raise ValueError(f"{len(emb)} embeddings for {len(issame)} pairs")
    if not np.isfinite(emb).all():   # NaN distances pass no threshold: a silent 0.5
        raise ValueError(f"{int((~np.isfinite(emb)).any(1).sum())} embeddings hold NaN/inf: "
                         "the model's weights or the images are broken")
    dist = ((emb[0::2] - emb[1::2]) ** 2).sum(1)
    thresholds = np.arange(0, 4, 0.01) if thresholds is None else thresholds
    folds = contiguous_folds(len(issame), n_folds) if folds is None else np.asarray(folds)
    if len(np.unique(folds)) < 2:  # the threshold is chosen on the other folds
        raise ValueError(f"all {len(issame)} pairs are in one fold: the protocol picks each "
                         "fold's threshold on the other folds, so it needs at least 2 (RFW "
                         "gives a race with fewer than 10 pairs a single fold: read more "
                         "pairs, e.g. a larger limit_per_race)")
    pred = dist[None, :] < thresholds[:, None]  # (T, N)
    correct = pred == issame[None, :]
    accs, best = [], []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        t = int(np.argmax(correct[:, train].mean(1)))
        best.append(float(thresholds[t]))
        accs.append(float(correct[t, test].mean()))
    return {"accuracy": float(np.mean(accs)), "std": float(np.std(accs)),
            "threshold": float(np.mean(best)), "folds": len(accs)}


def fairness(group_acc: dict[str, float]) -> dict[str, float]:
    """Mean and (population) std of per-group accuracy, and the skewed error ratio
    SER = highest error / lowest error (1 when no group makes an error: all are equal; inf
    when only some make none)."""
    acc = np.array(list(group_acc.values()), dtype=float)
    if len(acc) < 2:
        raise ValueError("fairness needs at least two groups")
    err = 1 - acc
    if err.max() == 0:
        ser = 1.0
    elif err.min() == 0:
        ser = float("inf")
    else:
        ser = float(err.max() / err.min())
    return {"mean": float(acc.mean()), "std": float(acc.std()), "ser": ser}


def group_verification(emb: np.ndarray, issame: np.ndarray, groups: np.ndarray,
                       names: list[str] | None = None, n_folds: int = 10,
                       folds: np.ndarray | None = None,
                       thresholds: np.ndarray | None = None) -> dict[str, float]:
    """10-fold verification accuracy within each group of pairs, then fairness summary, then
    each group's distance threshold (``threshold <group>``, the mean over folds).
    ``thresholds``: the candidates (:func:`verification_accuracy`; InsightFace's grid by
    default)."""
    groups = np.asarray(groups)
    out, chosen = {}, {}
    for g in np.unique(groups):
        mask = groups == g
        idx = np.flatnonzero(mask)
        e = emb.reshape(-1, 2, emb.shape[1])[idx].reshape(-1, emb.shape[1])
        f = None if folds is None else np.asarray(folds)[mask]
        key = names[g] if names else str(g)
        res = verification_accuracy(e, np.asarray(issame)[mask], n_folds, f, thresholds)
        out[key], chosen[f"threshold {key}"] = res["accuracy"], res["threshold"]
    return {**out, **{f"fair_{k}": v for k, v in fairness(out).items()}, **chosen}
