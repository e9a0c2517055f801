"""Run a downloaded official DELG model on one image with TensorFlow (subprocess of the opt-in test).

TF1-format SavedModels (the released tarballs, most likely) are pruned to the released extractor's
feeds and fetches (``examples/extractor.py`` in delf, ``../shared/docs/delg-official-weights.md`` 1.3);
TF2 ones are called through ``serving_default``. Writes the outputs to ``OUT.npz``.

usage: delg_official_reference.py MODEL_DIR IMAGE.npy THRESHOLD OUT.npz
"""
from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

SCALES = [0.25, 0.35355338, 0.5, 0.70710677, 1.0, 1.4142135, 2.0]
FEEDS = ["input_image:0", "input_scales:0", "input_max_feature_num:0", "input_abs_thres:0", "input_global_scales_ind:0"]
FETCHES = ["boxes:0", "features:0", "scales:0", "scores:0", "global_descriptors:0"]


def main(model_dir: str, image_file: str, threshold: str, out: str) -> None:
    image = np.load(image_file)
    args = [tf.constant(image), tf.constant(SCALES), tf.constant(1000), tf.constant(float(threshold)),
            tf.constant([3, 4, 5])]
    model = tf.saved_model.load(model_dir)
    if hasattr(model, "prune"):  # TF1-format SavedModel
        values = model.prune(feeds=FEEDS, fetches=FETCHES)(*args)
        result = {name.split(":")[0]: v.numpy() for name, v in zip(FETCHES, values)}
    else:
        names = [f.split(":")[0] for f in FEEDS]
        result = {k: v.numpy() for k, v in model.signatures["serving_default"](**dict(zip(names, args))).items()}
    np.savez(out, **result)
    print("written", out, {k: v.shape for k, v in result.items()})


if __name__ == "__main__":
    main(*sys.argv[1:])
