"""Where vloc's torch models run: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``,
``cuda`` or ``cuda:N``.

One choice per process or service, resolved once by :func:`resolve_device` and passed to every
model factory (extractors, matchers, global models) and so to :class:`vloc.localization.models.ModelCache`.
What does not run in torch stays on the CPU whatever the choice: pycolmap (SIFT, RANSAC, SfM),
OpenCV and FAISS. torch is imported only when a device is resolved.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICES = "auto, cpu, cuda, cuda:N"
_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(spec: str) -> str:
    """``spec`` if it is one of :data:`DEVICES`' forms (no torch needed), else a ValueError naming it."""
    if not _PATTERN.fullmatch(spec):
        raise ValueError(f"device {spec!r} is not one of {DEVICES}")
    return spec


def resolve_device(spec: str | None = "auto") -> "torch.device":
    """``auto`` / None -> CUDA device 0 when torch sees a GPU, else the CPU; ``cpu``; ``cuda`` /
    ``cuda:N``, refused when this torch build or machine has no such GPU (never a silent CPU)."""
    import torch

    spec = check_device_name("auto" if spec is None else str(spec))
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ValueError(f"device {spec!r}: torch {torch.__version__} ({build}) sees no GPU; use --device cpu or "
                         "install a CUDA build of torch (README: 'GPU')")
    index = int(spec.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 .. "
                         f"cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def device_report() -> dict:
    """What ``vloc info --system`` prints: the torch build, the GPUs it sees, what ``auto`` picks."""
    import torch

    gpus = [dict(index=i, name=torch.cuda.get_device_name(i),
                 memory_gib=round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1))
            for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return dict(torch=torch.__version__, build=f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only",
                cuda_available=torch.cuda.is_available(), gpus=gpus, auto=str(resolve_device("auto")),
                cpu_threads=torch.get_num_threads())
