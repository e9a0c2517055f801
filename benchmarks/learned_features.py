"""Two measurements behind choices in vloc/features/learned.py and vloc/matching/lightglue.py.

    python benchmarks/learned_features.py [--image ../shared/data/prepared/lund/images/01.jpg] [--repeat 5]

1. Extraction time per 640x480 image, each extractor, one image per call vs batches of 4.
2. LightGlue, a query against k=5 map images: one call per pair with point pruning (what
   vloc does) vs one padded batch of the 5 pairs, which kornia can only run without pruning.
Prints medians over ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from vloc.config import FeatureConf, MatcherConf
from vloc.evaluation.timing import median_seconds
from vloc.features import make_extractor
from vloc.io.images import read_image
from vloc.matching import make_matcher

EXTRACTORS = ["xfeat", "aliked-n16", "aliked-n32", "disk"]
LIGHTGLUE = [("aliked-n16", "aliked"), ("disk", "disk"), ("xfeat", "xfeat")]


def views(image: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` different 640x480 crops-and-resizes of one photo (same size, different content)."""
    h, w = image.shape[:2]
    out = []
    for i in range(n):
        dx, dy = int(0.05 * w * i), int(0.04 * h * i)
        out.append(cv2.resize(image[dy:h - dy // 2, dx:w - dx // 2], (640, 480), interpolation=cv2.INTER_AREA))
    return out


def batched_lightglue(matcher, query, others) -> list[np.ndarray]:
    """All pairs in one network call (equal keypoint counts, pruning off)."""
    k = len(others)

    def stack(feats_list):
        return dict(keypoints=torch.from_numpy(np.stack([f.keypoints - 0.5 for f in feats_list])),
                    descriptors=torch.from_numpy(np.stack([f.descriptors for f in feats_list])),
                    image_size=torch.tensor([f.image_size for f in feats_list], dtype=torch.float32))

    with torch.inference_mode():
        out = matcher.model({"image0": stack([query] * k), "image1": stack(others)})
    return [m.numpy() for m in out["matches"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = Path(os.environ.get("VLOC_DATA", "../shared/data"))
    parser.add_argument("--image", type=Path, default=data / "prepared" / "lund" / "images" / "01.jpg")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keypoints", type=int, default=1024)
    args = parser.parse_args()
    images = views(read_image(args.image), 5)
    print(f"torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs; {args.keypoints} keypoints; "
          f"median of {args.repeat}")

    print(f"\n{'extractor':<12}{'s/img single':>14}{'s/img batch 4':>15}")
    for name in EXTRACTORS:
        extractor = make_extractor(FeatureConf(name=name, max_keypoints=args.keypoints, resize_max=640))
        single = median_seconds(lambda ex=extractor: [ex(im) for im in images[:4]], args.repeat) / 4
        batch = median_seconds(lambda ex=extractor: ex.batch(images[:4]), args.repeat) / 4
        print(f"{name:<12}{single:>14.3f}{batch:>15.3f}")

    print(f"\n{'matcher':<18}{'s/query, 5 calls, pruning':>28}{'s/query, 1 batch, no pruning':>31}{'matches':>16}")
    for extractor_name, family in LIGHTGLUE:
        extractor = make_extractor(FeatureConf(name=extractor_name, max_keypoints=args.keypoints, resize_max=640))
        feats = [extractor(im) for im in images]
        n = min(len(f) for f in feats)
        feats = [type(f)(f.keypoints[:n], f.descriptors[:n], f.scores[:n], f.image_size) for f in feats]
        query, others = feats[0], feats[:5]
        pruned = make_matcher(MatcherConf(name="lightglue", features=family))
        unpruned = make_matcher(MatcherConf(name="lightglue", features=family, width_confidence=-1))
        t_seq = median_seconds(lambda m=pruned, q=query, o=others: m.match_many(q, o), args.repeat)
        t_batch = median_seconds(lambda m=unpruned, q=query, o=others: batched_lightglue(m, q, o), args.repeat)
        counts = (sum(len(m) for m in pruned.match_many(query, others)),
                  sum(len(m) for m in batched_lightglue(unpruned, query, others)))
        print(f"lightglue-{family:<8}{t_seq:>28.3f}{t_batch:>31.3f}{counts[0]:>8}/{counts[1]:<7}")


if __name__ == "__main__":
    main()
