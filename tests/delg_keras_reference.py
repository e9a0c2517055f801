"""TensorFlow reference for the delf-Keras DELG parity test (run as a subprocess by tests/test_delg_keras.py).

Written from ``../shared/docs/delg-official-weights.md`` (sections 2.1-2.4; delf's own code is not
used): delf's TF2 Keras ResNet-50 and DELG heads as Keras layers under delf's attribute names, so
that Keras itself supplies its defaults ('valid' convolutions unless told, conv biases, BN epsilon
1e-3). Every variable gets random values (BN statistics too). The model is wrapped in a
``tf.Module`` whose ``_model`` attribute is the network and whose ``ExtractFeatures`` function has
the exporter's signature, saved with ``tf.saved_model.save``. Writes:

- ``OUT/saved_model``: the SavedModel (Keras 3 names its conv weights ``_kernel``);
- ``OUT/kernel_ckpt``: the same variables in a plain object-based checkpoint whose conv weights are
  named ``kernel`` (the Keras 2 spelling), no graph;
- ``OUT/ref{i}.npz`` per image: block3 (stride 16 and 32), conv5, attention, codes, the raw
  embedding at scale 1, and the signature's outputs (``sig_*``) with the official extraction
  parameters below.

usage: delg_keras_reference.py OUT_DIR SEED ATTENTION_INPUT IMAGE.npy [IMAGE.npy ...]
       ATTENTION_INPUT: block3 (delf after PR #9906) or reconstruction (Dec 2020 - Apr 2021)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers

GEM_POWER = 3.0  # the exporter's default flag (spec 2.3): a Python float in the graph, not a variable
SCALES = [0.25, 0.35355338, 0.5, 0.70710677, 1.0, 1.4142135, 2.0]  # the official configs (spec 1.4)
GLOBAL_SCALES_IND = [3, 4, 5]
RF, STRIDE, PADDING = 291.0, 32.0, 145.0  # receptive-field boxes of the stride-32 block3 (spec 2.4)


class IdentityBlock(keras.Model):
    """1x1 -> 3x3 'same' -> 1x1, each with BN; + input; ReLU (spec 2.1)."""

    def __init__(self, filters: tuple[int, int, int], stride: int = 1, shortcut: bool = False):
        super().__init__()
        f1, f2, f3 = filters
        self.conv2a = layers.Conv2D(f1, 1, strides=stride)
        self.bn2a = layers.BatchNormalization()
        self.conv2b = layers.Conv2D(f2, 3, padding="same")
        self.bn2b = layers.BatchNormalization()
        self.conv2c = layers.Conv2D(f3, 1)
        self.bn2c = layers.BatchNormalization()
        self.has_shortcut = shortcut
        if shortcut:  # _ConvBlock: the stride is on conv2a and on the 1x1 shortcut
            self.conv_shortcut = layers.Conv2D(f3, 1, strides=stride)
            self.bn_shortcut = layers.BatchNormalization()

    def call(self, x, training=False):
        y = tf.nn.relu(self.bn2a(self.conv2a(x), training=training))
        y = tf.nn.relu(self.bn2b(self.conv2b(y), training=training))
        y = self.bn2c(self.conv2c(y), training=training)
        s = self.bn_shortcut(self.conv_shortcut(x), training=training) if self.has_shortcut else x
        return tf.nn.relu(y + s)


class Backbone(keras.Model):
    UNITS = {"l2": (3, (64, 64, 256), 1), "l3": (4, (128, 128, 512), 2), "l4": (6, (256, 256, 1024), 2),
             "l5": (3, (512, 512, 2048), 1)}  # l5a stride 1: block3_strides=True

    def __init__(self):
        super().__init__()
        self.conv1 = layers.Conv2D(64, 7, strides=2, padding="same")
        self.bn_conv1 = layers.BatchNormalization()
        self.max_pool = layers.MaxPooling2D(3, strides=2)
        self.subsampling_layer = layers.MaxPooling2D(1, strides=2)
        self.units = {}
        for stage, (count, filters, stride) in self.UNITS.items():
            for u in range(count):
                unit = IdentityBlock(filters, stride if u == 0 else 1, shortcut=u == 0)
                setattr(self, f"{stage}{'abcdef'[u]}", unit)
        self.embedding_layer = layers.Dense(2048)

    def stage(self, name: str, x, training=False):
        for u in range(self.UNITS[name][0]):
            x = getattr(self, f"{name}{'abcdef'[u]}")(x, training=training)
        return x

    def call(self, x, training=False):
        x = self.max_pool(tf.nn.relu(self.bn_conv1(self.conv1(x), training=training)))
        block3_s16 = self.stage("l4", self.stage("l3", self.stage("l2", x, training), training), training)
        block3 = self.subsampling_layer(block3_s16)
        conv5 = self.stage("l5", block3, training)
        pooled = tf.pow(tf.reduce_mean(tf.pow(tf.maximum(conv5, 1e-6), GEM_POWER), axis=[1, 2]), 1.0 / GEM_POWER)
        return self.embedding_layer(pooled), block3_s16, block3, conv5


class Attention(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv1 = layers.Conv2D(512, 1, padding="same")
        self.bn_conv1 = layers.BatchNormalization(axis=3)
        self.conv2 = layers.Conv2D(1, 1, padding="same")

    def call(self, x, training=False):
        return tf.nn.softplus(self.conv2(tf.nn.relu(self.bn_conv1(self.conv1(x), training=training))))


class Autoencoder(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv1 = layers.Conv2D(128, 1, padding="same")
        self.conv2 = layers.Conv2D(1024, 1, padding="same", activation="relu")

    def call(self, x):
        codes = self.conv1(x)
        return codes, self.conv2(codes)


class Delg(keras.Model):
    def __init__(self, attention_input: str):
        super().__init__()
        self.backbone = Backbone()
        self.attention = Attention()
        self.autoencoder = Autoencoder()
        self.attention_input = attention_input

    def build_call(self, x, training=False):
        embedding, block3_s16, block3, conv5 = self.backbone(x, training=training)
        codes, reconstruction = self.autoencoder(block3)
        prob = self.attention(block3 if self.attention_input == "block3" else reconstruction, training=training)
        return {"global": embedding, "prob": prob, "features": codes, "block3_s16": block3_s16, "block3": block3,
                "conv5": conv5}


class ExtractModule(tf.Module):
    def __init__(self, model: Delg):
        super().__init__()
        self._model = model

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, 3], tf.uint8, name="input_image"),
        tf.TensorSpec([None], tf.float32, name="input_scales"),
        tf.TensorSpec((), tf.int32, name="input_max_feature_num"),
        tf.TensorSpec((), tf.float32, name="input_abs_thres"),
        tf.TensorSpec([None], tf.int32, name="input_global_scales_ind")])
    def ExtractFeatures(self, input_image, input_scales, input_max_feature_num, input_abs_thres,  # noqa: N802
                        input_global_scales_ind):
        image = (tf.cast(input_image, tf.float32) - 128.0) / 128.0  # spec 2.4 step 1
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        # one pass per scale in a while loop (the scales are a [None] input), results in TensorArrays
        n = tf.shape(input_scales)[0]
        ta = [tf.TensorArray(dt, size=n, infer_shape=False) for dt in (tf.float32,) * 5]

        def body(i, *arrays):
            s = input_scales[i]
            new_size = tf.cast(tf.round(size * s), tf.int32)
            x = tf.image.resize(image[None], new_size)  # TF2 default: bilinear, half-pixel, no antialias
            out = self._model.build_call(x, training=False)
            prob, codes = out["prob"][0, :, :, 0], out["features"][0]
            h, w = tf.shape(prob)[0], tf.shape(prob)[1]
            yy, xx = tf.meshgrid(tf.range(h), tf.range(w), indexing="ij")
            cy, cx = tf.cast(tf.reshape(yy, [-1]), tf.float32) * STRIDE, tf.cast(tf.reshape(xx, [-1]), tf.float32) * STRIDE
            box = tf.stack([cy - PADDING, cx - PADDING, cy - PADDING + RF - 1, cx - PADDING + RF - 1], axis=1) / s
            flat_prob = tf.reshape(prob, [-1])
            keep = tf.where(flat_prob >= input_abs_thres)[:, 0]
            vals = [tf.gather(box, keep), tf.gather(tf.reshape(codes, [-1, 128]), keep),
                    tf.fill([tf.size(keep)], 1.0 / s), tf.gather(flat_prob, keep), out["global"]]
            return (i + 1, *[a.write(i, v) for a, v in zip(arrays, vals)])

        _, *arrays = tf.while_loop(lambda i, *a: i < n, body, [tf.constant(0), *ta])
        boxes, feats, scales, scores = (a.concat() for a in arrays[:4])
        feats = tf.reshape(feats, [-1, 128])
        boxes = tf.reshape(boxes, [-1, 4])
        globals_ = tf.gather(tf.reshape(arrays[4].concat(), [-1, 2048]), input_global_scales_ind)
        k = tf.minimum(input_max_feature_num, tf.shape(scores)[0])
        sel = tf.image.non_max_suppression(boxes, scores, k, iou_threshold=1.0)  # prunes IoU > 1: top-k
        return {"boxes": tf.gather(boxes, sel), "features": tf.gather(feats, sel), "scales": tf.gather(scales, sel),
                "scores": tf.reshape(tf.gather(scores, sel), [-1, 1]), "global_descriptors": globals_}


def randomize(model: keras.Model, rng: np.random.Generator) -> None:
    """Values that keep activations sane through 16 residual units and make no layer an identity."""
    for var in model.weights:
        path, shape = var.path, tuple(var.shape)
        name = path.rsplit("/", 1)[-1]
        if name == "kernel":
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        elif name == "gamma":
            value = rng.uniform(0.2, 0.6 if "conv2c" in path or "bn2c" in path else 1.2, shape)
        elif name == "moving_variance":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # beta, moving_mean, bias
            value = rng.normal(0.0, 0.2, shape)
        var.assign(value.astype(np.float32))


def kernel_checkpoint(out: Path) -> None:
    """The SavedModel's variables again, under Keras 2's ``kernel`` spelling, as a bare checkpoint."""
    reader = tf.train.load_checkpoint(str(out / "saved_model" / "variables" / "variables"))
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    root = tf.Module()
    for key in reader.get_variable_to_shape_map():
        if not key.endswith(suffix):
            continue
        parts = key[: -len(suffix)].split("/")
        node = root
        for part in parts[:-1]:
            if not hasattr(node, part):
                setattr(node, part, tf.Module())
            node = getattr(node, part)
        setattr(node, "kernel" if parts[-1] == "_kernel" else parts[-1], tf.Variable(reader.get_tensor(key)))
    tf.train.Checkpoint(_model=root._model).write(str(out / "kernel_ckpt" / "ckpt"))


def main(out_dir: str, seed: str, attention_input: str, *image_files: str) -> None:
    out = Path(out_dir)
    tf.config.threading.set_intra_op_parallelism_threads(2)
    model = Delg(attention_input)
    model.build_call(tf.zeros([1, 64, 64, 3]))
    randomize(model, np.random.default_rng(int(seed)))
    module = ExtractModule(model)
    tf.saved_model.save(module, str(out / "saved_model"))
    kernel_checkpoint(out)
    loaded = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    for i, f in enumerate(image_files):
        image = np.load(f)
        x = (image[None].astype(np.float32) - 128.0) / 128.0
        acts = {k: v.numpy() for k, v in model.build_call(tf.constant(x)).items()}
        ref = {"block3_s16": acts["block3_s16"], "block3": acts["block3"], "conv5": acts["conv5"],
               "attention": acts["prob"], "codes": acts["features"], "embedding": acts["global"]}
        ref = {k: v.transpose(0, 3, 1, 2) if v.ndim == 4 else v for k, v in ref.items()}  # NHWC -> NCHW
        # a threshold between two well-separated attention values, so that rounding cannot move a cell across it
        every = np.sort(loaded(input_image=tf.constant(image), input_scales=tf.constant(SCALES),
                               input_max_feature_num=tf.constant(100000), input_abs_thres=tf.constant(-1.0),
                               input_global_scales_ind=tf.constant(GLOBAL_SCALES_IND))["scores"].numpy()[:, 0])
        middle = every[len(every) // 4: 3 * len(every) // 4]
        gap = int(np.argmax(np.diff(middle)))
        thres = float((middle[gap] + middle[gap + 1]) / 2)
        above = every[every >= thres][::-1]  # descending
        lo, hi = len(above) // 4, 3 * len(above) // 4
        cut = lo + int(np.argmax(above[lo - 1:hi - 1] - above[lo:hi]))  # keep above[:cut]
        sig = loaded(input_image=tf.constant(image), input_scales=tf.constant(SCALES),
                     input_max_feature_num=tf.constant(cut), input_abs_thres=tf.constant(thres),
                     input_global_scales_ind=tf.constant(GLOBAL_SCALES_IND))
        ref.update({f"sig_{k}": v.numpy() for k, v in sig.items()})
        ref.update(sig_thres=np.float32(thres), sig_max_feature_num=np.int32(cut))
        np.savez(out / f"ref{i}.npz", **ref)
    print("written", out)


if __name__ == "__main__":
    main(*sys.argv[1:])
