"""The DELG training losses (Cao et al., "Unifying Deep Local and Global Features", ECCV 2020).

- Global head: ArcFace (additive angular margin ``m``, fixed scale ``s``) over a learned
  ``(num_classes, global_dim)`` class-centre matrix.
- Attention: cross-entropy of a separate linear classifier on the attention-weighted pooling of
  conv4 (conv4 detached: the attention head learns, the backbone does not).
- Autoencoder: mean squared error between the reconstruction and conv4 (detached), weight 10.

Scale: the paper fixes ``s = sqrt(2048)`` for its 2048-D descriptors. We keep that value for
every global size: the logits are cosines (in ``[-1, 1]`` whatever the dimension), so the scale is
a softmax temperature over angles, not a normalisation of the descriptor length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCFACE_MARGIN = 0.1
ARCFACE_SCALE = math.sqrt(2048.0)
RECONSTRUCTION_WEIGHT = 10.0


class ArcFace(nn.Module):
    """ArcFace logits: ``s * cos(theta_y + m)`` for the target class, ``s * cos(theta_j)`` otherwise."""

    def __init__(self, dim: int, num_classes: int, margin: float = ARCFACE_MARGIN, scale: float = ARCFACE_SCALE):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"ArcFace needs at least 2 classes, got {num_classes}")
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.normal_(self.weight, std=dim ** -0.5)
        self.margin, self.scale = margin, scale

    def logits(self, descriptors: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``descriptors``: ``(B, D)`` (normalised here); ``labels``: ``(B,)`` or None (no margin)."""
        cosine = F.normalize(descriptors, dim=1) @ F.normalize(self.weight, dim=1).T
        if labels is None:
            return self.scale * cosine
        target = cosine.gather(1, labels[:, None]).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        theta = torch.acos(target)
        # cos(theta + m) is not monotonic past pi - m: keep the margin only where it still penalises.
        with_margin = torch.where(theta + self.margin < math.pi, torch.cos(theta + self.margin),
                                  target - math.sin(self.margin) * self.margin)
        return self.scale * cosine.scatter(1, labels[:, None], with_margin)

    def forward(self, descriptors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(descriptors, labels), labels)


class AttentionClassifier(nn.Module):
    """Linear classifier on the attention-weighted pooling of conv4 (the paper's attention loss)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(channels, num_classes)

    @staticmethod
    def pool(attention: torch.Tensor, conv4: torch.Tensor) -> torch.Tensor:
        """``attention (B,1,h,w)`` x ``conv4 (B,C,h,w)`` -> ``(B, C)``: the sum over positions of
        the attention-weighted, channel-L2-normalised conv4 vectors (conv4 detached here). A sum,
        as in the paper, not a mean: with a mean the pooled vector is tiny and the classifier
        (hence the attention) learns far more slowly."""
        features = F.normalize(conv4.detach(), dim=1)
        return (attention * features).sum(dim=(2, 3))

    def forward(self, attention: torch.Tensor, conv4: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.fc(self.pool(attention, conv4)), labels)


def reconstruction_loss(reconstruction: torch.Tensor, conv4: torch.Tensor) -> torch.Tensor:
    """Mean squared error per element between the autoencoder output and conv4 (detached)."""
    return F.mse_loss(reconstruction, conv4.detach())


@dataclass
class LossTerms:
    arcface: torch.Tensor
    attention: torch.Tensor
    reconstruction: torch.Tensor  # unweighted
    reconstruction_weight: float = RECONSTRUCTION_WEIGHT

    @property
    def total(self) -> torch.Tensor:
        return self.arcface + self.attention + self.reconstruction_weight * self.reconstruction

    @property
    def local(self) -> torch.Tensor:
        return self.attention + self.reconstruction_weight * self.reconstruction

    def as_floats(self) -> dict[str, float]:
        return dict(arcface=self.arcface.item(), attention=self.attention.item(),
                    reconstruction=self.reconstruction.item(), total=self.total.item())


class DELGLoss(nn.Module):
    """The trainable parts of the losses (ArcFace centres, attention classifier) and their sum."""

    def __init__(self, global_dim: int, conv4_channels: int, num_classes: int, margin: float = ARCFACE_MARGIN,
                 scale: float = ARCFACE_SCALE, reconstruction_weight: float = RECONSTRUCTION_WEIGHT):
        super().__init__()
        self.arcface = ArcFace(global_dim, num_classes, margin, scale)
        self.attention = AttentionClassifier(conv4_channels, num_classes)
        self.reconstruction_weight = reconstruction_weight

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> LossTerms:
        """``outputs``: :meth:`DELG.forward`'s dict (global_descriptor, conv4, attention, reconstruction)."""
        return LossTerms(
            arcface=self.arcface(outputs["global_descriptor"], labels),
            attention=self.attention(outputs["attention"], outputs["conv4"], labels),
            reconstruction=reconstruction_loss(outputs["reconstruction"], outputs["conv4"]),
            reconstruction_weight=self.reconstruction_weight)
