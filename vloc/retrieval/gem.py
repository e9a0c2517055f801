"""GeM-pooled, L2-normalised global descriptor on an ImageNet EfficientNet-Lite0."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from vloc.config import GlobalConf
from vloc.models.efficientnet_lite import load_efficientnet_lite0


def gem(features: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean pooling: ``(B, C, H, W)`` -> ``(B, C)``."""
    return features.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class EfficientNetGeM:
    def __init__(self, conf: GlobalConf, device: torch.device | str = "cpu"):
        self.conf = conf
        self.device = torch.device(device)
        self.model = load_efficientnet_lite0().to(self.device, memory_format=torch.channels_last)
        self.dim = 1280

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB (grey is replicated) -> ``(1280,)`` float32, unit norm."""
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        h, w = image.shape[:2]
        scale = self.conf.resize_max / max(h, w)
        if scale < 1:
            image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        desc = gem(self.model(x)["head"], self.conf.gem_p)[0]
        return torch.nn.functional.normalize(desc, dim=0).cpu().numpy().astype(np.float32)
