"""Global descriptors, the PCA-whitened FAISS index, and image-pair selection."""
from __future__ import annotations

from typing import Callable

from vloc.config import GlobalConf
from vloc.retrieval.gem import EfficientNetGeM

GLOBAL_MODELS: dict[str, Callable[[GlobalConf], Callable]] = {
    "effnet_lite0_gem": EfficientNetGeM,
}


def make_global_model(conf: GlobalConf):
    try:
        factory = GLOBAL_MODELS[conf.name]
    except KeyError:
        raise ValueError(f"Unknown global descriptor {conf.name!r}; valid: {', '.join(sorted(GLOBAL_MODELS))}") from None
    return factory(conf)


__all__ = ["GLOBAL_MODELS", "make_global_model"]
