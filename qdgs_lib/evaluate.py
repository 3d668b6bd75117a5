"""Evaluation: per-group and balanced accuracy."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
            device: str | torch.device = "cpu") -> np.ndarray:
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
