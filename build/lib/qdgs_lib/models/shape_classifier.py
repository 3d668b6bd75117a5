"""A small CNN that tells triangles from squares (64x64 RGB)."""

from __future__ import annotations

from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.MaxPool2d(2))


class ShapeClassifier(nn.Module):
    def __init__(self, num_classes: int = 2, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(_block(3, width), _block(width, 2 * width),
                                      _block(2 * width, 4 * width), _block(4 * width, 4 * width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.head(self.features(x))
