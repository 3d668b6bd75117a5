"""Training loops (device-agnostic)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


def train_classifier(model: nn.Module, dataset: Dataset, epochs: int, lr: float = 1e-3,
                     batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu",
                     augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     progress: bool = True, desc: str = "train") -> list[float]:
    """Adam + cross-entropy for ``epochs``; returns the mean loss of each epoch."""
    if len(dataset) == 0:
        raise ValueError("cannot train on an empty dataset")
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g,
                        drop_last=len(dataset) > batch_size)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        total, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if augment is not None:
                x = augment(x)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            count += len(y)
        losses.append(total / count)
    return losses
