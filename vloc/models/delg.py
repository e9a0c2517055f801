"""DELG (Cao, Araujo, Sim, ECCV 2020): one CNN, a global descriptor and attention-selected local features.

Heads, as in the official release (``research/delf``, TF2 ``delf_model.py`` / ``delg_model.py``):

- global, on conv5: GeM pooling (learnable power, initially 3), a fully connected "whitening" layer
  with bias, L2 normalisation;
- local, on conv4 (gradients stopped there while training): an autoencoder whose 1x1 "dim_reduction"
  convolution (with bias, linear) gives the 128-D local descriptors and whose 1x1 "dim_expand"
  convolution (with bias, ReLU) reconstructs conv4; the attention network (1x1 conv 512 without bias,
  BN, ReLU, 1x1 conv 1 with bias, softplus) scores the *reconstruction*, as the official model does
  when it uses the autoencoder. The official autoencoder has no batch norm.

Variants (:data:`DELG_VARIANTS`): ``r50`` / ``r101`` on the TF-Slim ResNets
(:mod:`vloc.models.tfslim_resnet`), inputs ``(x - 128) / 128`` as the official extractor;
``keras-r50`` on delf's TF2 Keras ResNet-50 (:mod:`vloc.models.keras_resnet`; its attention's first
convolution has a bias and BN epsilon 1e-3, and the attention reads ``block3`` or the reconstruction,
as the converted file says: :data:`ATTENTION_INPUTS`); ``small``
on EfficientNet-Lite0 (ImageNet weights from the weights manager), conv4 = its stride-16 stage
(112 channels), conv5 = its head (1280 channels), inputs ``x / 127.5 - 1``. Every variant's conv4
is at stride 16 and conv5 at stride 32.

Files: :func:`save_delg` / :func:`load_delg` write and read a torch file ``{"format": "vloc-delg",
"version", "variant", "global_dim", "attention_input", "state_dict", "extra"}`` (files without
``attention_input`` score the reconstruction); ``extra`` carries the attention threshold for local
feature selection and ``extraction``: ``"vloc"`` (:func:`extract_local` / :func:`extract_global`)
or ``"official"`` (:mod:`vloc.models.delg_official`, the released extractor's protocol). Landmark-trained weights come from ``vloc train delg`` (small)
or ``vloc weights convert-delg`` (an official-layout TF-Slim checkpoint, r50/r101).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vloc.io.files import atomic_path
from vloc.models.efficientnet_lite import EfficientNetLite0, load_efficientnet_lite0
from vloc.models.keras_resnet import KerasDelfResNet50
from vloc.models.tfslim_resnet import TFSlimResNet

logger = logging.getLogger(__name__)

FORMAT = "vloc-delg"
FORMAT_VERSION = 1
LOCAL_DIM = 128
ATTENTION_INPUTS = ("reconstruction", "block3")  # what the attention scores (see DELG.local_head)
GLOBAL_SCALES = (0.7071, 1.0, 1.4142)
LOCAL_SCALES = (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
HOW_TO_GET_WEIGHTS = ("train the small variant with `vloc train delg`, or convert a TF-Slim checkpoint or a "
                      "delf TF2 Keras SavedModel with `vloc weights convert-delg PATH OUT`")


class LiteBackbone(nn.Module):
    """EfficientNet-Lite0 as a DELG backbone: ``{"conv4": stride-16 (112 ch), "conv5": head (1280 ch)}``."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.net = load_efficientnet_lite0() if pretrained else EfficientNetLite0()

    def forward(self, x: torch.Tensor, with_conv5: bool = True) -> dict[str, torch.Tensor]:
        out = self.net(x, with_head=with_conv5)
        return {"conv4": out["stride16"], **({"conv5": out["head"]} if with_conv5 else {})}


# A strided layer before conv4: (kernel, stride, padding before: an int, or "same" for TF "SAME").
StridedLayer = tuple[int, int, int | str]
RESNET_STRIDED: tuple[StridedLayer, ...] = ((7, 2, 3), (3, 2, "same"), (3, 2, 1), (3, 2, 1))  # stem, pool, block1-2
LITE0_STRIDED: tuple[StridedLayer, ...] = ((3, 2, "same"), (3, 2, "same"), (5, 2, "same"), (3, 2, "same"))
KERAS_STRIDED: tuple[StridedLayer, ...] = ((7, 2, "same"), (3, 2, 0), (1, 2, 0), (1, 2, 0))  # stem, VALID pool, l3a, l4a


@dataclass(frozen=True)
class VariantSpec:
    make_backbone: Callable[[bool], nn.Module]  # argument: load ImageNet weights (small only)
    conv4_channels: int
    conv5_channels: int
    global_dim: int
    pixel_offset: float  # network input = (RGB - offset) / scale
    pixel_scale: float
    strided: tuple[StridedLayer, ...]  # the layers that set conv4's receptive-field centres
    attention_bias: bool = False  # the attention's first 1x1 conv has a bias (Keras) or not (TF-Slim scope)
    attention_bn_eps: float = 1e-5  # TF-Slim's resnet_arg_scope; Keras' default is 1e-3


DELG_VARIANTS: dict[str, VariantSpec] = {
    "r50": VariantSpec(lambda pretrained: TFSlimResNet(50), 1024, 2048, 2048, 128.0, 128.0, RESNET_STRIDED),
    "r101": VariantSpec(lambda pretrained: TFSlimResNet(101), 1024, 2048, 2048, 128.0, 128.0, RESNET_STRIDED),
    "keras-r50": VariantSpec(lambda pretrained: KerasDelfResNet50(), 1024, 2048, 2048, 128.0, 128.0, KERAS_STRIDED,
                             attention_bias=True, attention_bn_eps=1e-3),
    "small": VariantSpec(lambda pretrained: LiteBackbone(pretrained), 112, 1280, 1280, 127.5, 127.5, LITE0_STRIDED),
}


def rf_centres(strided: Sequence[StridedLayer], n: int) -> tuple[float, int]:
    """``(offset, stride)``: along an input axis of ``n`` pixels, conv4 cell ``j`` has its receptive field
    centred on input pixel ``offset + stride * j`` (top-left pixel centre at 0). TF "SAME" padding puts
    the odd pixel at the end, so the offset depends on ``n`` (ResNet: 0 or 2; the official extractor
    always uses 0)."""
    offset, step = 0.0, 1
    for kernel, stride, pad in strided:
        out = -(-n // stride)
        if pad == "same":
            pad = max((out - 1) * stride + kernel - n, 0) // 2
        offset += step * ((kernel - 1) / 2 - pad)
        step, n = step * stride, out
    return offset, step


def get_variant(variant: str) -> VariantSpec:
    try:
        return DELG_VARIANTS[variant]
    except KeyError:
        raise ValueError(f"Unknown DELG variant {variant!r}; valid: {', '.join(sorted(DELG_VARIANTS))}") from None


class AttentionHead(nn.Module):
    """1x1 conv -> BN -> ReLU -> 1x1 conv to 1 channel -> softplus: ``(B,C,h,w) -> (B,1,h,w)``."""

    def __init__(self, cin: int, hidden: int = 512, bias: bool = False, eps: float = 1e-5):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(hidden, eps=eps)
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Autoencoder(nn.Module):
    """``dim_reduction`` (1x1, C4 -> 128, linear) and ``dim_expand`` (1x1, 128 -> C4, ReLU), both with bias."""

    def __init__(self, cin: int, dim: int = LOCAL_DIM):
        super().__init__()
        self.dim_reduction = nn.Conv2d(cin, dim, 1)
        self.dim_expand = nn.Conv2d(dim, cin, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.dim_reduction(x)
        return codes, F.relu(self.dim_expand(codes))


def gem(features: torch.Tensor, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over space, ``(B, C, h, w) -> (B, C)``; ``p`` may be a learnable scalar."""
    return features.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class DELG(nn.Module):
    """DELG network. ``forward(x)`` takes :func:`preprocess`'d images ``(B, 3, H, W)``."""

    def __init__(self, variant: str, global_dim: int | None = None, pretrained_backbone: bool = False,
                 attention_input: str = "reconstruction"):
        super().__init__()
        spec = get_variant(variant)
        if attention_input not in ATTENTION_INPUTS:
            raise ValueError(f"DELG attention input {attention_input!r}; valid: {', '.join(ATTENTION_INPUTS)}")
        self.variant = variant
        self.attention_input = attention_input
        self.global_dim = global_dim or spec.global_dim
        self.backbone = spec.make_backbone(pretrained_backbone)
        self.gem_p = nn.Parameter(torch.tensor(3.0))
        self.whiten = nn.Linear(spec.conv5_channels, self.global_dim, bias=True)
        self.attention = AttentionHead(spec.conv4_channels, bias=spec.attention_bias, eps=spec.attention_bn_eps)
        self.autoencoder = Autoencoder(spec.conv4_channels)
        self.extra: dict[str, Any] = {}  # a weight file's ``extra`` (:func:`load_delg`)

    def global_head(self, conv5: torch.Tensor) -> torch.Tensor:
        """``(B, C5, h, w) -> (B, global_dim)``: GeM, whitening FC, L2 normalisation."""
        return F.normalize(self.whiten(gem(conv5, self.gem_p)), dim=-1)

    def local_head(self, conv4: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, C4, h, w)`` -> ``attention (B,1,h,w)`` softplus scores, ``codes (B,128,h,w)`` (not
        normalised) and ``reconstruction (B,C4,h,w)``; the attention scores the reconstruction or conv4
        itself (``attention_input``: delf's TF2 code did the first from Dec 2020 to Apr 2021, the
        paper and later code the second)."""
        codes, reconstruction = self.autoencoder(conv4)
        scored = reconstruction if self.attention_input == "reconstruction" else conv4
        return {"attention": self.attention(scored), "codes": codes, "reconstruction": reconstruction}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        conv4 = feats["conv4"].detach() if self.training else feats["conv4"]  # the paper's gradient stop
        return {"conv4": feats["conv4"], "conv5": feats["conv5"], "global_descriptor": self.global_head(feats["conv5"]),
                **self.local_head(conv4)}


def build_delg(variant: str, weights: str | Path | None = None, global_dim: int | None = None,
               pretrained_backbone: bool = True) -> DELG:
    """A DELG model in eval mode: from a :func:`save_delg` file when ``weights`` is given (its variant
    must be ``variant``), else freshly initialised heads on (for ``small`` and ``pretrained_backbone``)
    the ImageNet EfficientNet-Lite0 backbone, or a randomly initialised ResNet."""
    get_variant(variant)
    if weights is not None:
        model = load_delg(weights)
        if model.variant != variant:
            raise ValueError(f"{weights}: holds a DELG {model.variant!r} model, not {variant!r}")
        return model
    return DELG(variant, global_dim, pretrained_backbone=pretrained_backbone and variant == "small").eval()


def preprocess(variant: str, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``(B, H, W, 3)`` (or ``(H, W, 3)``) -> float32 ``(B, 3, H, W)``, channels-last memory,
    normalised as the variant's backbone expects."""
    spec = get_variant(variant)
    x = torch.as_tensor(np.ascontiguousarray(images) if isinstance(images, np.ndarray) else images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected RGB images (B, H, W, 3), got shape {tuple(x.shape)}")
    x = (x.permute(0, 3, 1, 2).float() - spec.pixel_offset) / spec.pixel_scale
    return x.contiguous(memory_format=torch.channels_last)


def save_delg(model: DELG, path: str | Path, variant: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (plain tensors and Python values only; loads with ``weights_only=True``)."""
    variant = variant or model.variant
    if variant != model.variant:
        raise ValueError(f"save_delg: model is a {model.variant!r} DELG, not {variant!r}")
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = {"format": FORMAT, "version": FORMAT_VERSION, "variant": variant, "global_dim": model.global_dim,
            "attention_input": model.attention_input, "state_dict": state, "extra": dict(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def read_delg_file(path: str | Path) -> dict[str, Any]:
    """The checked contents of a :func:`save_delg` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DELG weights {path} not found; {HOW_TO_GET_WEIGHTS}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # torch's unpickler raises these
        raise ValueError(f"{path}: not a readable torch file ({exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a vloc DELG weights file (no format={FORMAT!r}); {HOW_TO_GET_WEIGHTS}")
    if blob.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: DELG file version {blob.get('version')!r}, this vloc reads {FORMAT_VERSION}")
    for key in ("variant", "global_dim", "state_dict"):
        if key not in blob:
            raise ValueError(f"{path}: DELG weights file lacks {key!r}")
    get_variant(blob["variant"])
    return blob


def load_delg(path: str | Path) -> DELG:
    """The model saved by :func:`save_delg` (eval mode); ``model.extra`` holds the file's ``extra``."""
    blob = read_delg_file(path)
    model = DELG(blob["variant"], int(blob["global_dim"]), pretrained_backbone=False,
                 attention_input=blob.get("attention_input", "reconstruction"))
    missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: DELG {blob['variant']!r} weights do not fit the model "
                         f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
    model.extra = dict(blob.get("extra") or {})
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Multi-scale extraction (the paper's protocol; batched over images of one size)


def resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Bilinear resize of ``(B, 3, H, W)`` to ``round(H * scale), round(W * scale)`` (at least 1 px),
    antialiased when shrinking (the official extractor does not antialias; 0.25x aliases badly)."""
    if scale == 1.0:
        return x
    h, w = x.shape[-2:]
    size = (max(round(h * scale), 1), max(round(w * scale), 1))
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)
    return out.contiguous(memory_format=torch.channels_last)


def _autocast(bf16: bool, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters are: inputs go there, outputs come back to the CPU."""
    return next(model.parameters()).device


@torch.inference_mode()
def extract_global(model: DELG, x: torch.Tensor, scales: Sequence[float] = GLOBAL_SCALES,
                   bf16: bool = False) -> torch.Tensor:
    """``(B, 3, H, W)`` preprocessed -> ``(B, global_dim)`` float32: the per-scale (L2-normalised)
    descriptors averaged over ``scales``, then L2-normalised."""
    x = x.to(model_device(model))
    total = 0
    for s in scales:
        with _autocast(bf16, x.device):
            total = total + model.global_head(model.backbone(resize(x, s))["conv5"]).float()
    return F.normalize(total / len(scales), dim=-1).cpu()


@dataclass
class LocalCandidates:
    """Local features of one image before selection; keypoints in the network input's pixels, COLMAP
    convention (top-left pixel centre at (0.5, 0.5))."""

    keypoints: np.ndarray  # (N, 2) float32
    descriptors: np.ndarray  # (N, 128) float32, unit norm
    scores: np.ndarray  # (N,) float32 attention
    scales: np.ndarray  # (N,) float32 pyramid scale each came from


@torch.inference_mode()
def extract_local(model: DELG, x: torch.Tensor, scales: Sequence[float] = LOCAL_SCALES, threshold: float = 0.0,
                  max_features: int = 1000, bf16: bool = False) -> list[LocalCandidates]:
    """DELG local features of each image in ``(B, 3, H, W)``, selected as in the paper.

    Every pyramid level gives one candidate per conv4 cell at its receptive-field centre, kept when
    its attention is >= ``threshold``. Levels see different image regions, so candidates of
    different levels at nearby places are kept (as the official extractor, whose NMS at IoU 1.0
    removes nothing); candidates of two levels that fall on the same input pixel (e.g. every cell of
    scale 1 with the even cells of scale 2) are merged, keeping the higher attention, because a map
    cannot use two observations of one pixel. Then the ``max_features`` highest attentions win.
    """
    spec = get_variant(model.variant)
    x = x.to(model_device(model))
    h, w = x.shape[-2:]
    per_image: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(x.shape[0])]
    for s in scales:
        xs = resize(x, s)
        with _autocast(bf16, xs.device):
            out = model.local_head(model.backbone(xs, with_conv5=False)["conv4"])
        att, codes = out["attention"].float()[:, 0].cpu(), F.normalize(out["codes"].float(), dim=1).cpu()
        # cell centres in resized pixels (COLMAP convention: + 0.5), then in input pixels (per-axis ratio)
        centres = []
        for size, cells, pixels in ((w, att.shape[-1], xs.shape[-1]), (h, att.shape[-2], xs.shape[-2])):
            offset, stride = rf_centres(spec.strided, pixels)
            centres.append(((torch.arange(cells) * stride + offset + 0.5) * (size / pixels)).float())
        cx, cy = centres
        for b in range(x.shape[0]):
            iy, ix = torch.nonzero(att[b] >= threshold, as_tuple=True)
            # cells whose centre lies in the padding (last row / column) are clipped onto the border
            kp = torch.stack([cx[ix].clamp(0, w), cy[iy].clamp(0, h)], dim=1)
            per_image[b].append((kp.numpy(), codes[b, :, iy, ix].T.numpy(), att[b, iy, ix].numpy(),
                                 np.full(len(iy), s, np.float32)))
    return [_select(parts, max_features) for parts in per_image]


def _select(parts: list[tuple[np.ndarray, ...]], max_features: int) -> LocalCandidates:
    kp, desc, score, scale = (np.concatenate(p).astype(np.float32) for p in zip(*parts, strict=True))
    order = np.argsort(-score, kind="stable")
    kp, desc, score, scale = kp[order], desc[order], score[order], scale[order]
    _, first = np.unique(np.floor(kp).astype(np.int64), axis=0, return_index=True)
    keep = np.sort(first)[:max_features]  # sorted indices = descending attention
    return LocalCandidates(kp[keep], np.ascontiguousarray(desc[keep]), score[keep], scale[keep])


__all__ = ["ATTENTION_INPUTS", "DELG", "DELG_VARIANTS", "GLOBAL_SCALES", "LOCAL_SCALES", "build_delg", "extract_global",
           "extract_local", "load_delg", "model_device", "preprocess", "save_delg"]
