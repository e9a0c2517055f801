"""ResNet-50 / ResNet-101 laid out exactly as TF-Slim's ``resnet_v1``, so TF-Slim checkpoints load as they are.

Differences from the torchvision layout, all of which change the numbers:

- each block puts its stride in its LAST unit (torchvision: the first); the last unit's shortcut is
  then a plain subsampling ``x[::s, ::s]`` (no projection), the first unit's projection has stride 1;
- a 3x3 convolution with stride 2 pads explicitly (1 before, 1 after) and then runs "VALID"; the
  7x7 stem pads 3 and 3; 3x3 convolutions with stride 1 pad 1 and 1 ("SAME");
- the stem's 3x3/2 max pool pads "SAME": nothing before and 1 after for an even size, 1 and 1
  for an odd one;
- convolutions followed by batch norm have no bias; BN epsilon is 1e-5 (``resnet_arg_scope``).

Blocks (TF-Slim names): block1 (64, stride 2), block2 (128, 2), block3 (256, 2), block4 (512, 1).
Block3's output ("conv4" of the paper, 1024 channels) is at stride 32 in TF-Slim because of the
stride in its last unit. A strided unit equals the same unit at stride 1 followed by ``[::2, ::2]``
(its 3x3 conv is ``conv2d_same``, whose stride-2 result is documented as the stride-1 result
subsampled; everything after it is pointwise). So :class:`TFSlimResNet` runs block3's last unit at
stride 1, returns that stride-16 map as ``conv4`` and feeds ``conv4[..., ::2, ::2]`` to block4: the
stride-32 map of the official extractor is exactly the even cells of our ``conv4``, and ``conv5``
is bit-for-bit the TF-Slim block4 output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vloc.models.tf_checkpoint import BN_NAMES

BN_EPS = 1e-5
# units per block; base depths are 64, 128, 256, 512 and the blocks' strides 2, 2, 2, 1.
DEPTHS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BASE_DEPTHS = (64, 128, 256, 512)
BLOCK_STRIDES = (2, 2, 2, 1)


class ConvBN(nn.Module):
    """TF-Slim ``conv2d`` + ``batch_norm`` (no conv bias), padded as ``conv2d_same`` does."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.relu = relu
        total = kernel - 1  # stride 1 "SAME" and conv2d_same's explicit padding agree on this
        self.pad = (total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad != (0, 0):
            x = F.pad(x, [self.pad[0], self.pad[1], self.pad[0], self.pad[1]])
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class Bottleneck(nn.Module):
    """``bottleneck_v1``: 1x1 -> 3x3 (stride here) -> 1x1, projection shortcut when depths differ."""

    def __init__(self, cin: int, depth: int, bottleneck: int, stride: int):
        super().__init__()
        self.stride = stride
        self.shortcut = ConvBN(cin, depth, 1, stride, relu=False) if cin != depth else None
        self.conv1 = ConvBN(cin, bottleneck, 1)
        self.conv2 = ConvBN(bottleneck, bottleneck, 3, stride)
        self.conv3 = ConvBN(bottleneck, depth, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is not None:
            shortcut = self.shortcut(x)
        else:
            shortcut = x[..., :: self.stride, :: self.stride] if self.stride > 1 else x
        return F.relu(shortcut + self.conv3(self.conv2(self.conv1(x))))


def same_max_pool_3x3_s2(x: torch.Tensor) -> torch.Tensor:
    """TF "SAME" 3x3/2 max pool: pad total ``max((ceil(n/2)-1)*2+3-n, 0)``, the odd pixel at the end."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max(((n + 1) // 2 - 1) * 2 + 3 - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


class TFSlimResNet(nn.Module):
    """``resnet_v1_50`` / ``resnet_v1_101`` backbone without the classifier.

    Input ``(B, 3, H, W)`` float (DELG: RGB ``(x - 128) / 128``). Output ``{"conv4": (B, 1024,
    ceil(H/16), ceil(W/16)), "conv5": (B, 2048, ceil(H/32), ceil(W/32))}`` (see the module docstring
    for why conv4 is at stride 16).
    """

    def __init__(self, depth: int = 50):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"TF-Slim ResNet depth {depth} not supported; valid: {sorted(DEPTHS)}")
        self.depth = depth
        self.conv1 = ConvBN(3, 64, 7, 2)
        blocks, cin = [], 64
        for b, (units, base, stride) in enumerate(zip(DEPTHS[depth], BASE_DEPTHS, BLOCK_STRIDES, strict=True)):
            unit_list = []
            for u in range(units):
                last = u == units - 1
                # block3's last unit runs at stride 1 here; forward() subsamples after it.
                unit_stride = stride if last and b != 2 else 1
                unit_list.append(Bottleneck(cin, base * 4, base, unit_stride))
                cin = base * 4
            blocks.append(nn.Sequential(*unit_list))
        self.block1, self.block2, self.block3, self.block4 = blocks

    def forward(self, x: torch.Tensor, with_conv5: bool = True) -> dict[str, torch.Tensor]:
        x = same_max_pool_3x3_s2(self.conv1(x))
        conv4 = self.block3(self.block2(self.block1(x)))
        if not with_conv5:  # local features only
            return {"conv4": conv4}
        return {"conv4": conv4, "conv5": self.block4(conv4[..., ::2, ::2])}


def tfslim_names(depth: int) -> dict[str, str]:
    """torch state-dict key -> TF-Slim variable name for every parameter and BN buffer."""
    scope = f"resnet_v1_{depth}"
    pairs: list[tuple[str, str]] = [("conv1", f"{scope}/conv1")]
    for b, units in enumerate(DEPTHS[depth]):
        for u in range(units):
            unit = f"{scope}/block{b + 1}/unit_{u + 1}/bottleneck_v1"
            torch_unit = f"block{b + 1}.{u}"
            convs = ["conv1", "conv2", "conv3"] + (["shortcut"] if u == 0 else [])
            pairs += [(f"{torch_unit}.{c}", f"{unit}/{c}") for c in convs]
    names = {}
    for torch_prefix, tf_prefix in pairs:
        names[f"{torch_prefix}.conv.weight"] = f"{tf_prefix}/weights"
        for ours, theirs in BN_NAMES:
            names[f"{torch_prefix}.bn.{ours}"] = f"{tf_prefix}/BatchNorm/{theirs}"
    return names
