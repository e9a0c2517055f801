"""delf's TF2 Keras ResNet-50 (``research/delf/.../training/model/resnet50.py``) in plain torch.

The layout the public TF2 DELG code trains and exports (``../shared/docs/delg-official-weights.md``
section 2.1), which differs from TF-Slim's ``resnet_v1`` (:mod:`vloc.models.tfslim_resnet`) in ways
that all change the numbers:

- every convolution has a bias; batch-norm epsilon is 1e-3 (Keras' default);
- the stem is a 7x7/2 convolution with TF "SAME" padding (2 before / 3 after for an even size, 3 / 3
  for an odd one), then a 3x3/2 max pool with no padding ("VALID");
- each stage's FIRST unit carries the stride, on its first 1x1 convolution and on its 1x1 shortcut
  (both "VALID": a 1x1/2 convolution reads the even pixels); 3x3 convolutions are "SAME" at stride 1;
- stage 5's first unit has stride 1 and reads block3 subsampled by a 1x1/2 max pool, i.e. exactly
  ``block3[..., ::2, ::2]`` (``block3_strides=True``, delf's default).

Torch module names follow delf's attributes (``conv1``, ``bn_conv1``, ``l2a.conv2a``, ``l2a.bn2a``,
``l3a.conv_shortcut``, ...), so the checkpoint names map one to one (:func:`keras_names`).
Output: ``{"conv4": block3 before the subsampling (B, 1024, h16, w16), "conv5": (B, 2048, h32, w32)}``
with ``h16 = ceil((floor((ceil(H/2) - 3) / 2) + 1) / 4)`` and ``h32 = ceil(h16 / 2)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vloc.models.tf_checkpoint import BN_NAMES

BN_EPS = 1e-3
# stage -> (units, (filters of conv2a, conv2b, conv2c), stride of the first unit)
STAGES: dict[str, tuple[int, tuple[int, int, int], int]] = {
    "l2": (3, (64, 64, 256), 1), "l3": (4, (128, 128, 512), 2), "l4": (6, (256, 256, 1024), 2),
    "l5": (3, (512, 512, 2048), 1)}
UNIT_LETTERS = "abcdef"


def tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero padding of TF's "SAME": total ``max((ceil(n/s) - 1) * s + k - n, 0)``, the odd pixel after."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max((-(-n // stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit(nn.Module):
    """delf's ``_IdentityBlock`` / ``_ConvBlock`` (with ``shortcut``): 1x1 (stride) -> 3x3 -> 1x1, + shortcut, ReLU."""

    def __init__(self, cin: int, filters: tuple[int, int, int], stride: int, shortcut: bool):
        super().__init__()
        f1, f2, f3 = filters
        self.stride = stride
        self.conv2a, self.bn2a = nn.Conv2d(cin, f1, 1, stride=stride), nn.BatchNorm2d(f1, eps=BN_EPS)
        self.conv2b, self.bn2b = nn.Conv2d(f1, f2, 3, padding=1), nn.BatchNorm2d(f2, eps=BN_EPS)
        self.conv2c, self.bn2c = nn.Conv2d(f2, f3, 1), nn.BatchNorm2d(f3, eps=BN_EPS)
        if shortcut:
            self.conv_shortcut = nn.Conv2d(cin, f3, 1, stride=stride)
            self.bn_shortcut = nn.BatchNorm2d(f3, eps=BN_EPS)
        else:
            self.conv_shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn2a(self.conv2a(x)))
        y = F.relu(self.bn2b(self.conv2b(y)))
        y = self.bn2c(self.conv2c(y))
        s = x if self.conv_shortcut is None else self.bn_shortcut(self.conv_shortcut(x))
        return F.relu(y + s)


class KerasDelfResNet50(nn.Module):
    """Input ``(B, 3, H, W)`` float, RGB ``(x - 128) / 128``; output as in the module docstring."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2)
        self.bn_conv1 = nn.BatchNorm2d(64, eps=BN_EPS)
        cin = 64
        for stage, (units, filters, stride) in STAGES.items():
            for u in range(units):
                self.add_module(f"{stage}{UNIT_LETTERS[u]}", Unit(cin, filters, stride if u == 0 else 1, u == 0))
                cin = filters[2]

    def _stage(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        for u in range(STAGES[stage][0]):
            x = getattr(self, f"{stage}{UNIT_LETTERS[u]}")(x)
        return x

    def forward(self, x: torch.Tensor, with_conv5: bool = True) -> dict[str, torch.Tensor]:
        x = F.relu(self.bn_conv1(self.conv1(tf_same_pad(x, 7, 2))))
        x = F.max_pool2d(x, 3, 2)  # "VALID"
        conv4 = self._stage("l4", self._stage("l3", self._stage("l2", x)))
        if not with_conv5:
            return {"conv4": conv4}
        return {"conv4": conv4, "conv5": self._stage("l5", conv4[..., ::2, ::2])}


def keras_names(kernel: str = "kernel") -> dict[str, str]:
    """torch state-dict key -> variable path under the model's ``backbone/`` (``kernel`` or Keras 3's
    ``_kernel``), without the TF2 attribute suffix, for every parameter and BN buffer."""
    pairs = [("conv1", "bn_conv1")]
    for stage, (units, _, _) in STAGES.items():
        for u in range(units):
            unit = f"{stage}{UNIT_LETTERS[u]}"
            pairs += [(f"{unit}.conv2{c}", f"{unit}.bn2{c}") for c in "abc"]
            if u == 0:
                pairs.append((f"{unit}.conv_shortcut", f"{unit}.bn_shortcut"))
    names = {}
    for conv, bn in pairs:
        names[f"{conv}.weight"] = f"{conv.replace('.', '/')}/{kernel}"
        names[f"{conv}.bias"] = f"{conv.replace('.', '/')}/bias"
        for ours, theirs in BN_NAMES:
            names[f"{bn}.{ours}"] = f"{bn.replace('.', '/')}/{theirs}"
    return names
