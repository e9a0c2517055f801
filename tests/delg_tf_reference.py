"""TensorFlow reference for the DELG parity test (run as a subprocess by tests/test_delg.py).

Builds DELG in TF1 graph mode from tf_slim's own ``resnet_v1_50`` plus the heads (built with
``tf_slim`` layers under ``resnet_arg_scope``, under the variable names vloc's converter expects),
gives every variable random values (BN statistics included, so that no layer is an identity), saves a
``tf.compat.v1.train.Saver`` checkpoint and a TF1-format SavedModel (``tf1_saved_model``), and writes
each image's activations to an ``.npz``.

usage: delg_tf_reference.py OUT_DIR SEED IMAGE.npy [IMAGE.npy ...]   (images: uint8 (H, W, 3) RGB)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_slim as slim
from tf_slim.nets import resnet_v1

GEM_POWER = 3.3


def batch_norm(inputs: tf.Tensor, epsilon: float, scale: bool = True, **_unused) -> tf.Tensor:
    """Inference batch norm with tf_slim's variable names (``BatchNorm/{beta,gamma,moving_mean,
    moving_variance}``). tf_slim 1.1's own ``batch_norm`` no longer runs on TF >= 2.16 (it needs the
    separate tf_keras package, and its fused path uses the removed ``ops.Tensor``)."""
    channels = inputs.shape[-1]
    with tf.compat.v1.variable_scope(None, "BatchNorm"):
        def var(name: str, init: float) -> tf.Variable:
            return tf.compat.v1.get_variable(name, [channels], initializer=tf.compat.v1.constant_initializer(init))
        beta, mean, variance = var("beta", 0.0), var("moving_mean", 0.0), var("moving_variance", 1.0)
        gamma = var("gamma", 1.0) if scale else None
        return tf.nn.batch_normalization(inputs, mean, variance, beta, gamma, epsilon)


def arg_scope() -> dict:
    """tf_slim's ``resnet_arg_scope`` (its epsilon, scale, initialisers, "SAME" max pool) with
    :func:`batch_norm` as the normaliser."""
    scope = {op: dict(kwargs) for op, kwargs in resnet_v1.resnet_arg_scope().items()}
    for kwargs in scope.values():
        if "normalizer_fn" in kwargs:
            kwargs["normalizer_fn"] = batch_norm
    return scope


def build(images: tf.Tensor) -> dict[str, tf.Tensor]:
    x = (images - 128.0) / 128.0
    with slim.arg_scope(arg_scope()):
        _, ends = resnet_v1.resnet_v1_50(x, num_classes=None, is_training=False, global_pool=False)
        block3_s32, block4 = ends["resnet_v1_50/block3"], ends["resnet_v1_50/block4"]
        # The same variables with block3's last unit at stride 1: conv4 at stride 16.
        blocks = [resnet_v1.resnet_v1_block("block1", base_depth=64, num_units=3, stride=2),
                  resnet_v1.resnet_v1_block("block2", base_depth=128, num_units=4, stride=2),
                  resnet_v1.resnet_v1_block("block3", base_depth=256, num_units=6, stride=1)]
        _, ends16 = resnet_v1.resnet_v1(x, blocks, is_training=False, global_pool=False, reuse=True,
                                        scope="resnet_v1_50")
        conv4 = ends16["resnet_v1_50/block3"]
        codes = slim.conv2d(conv4, 128, 1, activation_fn=None, normalizer_fn=None, scope="dim_reduction")
        recon = slim.conv2d(codes, 1024, 1, activation_fn=tf.nn.relu, normalizer_fn=None, scope="dim_expand")
        with tf.compat.v1.variable_scope("attonly/attention/compute"):
            hidden = slim.conv2d(recon, 512, 1, activation_fn=tf.nn.relu, scope="conv1")
            score = slim.conv2d(hidden, 1, 1, activation_fn=None, normalizer_fn=None, scope="conv2")
        attention = tf.nn.softplus(score)
    with tf.compat.v1.variable_scope("gem"):
        power = tf.compat.v1.get_variable("gem_power", initializer=tf.constant(GEM_POWER))
    pooled = tf.pow(tf.reduce_mean(tf.pow(tf.maximum(block4, 1e-6), power), axis=[1, 2]), 1.0 / power)
    with tf.compat.v1.variable_scope("embed"):
        weights = tf.compat.v1.get_variable("weights", [2048, 2048])
        biases = tf.compat.v1.get_variable("biases", [2048], initializer=tf.compat.v1.zeros_initializer())
    embed = tf.matmul(pooled, weights) + biases
    return {"block3_s32": block3_s32, "conv4": conv4, "conv5": block4, "codes": codes,
            "reconstruction": recon, "attention": attention,
            "global_descriptor": tf.nn.l2_normalize(embed, axis=1)}


def randomize(sess: tf.compat.v1.Session, rng: np.random.Generator) -> None:
    """Values that keep activations in a sane range through 16 residual units but exercise every op."""
    for var in tf.compat.v1.global_variables():
        name, shape = var.op.name, var.shape.as_list()
        if name.endswith("gem_power"):
            continue
        if name.endswith("/weights"):
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif name.endswith("/gamma"):
            value = rng.uniform(0.2, 0.6 if "conv3" in name else 1.2, shape)
        elif name.endswith("/moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        elif name.endswith(("/beta", "/moving_mean", "/biases")):
            value = rng.normal(0.0, 0.2, shape)
        else:
            continue
        var.load(value.astype(np.float32), sess)


def main(out_dir: str, seed: str, *image_files: str) -> None:
    out = Path(out_dir)
    tf.compat.v1.disable_eager_execution()
    tf.compat.v1.reset_default_graph()
    images = [np.load(f) for f in image_files]
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1)
    placeholder = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3])
    tensors = build(placeholder)
    with tf.compat.v1.Session(config=config) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        randomize(sess, np.random.default_rng(int(seed)))
        tf.compat.v1.train.Saver().save(sess, str(out / "ckpt" / "model.ckpt"), write_meta_graph=False)
        # the same network as a TF1-format SavedModel (the format the official releases most likely have)
        builder = tf.compat.v1.saved_model.Builder(str(out / "tf1_saved_model"))
        signature = tf.compat.v1.saved_model.predict_signature_def(
            {"input_image": placeholder}, {"global_descriptor": tensors["global_descriptor"],
                                           "attention": tensors["attention"]})
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()
        for i, image in enumerate(images):
            values = sess.run(tensors, {placeholder: image[None].astype(np.float32)})
            # NHWC -> NCHW, as torch returns them
            np.savez(out / f"ref{i}.npz", **{k: v.transpose(0, 3, 1, 2) if v.ndim == 4 else v
                                             for k, v in values.items()})
    print("written", out)


if __name__ == "__main__":
    main(*sys.argv[1:])
