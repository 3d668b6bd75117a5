"""IR-ResNet backbones for face recognition (as used by AdaFace), 112x112 input.

Input stem Conv3x3(3->64)-BN-PReLU; BasicBlockIR = BN-Conv3x3-BN-PReLU-Conv3x3(stride)-BN with
a MaxPool(1, stride) or Conv1x1-BN shortcut; four stages; output BN2d-Dropout-Flatten-Linear-
BN1d(affine=False). ``forward`` returns (unit embedding, norm), the norm being what AdaFace
adapts its margin to.
"""

from __future__ import annotations

import torch
from torch import nn

LAYOUTS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3),
           101: (3, 13, 30, 3)}


class BasicBlockIR(nn.Module):
    """The IR residual block: BN-Conv3x3-BN-PReLU-Conv3x3(``stride``)-BN, plus a
    MaxPool(1, ``stride``) shortcut when ``cin == cout``, else Conv1x1(``stride``)-BN."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        if cin == cout:
            self.shortcut = nn.MaxPool2d(1, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
        self.residual = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
            nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        """Residual branch plus shortcut: (B, cin, H, W) -> (B, cout, H / stride, W / stride)."""
        return self.residual(x) + self.shortcut(x)


class IResNet(nn.Module):
    """IR-ResNet. ``depth`` in {18, 34, 50, 100/101}; ``width`` scales the channels
    (1.0: 64/128/256/512); ``input_size`` 112 (paper) or smaller for the CPU variant."""

    def __init__(self, depth: int = 50, width: float = 1.0, embedding_dim: int = 512,
                 input_size: int = 112, dropout: float = 0.4, layout=None):
        super().__init__()
        if layout is None:
            if depth not in LAYOUTS:
                raise ValueError(f"depth must be one of {sorted(LAYOUTS)}, got {depth}")
            layout = LAYOUTS[depth]
        if input_size % 16:
            raise ValueError(f"input_size must be divisible by 16, got {input_size}")
        chans = [max(8, int(c * width)) for c in (64, 128, 256, 512)]
        self.input_size, self.embedding_dim = input_size, embedding_dim
        self.depth = depth
        self.stem = nn.Sequential(nn.Conv2d(3, chans[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(chans[0]), nn.PReLU(chans[0]))
        blocks, cin = [], chans[0]
        for cout, n in zip(chans, layout, strict=True):
            blocks.append(BasicBlockIR(cin, cout, 2))
            blocks += [BasicBlockIR(cout, cout, 1) for _ in range(n - 1)]
            cin = cout
        self.body = nn.Sequential(*blocks)
        side = input_size // 16
        self.output = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(dropout), nn.Flatten(),
                                    nn.Linear(cin * side * side, embedding_dim),
                                    nn.BatchNorm1d(embedding_dim, affine=False))
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, input_size, input_size) -> (unit embeddings (B, embedding_dim), their norms
        (B, 1)): the norm is AdaFace's image-quality proxy. ValueError for another input size."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(f"expected {self.input_size}x{self.input_size} input, "
                             f"got {tuple(x.shape[-2:])}")
        f = self.output(self.body(self.stem(x)))
        norm = f.norm(dim=1, keepdim=True).clamp(min=1e-6)
        return f / norm, norm


def build_iresnet(name: str, **kw) -> IResNet:
    """``"ir18"``, ``"ir50"``, ``"ir101"``, or ``"ir_small"`` (a CPU-sized IR-18 at width 0.25
    for 64x64 input)."""
    if name == "ir_small":
        return IResNet(18, width=0.25, embedding_dim=128, input_size=64, **kw)
    if not name.startswith("ir") or not name[2:].isdigit():
        raise ValueError(f"unknown backbone '{name}'")
    return IResNet(int(name[2:]), **kw)
