"""DELG: TF parity of the converted TF-Slim checkpoint, checkpoint reader, receptive fields, extractors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vloc.config import FeatureConf, GlobalConf
from vloc.features import make_extractor
from vloc.models.delg import DELG_VARIANTS, build_delg, load_delg, preprocess, rf_centres, save_delg
from vloc.models.delg_convert import convert_delg, delg_names
from vloc.models.tf_checkpoint import TFCheckpoint
from vloc.retrieval import make_global_model

HERE = Path(__file__).resolve().parent
PARITY_RTOL = 1e-4


def _require_tensorflow() -> None:
    try:
        import tensorflow  # noqa: F401
        import tf_slim  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"TensorFlow + tf-slim are required for the DELG parity test under CI: {exc}")
        pytest.skip(f"TensorFlow / tf-slim not installed ({exc}); pip install -e '.[parity]'")


def _image(data_dir: Path, name: str, size: tuple[int, int]) -> np.ndarray:
    path = data_dir / "prepared" / "sacre_coeur" / "images" / name
    bgr = cv2.imread(str(path))
    assert bgr is not None, path
    return np.ascontiguousarray(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)[:, :, ::-1])


@pytest.fixture(scope="module")
def parity_run(data_dir, tmp_path_factory):
    """TF reference outputs (subprocess: TF and torch keep their own threads) for an even- and an odd-sized image."""
    _require_tensorflow()
    out = tmp_path_factory.mktemp("delg_parity")
    images = [_image(data_dir, "02928139_3448003521.jpg", (320, 240)),
              _image(data_dir, "03903474_1471484089.jpg", (289, 225))]
    files = []
    for i, im in enumerate(images):
        np.save(out / f"im{i}.npy", im)
        files.append(str(out / f"im{i}.npy"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(HERE / "delg_tf_reference.py"), str(out), "0", *files],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    refs = [dict(np.load(out / f"ref{i}.npz")) for i in range(len(images))]
    return out, images, refs


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_parity_with_tf_slim(parity_run, tmp_path):
    out, images, refs = parity_run
    weights = convert_delg(out / "ckpt", tmp_path / "delg_r50.pt")
    model = load_delg(weights)
    assert model.variant == "r50" and model.global_dim == 2048
    assert model.gem_p.item() == pytest.approx(3.3, abs=1e-6)  # read from gem/gem_power, not the default 3
    for image, ref in zip(images, refs, strict=True):
        with torch.inference_mode():
            ours = {k: v.numpy() for k, v in model(preprocess("r50", image)).items()}
        ours["block3_s32"] = ours["conv4"][..., ::2, ::2]  # TF-Slim's own stride-32 block3 end point
        for key, theirs in ref.items():
            assert ours[key].shape == theirs.shape, key
            assert np.abs(theirs).max() > 1e-3, f"{key}: reference is all zeros, the test would prove nothing"
            assert _rel(ours[key], theirs) < PARITY_RTOL, f"{key}: relative error {_rel(ours[key], theirs):.2e}"
        # the local descriptors are the L2-normalised codes
        codes = ref["codes"][0].reshape(128, -1).T
        ours_desc = torch.nn.functional.normalize(torch.from_numpy(ours["codes"][0].reshape(128, -1).T), dim=1)
        expected = codes / np.linalg.norm(codes, axis=1, keepdims=True)
        assert _rel(ours_desc.numpy(), expected) < PARITY_RTOL


def test_checkpoint_reader_reads_tf_values(parity_run):
    out, _, _ = parity_run
    ckpt = TFCheckpoint(out / "ckpt" / "model.ckpt.index")
    names = set(delg_names("r50").values())
    assert names <= set(ckpt.keys())
    w = ckpt.read("resnet_v1_50/block3/unit_6/bottleneck_v1/conv2/weights")
    assert w.shape == (3, 3, 256, 256) and w.dtype == np.float32 and 0.001 < w.std() < 1
    assert float(ckpt.read("gem/gem_power")) == pytest.approx(3.3)


def test_inspect_detects_the_tf_slim_layout(parity_run, capsys):
    from vloc.cli import main as cli
    from vloc.models.weights_inspect import Layout, inspect_weights

    out, _, _ = parity_run
    seen = inspect_weights(out / "ckpt")
    assert seen.layout is Layout.TF_SLIM and not seen.tf2
    assert ("weights", (3, 3, 256, 256)) in seen.layers["resnet_v1_50/block3/unit_6/bottleneck_v1/conv2"]
    assert cli(["weights", "inspect", str(out / "ckpt")]) == 0
    printed = capsys.readouterr().out
    assert "layout: tf-slim" in printed and "TF1 (name-based" in printed


def test_tf2_object_checkpoint_is_refused(tmp_path):
    _require_tensorflow()
    code = ("import tensorflow as tf, sys; v = tf.Variable(tf.zeros([2, 3]));"
            "tf.train.Checkpoint(v=v).write(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "tf2")], check=True, capture_output=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
    ckpt = TFCheckpoint(tmp_path / "tf2")
    assert any(k.endswith(".ATTRIBUTES/VARIABLE_VALUE") for k in ckpt.keys())
    with pytest.raises(ValueError, match=r"an unknown layout \(TF2 object-based: True\).*Keys: .*v/\.ATTRIBUTES"):
        convert_delg(tmp_path / "tf2", tmp_path / "out.pt")
    from vloc.models.weights_inspect import Layout, detect_layout, inspect_weights

    seen = inspect_weights(tmp_path / "tf2")
    assert seen.tf2 and seen.layout is Layout.UNKNOWN and seen.layers == {"(top)": [("v", (2, 3))]}
    keras = ["_model/backbone/l2a/conv2a/kernel/.ATTRIBUTES/VARIABLE_VALUE",
             "_model/backbone/l2a/conv2a/_kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    assert detect_layout(keras[:1]) is detect_layout(keras[1:]) is Layout.DELF_KERAS  # both Keras spellings


@pytest.mark.parametrize("variant", ["r50", "r101"])
def test_converter_names_cover_every_tensor(variant):
    model = build_delg(variant)
    names = delg_names(variant)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")} - {"gem_p"}
    assert set(names) == expected
    assert len(set(names.values())) == len(names)


@pytest.mark.parametrize("variant,size", [("r50", 320), ("r50", 321), ("small", 416), ("small", 419)])
def test_receptive_field_centres(variant, size):
    """The gradient support of a conv4 cell is its receptive field: its centre is where keypoints go."""
    torch.manual_seed(0)
    model = build_delg(variant, pretrained_backbone=False)
    x = torch.randn(1, 3, size, size, requires_grad=True)
    conv4 = model.backbone(x, with_conv5=False)["conv4"]
    j = conv4.shape[-1] // 2
    conv4[0, :, j, j].abs().sum().backward()
    cols = torch.nonzero(x.grad[0].abs().sum(dim=(0, 1)) > 0)[:, 0]
    offset, stride = rf_centres(DELG_VARIANTS[variant].strided, size)
    assert stride == 16
    assert (cols.min() + cols.max()).item() / 2 == pytest.approx(offset + stride * j)


def test_save_load_and_errors(tmp_path):
    model = build_delg("small", global_dim=256)
    path = save_delg(model, tmp_path / "small.pt", "small", {"attention_threshold": 1.5})
    loaded = load_delg(path)
    assert loaded.variant == "small" and loaded.global_dim == 256 and loaded.extra["attention_threshold"] == 1.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.raises(FileNotFoundError, match="vloc train delg"):
        load_delg(tmp_path / "missing.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a vloc DELG"):
        load_delg(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not 'r50'"):
        build_delg("r50", weights=path)
    with pytest.raises(ValueError, match="Unknown DELG variant"):
        build_delg("r18")
    with pytest.raises(ValueError, match="convert-delg"):
        make_extractor(FeatureConf(name="delg", variant="small"))


def test_small_variant_extractors_on_real_image(data_dir, tmp_path):
    """ImageNet EfficientNet-Lite0 backbone + fresh heads: shapes, norms, keypoints inside the image."""
    torch.manual_seed(0)
    path = save_delg(build_delg("small"), tmp_path / "small.pt", "small")
    image = cv2.imread(str(data_dir / "prepared" / "sacre_coeur" / "images" / "02928139_3448003521.jpg"))[:, :, ::-1]
    image = np.ascontiguousarray(image)
    height, width = image.shape[:2]
    feats = make_extractor(FeatureConf(name="delg", variant="small", weights=str(path), max_keypoints=300,
                                       resize_max=320))(image)
    assert 100 < len(feats) <= 300
    assert feats.descriptors.shape == (len(feats), 128) and feats.image_size == (width, height)
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)
    assert (feats.keypoints >= 0).all() and (feats.keypoints[:, 0] <= width).all()
    assert (feats.keypoints[:, 1] <= height).all()
    assert (np.diff(feats.scores) <= 0).all() and (feats.scores > 0).all()
    assert len(np.unique(np.floor(feats.keypoints), axis=0)) == len(feats)  # no two on one pixel
    glob = make_global_model(GlobalConf(name="delg", variant="small", weights=str(path), resize_max=448))
    desc = glob(image)
    assert desc.shape == (1280,) and desc.dtype == np.float32
    assert np.linalg.norm(desc) == pytest.approx(1.0, abs=1e-5)
    bf16 = make_global_model(GlobalConf(name="delg", variant="small", weights=str(path), resize_max=448, bf16=True))
    assert float(desc @ bf16(image)) > 0.99  # bf16 autocast stays close to fp32
