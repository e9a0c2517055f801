"""DELG extraction time per 640x480 image: global (3 scales) and local (7 scales, 1000 features),
r50 in fp32 and bf16 autocast, and the small (EfficientNet-Lite0) variant. Random weights: the cost
does not depend on them. Prints a table; timings are the median of ``--repeats`` runs after a warm-up."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from vloc.evaluation.timing import median_seconds
from vloc.models.delg import build_delg, extract_global, extract_local, preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["r50", "small"])
    args = parser.parse_args()
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print(f"{'variant':<8}{'precision':<10}{'global s':>10}{'local s':>10}")
    for variant in args.variants:
        model = build_delg(variant, pretrained_backbone=False).to(memory_format=torch.channels_last)
        x = preprocess(variant, image)
        for bf16 in (False, True):
            g = median_seconds(lambda: extract_global(model, x, bf16=bf16), args.repeats)  # noqa: B023
            loc = median_seconds(lambda: extract_local(model, x, max_features=1000, bf16=bf16), args.repeats)  # noqa: B023
            print(f"{variant:<8}{'bf16' if bf16 else 'fp32':<10}{g:>10.2f}{loc:>10.2f}")


if __name__ == "__main__":
    main()
