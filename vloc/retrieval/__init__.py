"""Global descriptors, the PCA-whitened FAISS index, and image-pair selection."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

from vloc.config import GlobalConf
from vloc.registry import create
from vloc.retrieval.delg import DelgGlobal
from vloc.retrieval.gem import EfficientNetGeM

GLOBAL_MODELS: dict[str, Callable[[GlobalConf], Callable]] = {
    "effnet_lite0_gem": EfficientNetGeM,
    "delg": DelgGlobal,
}


def make_global_model(conf: GlobalConf, device: "torch.device | str" = "cpu"):
    """The global descriptor model ``conf`` names, on ``device``."""
    return create(GLOBAL_MODELS, conf, "global descriptor", device=device)


__all__ = ["GLOBAL_MODELS", "make_global_model"]
