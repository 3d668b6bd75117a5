"""Small CNNs that tell triangles from squares: the project's and the released code's."""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.MaxPool2d(2))


class ShapeClassifier(nn.Module):
    """The project's shape classifier: four conv3x3-BN-ReLU-maxpool blocks (``width``,
    2x, 4x, 4x channels), global average pooling and a linear layer to ``num_classes``
    logits (0 triangle, 1 square); any image size of at least 16."""

    def __init__(self, num_classes: int = 2, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(_block(3, width), _block(width, 2 * width),
                                      _block(2 * width, 4 * width), _block(4 * width, 4 * width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        """Images (B, 3, H, W), H and W at least 16 -> logits (B, num_classes)."""
        return self.head(self.features(x))


class ReleasedShapeClassifier(nn.Module):
    """The released code's shape classifier (``shapes/train.py``): three conv + ReLU + 2x2
    max-pool layers (16, 32, 64 channels), a 128-unit layer and one output, which it trained
    as sigmoid + binary cross-entropy on 128x128 images. Here that output ``z`` is returned
    as the two logits ``(0, z)``: their softmax cross-entropy is the same loss (softmax(0, z)
    is (1 - sigmoid(z), sigmoid(z))), and argmax picks class 1 where sigmoid(z) > 0.5."""

    def __init__(self, image_size: int = 128):
        super().__init__()
        if image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (three 2x2 pools), got "
                             f"{image_size}")
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, stride=1, padding=1)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc1 = nn.Linear(64 * (image_size // 8) ** 2, 128)
        self.fc2 = nn.Linear(128, 1)

    def forward(self, x):
        """Images (B, 3, image_size, image_size) -> logits (B, 2) ``(0, z)``, z the released
        network's one output (see the class)."""
        for conv in (self.conv1, self.conv2, self.conv3):
            x = self.pool(torch.relu(conv(x)))
        z = self.fc2(torch.relu(self.fc1(x.flatten(1))))
        return torch.cat([torch.zeros_like(z), z], dim=1)


def make_shape_classifier(kind: str, image_size: int) -> nn.Module:
    """``"project"``: :class:`ShapeClassifier`; ``"released"``: :class:`ReleasedShapeClassifier`."""
    if kind == "project":
        return ShapeClassifier()
    if kind == "released":
        return ReleasedShapeClassifier(image_size)
    raise ValueError(f"classifier must be 'project' or 'released', got {kind!r}")
