"""DELG: TF parity of converted TF-Slim checkpoints and delf Keras SavedModels, the official extraction,
checkpoint and graph readers, receptive fields, extractors, DELG as a map's global descriptor."""
from __future__ import annotations

import importlib.util
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
from vloc.models.delg import DELG_VARIANTS, build_delg, gem, load_delg, preprocess, rf_centres, save_delg
from vloc.models.delg_convert import convert_delg, delg_names, keras_delg_names
from vloc.models.delg_official import SCALES, official_global, run_signature
from vloc.models.tf_checkpoint import TFCheckpoint
from vloc.retrieval import make_global_model

HERE = Path(__file__).resolve().parent
PARITY_RTOL = 1e-4


def _require_tensorflow() -> None:
    """TensorFlow runs only in the reference subprocesses: it is looked for here, never imported."""
    missing = [name for name in ("tensorflow", "tf_slim") if importlib.util.find_spec(name) is None]
    if missing and os.environ.get("CI"):
        pytest.fail(f"TensorFlow + tf-slim are required for the DELG parity test under CI; missing: {missing}")
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed; pip install -e '.[parity]'")


def _image(data_dir: Path, name: str, size: tuple[int, int]) -> np.ndarray:
    path = data_dir / "prepared" / "sacre_coeur" / "images" / name
    bgr = cv2.imread(str(path))
    assert bgr is not None, path
    return np.ascontiguousarray(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)[:, :, ::-1])


def _run_tf(args: list[str], timeout: int) -> None:
    """Run a TensorFlow script in its own process (TF and torch keep their own threads); fail with its stderr."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _saved_images(data_dir: Path, out: Path, sizes: tuple[tuple[int, int], tuple[int, int]]):
    """Two real images (an even- and an odd-sized one) and the .npy files handed to a TF reference script."""
    images = [_image(data_dir, name, size) for name, size in
              zip(("02928139_3448003521.jpg", "03903474_1471484089.jpg"), sizes, strict=True)]
    files = []
    for i, im in enumerate(images):
        np.save(out / f"im{i}.npy", im)
        files.append(str(out / f"im{i}.npy"))
    return images, files


@pytest.fixture(scope="module")
def parity_run(data_dir, tmp_path_factory):
    """TF reference outputs (subprocess: TF and torch keep their own threads) for an even- and an odd-sized image."""
    _require_tensorflow()
    out = tmp_path_factory.mktemp("delg_parity")
    images, files = _saved_images(data_dir, out, ((320, 240), (289, 225)))
    _run_tf([str(HERE / "delg_tf_reference.py"), str(out), "0", *files], timeout=600)
    refs = [dict(np.load(out / f"ref{i}.npz")) for i in range(len(images))]
    return out, images, refs


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_parity_with_tf_slim(parity_run, tmp_path):
    out, images, refs = parity_run
    done = convert_delg(out / "ckpt", tmp_path / "delg_r50.pt")
    assert "tensorflow" not in sys.modules  # converted and run without TensorFlow in this process
    assert (done.layout.value, done.extraction, done.attention_input) == ("tf-slim", "vloc", "reconstruction")
    model = load_delg(done.path)
    assert model.variant == "r50" and model.global_dim == 2048 and model.extra["extraction"] == "vloc"
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
    _run_tf(["-c", code, str(tmp_path / "tf2")], timeout=300)
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


@pytest.mark.parametrize("variant", ["r50", "r101", "keras-r50"])
def test_converter_names_cover_every_tensor(variant):
    model = build_delg(variant)
    names = keras_delg_names() if variant == "keras-r50" else delg_names(variant)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")} - {"gem_p"}
    assert set(names) == expected
    assert len(set(names.values())) == len(names)


@pytest.mark.parametrize("variant,size", [("r50", 320), ("r50", 321), ("keras-r50", 320), ("keras-r50", 321),
                                          ("small", 416), ("small", 419)])
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


# ---------------------------------------------------------------------------------------------
# delf's TF2 Keras DELG: a random-weight SavedModel written from the spec (tests/delg_keras_reference.py)

ATTENTION_VARIANTS = ("block3", "reconstruction")
KERAS_THRESHOLD = 1.0  # stored in the converted file; the parity runs pass the reference's own threshold


@pytest.fixture(scope="module")
def keras_exports(data_dir, tmp_path_factory):
    """Per attention variant: the reference's directory (SavedModel, ``kernel`` checkpoint, outputs) for a
    640x480 and a 321x225 image (sizes whose Keras and TF-Slim output shapes differ: 225, 321)."""
    _require_tensorflow()
    root = tmp_path_factory.mktemp("delg_keras")
    images, files = _saved_images(data_dir, root, ((640, 480), (321, 225)))
    runs = {}
    for seed, attention in enumerate(ATTENTION_VARIANTS):
        out = root / attention
        _run_tf([str(HERE / "delg_keras_reference.py"), str(out), str(seed), attention, *files], timeout=900)
        runs[attention] = (out, [dict(np.load(out / f"ref{i}.npz")) for i in range(len(images))])
    return images, runs


def _keyed(locations: np.ndarray, scales: np.ndarray) -> list[tuple]:
    """Order-free identity of a selected cell: its scale and its box centre (to 1/8 px)."""
    return [(round(float(s), 4), round(float(y) * 8), round(float(x) * 8)) for (y, x), s in zip(locations, scales)]


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_keras_parity(keras_exports, attention, tmp_path):
    images, runs = keras_exports
    out, refs = runs[attention]
    done = convert_delg(out / "saved_model", tmp_path / "keras.pt", attention_threshold=KERAS_THRESHOLD)
    assert "tensorflow" not in sys.modules  # converted and run without TensorFlow in this process
    assert (done.variant, done.layout.value, done.extraction) == ("keras-r50", "delf-keras", "official")
    assert (done.attention_input, done.attention_source) == (attention, "read from the graph")
    assert (done.gem_power, done.gem_source) == (3.0, "read from the graph")
    model = load_delg(done.path)
    assert model.attention_input == attention and model.extra["attention_threshold"] == KERAS_THRESHOLD
    for image, ref in zip(images, refs, strict=True):
        with torch.inference_mode():
            feats = model.backbone(preprocess(model.variant, image))
            block3 = feats["conv4"][..., ::2, ::2]
            heads = model.local_head(block3)
            embedding = model.whiten(gem(feats["conv5"], model.gem_p))
        ours = {"block3_s16": feats["conv4"], "block3": block3, "conv5": feats["conv5"], "attention": heads["attention"],
                "codes": heads["codes"], "embedding": embedding}
        for key, value in ours.items():
            theirs = ref[key]
            assert value.shape == theirs.shape, key
            assert np.abs(theirs).max() > 1e-3, f"{key}: reference is all zeros, the test would prove nothing"
            assert _rel(value.numpy(), theirs) < PARITY_RTOL, f"{key}: relative error {_rel(value.numpy(), theirs):.2e}"
        # the official extraction against the SavedModel's own signature
        sig = run_signature(model, image, float(ref["sig_thres"]), int(ref["sig_max_feature_num"]), SCALES, (3, 4, 5))
        boxes = ref["sig_boxes"]
        centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
        assert 10 < len(sig.scores) == len(boxes) < (image.shape[0] * image.shape[1]) // 64
        ours_keys, theirs_keys = _keyed(sig.locations, sig.scales), _keyed(centres, ref["sig_scales"])
        assert sorted(ours_keys) == sorted(theirs_keys)  # the same cells (their order may swap among near-ties)
        where = {k: i for i, k in enumerate(theirs_keys)}
        j = np.array([where[k] for k in ours_keys])
        assert _rel(sig.scores, ref["sig_scores"][j, 0]) < PARITY_RTOL
        a = sig.descriptors / np.linalg.norm(sig.descriptors, axis=1, keepdims=True)
        b = ref["sig_features"][j] / np.linalg.norm(ref["sig_features"][j], axis=1, keepdims=True)
        assert (a * b).sum(axis=1).min() > 0.9999
        assert _rel(sig.global_raw, ref["sig_global_descriptors"]) < PARITY_RTOL
        assert float(official_global(sig.global_raw) @ official_global(ref["sig_global_descriptors"])) > 0.9999


def test_keras_graph_spellings_and_refusals(keras_exports, tmp_path, capsys):
    from vloc.cli import main as cli
    from vloc.models.tf_graph import read_graph
    from vloc.models.weights_inspect import Layout, inspect_weights

    _, runs = keras_exports
    out, _ = runs["block3"]
    facts = read_graph(out / "saved_model")
    assert facts.tf2 and facts.gem_power == pytest.approx(3.0) and facts.attention_input == "block3"
    assert set(facts.signatures["serving_default"].inputs) == {
        "input_image", "input_scales", "input_max_feature_num", "input_abs_thres", "input_global_scales_ind"}
    assert set(facts.signatures["serving_default"].outputs) == {"boxes", "features", "scales", "scores",
                                                                "global_descriptors"}
    assert {round(e, 9) for e in facts.bn_epsilons} == {1e-3}
    assert facts.max_pools == {((1, 3, 3, 1), (1, 2, 2, 1), "VALID"): 1, ((1, 1, 1, 1), (1, 2, 2, 1), "VALID"): 1}
    assert facts.convs[((1, 2, 2, 1), "SAME")] == 1 and facts.convs[((1, 2, 2, 1), "VALID")] == 4  # stem; l3a, l4a
    assert list(facts.resize) == [("ResizeBilinear", True, None)]
    assert cli(["weights", "inspect", str(out / "saved_model")]) == 0
    printed = capsys.readouterr().out
    assert "layout: delf-keras" in printed and "attention input: block3" in printed and "GeM power: 3.0" in printed
    # Keras 2's "kernel" spelling, a bare checkpoint: no graph, so the attention input must be given
    bare = inspect_weights(out / "kernel_ckpt" / "ckpt")
    assert bare.layout is Layout.DELF_KERAS and bare.graph is None and bare.tf2
    assert ("kernel", (7, 7, 3, 64)) in bare.layers["_model/backbone/conv1"]
    with pytest.raises(ValueError, match="no saved_model.pb beside it; give --attention-input"):
        convert_delg(out / "kernel_ckpt" / "ckpt", tmp_path / "k.pt", attention_threshold=1.0)
    with pytest.raises(ValueError, match="give --attention-threshold"):
        convert_delg(out / "saved_model", tmp_path / "k.pt")
    with pytest.raises(ValueError, match="the graph says the attention input = 'block3', but 'reconstruction'"):
        convert_delg(out / "saved_model", tmp_path / "k.pt", attention_threshold=1.0, attention_input="reconstruction")
    assert cli(["weights", "convert-delg", str(out / "kernel_ckpt" / "ckpt"), str(tmp_path / "k.pt"),
                "--attention-input", "block3", "--attention-threshold", "2"]) == 0
    assert "GeM power 3 (delf's exporter default (not in the file))" in capsys.readouterr().out
    from_graph = convert_delg(out / "saved_model", tmp_path / "g.pt", attention_threshold=2.0).path
    a, b = load_delg(tmp_path / "k.pt").state_dict(), load_delg(from_graph).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keras_delg_as_map_global_descriptor(keras_exports, kitti, tmp_path):
    """`vloc map build --global-delg`, localize and `vloc retrieve --rerank` with the converted random-weight model."""
    import json

    from vloc.cli import main as cli
    from vloc.evaluation.metrics import evaluate
    from vloc.io.poses import read_poses
    from vloc.mapping.manifest import read_manifest

    _, runs = keras_exports
    out, _ = runs["block3"]
    weights = convert_delg(out / "saved_model", tmp_path / "delg.pt", attention_threshold=1.0).path
    map_dir, image_list = tmp_path / "map", tmp_path / "map_images.txt"
    image_list.write_text("".join(f"0001{i:02d}.png\n" for i in range(0, 10, 2)))  # 5 of the 10 (DELG on CPU)
    assert cli(["map", "build", "--images", str(kitti.images), "--reference", str(kitti.ref_model), "--out",
                str(map_dir), "--image-list", str(image_list), "--global-delg", str(weights)]) == 0
    glob = read_manifest(map_dir).preset["global_desc"]
    assert (glob["name"], glob["variant"], glob["weights"]) == ("delg", "keras-r50", str(weights.resolve()))
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(kitti.queries.read_text().splitlines()[:2]) + "\n")
    assert cli(["localize", "--map", str(map_dir), "--images", str(kitti.images), "--queries", str(queries),
                "--out", str(tmp_path / "poses.txt")]) == 0
    truth = {n: p for n, p in read_poses(kitti.gt).items() if n in queries.read_text()}
    summary = evaluate(read_poses(tmp_path / "poses.txt"), truth, ((0.25, 2.0),))
    assert len(truth) == 2 and summary.localized == 2 and summary.recalls[(0.25, 2.0)] == 1.0
    pairs = tmp_path / "pairs.txt"
    assert cli(["retrieve", "--map", str(map_dir), "--images", str(kitti.images), "--queries", str(queries),
                "--out", str(pairs), "-k", "3", "--rerank"]) == 0
    for query, cands in json.loads(pairs.with_suffix(".json").read_text())["queries"].items():
        assert len(cands) == 3 and cands[0]["inliers"] > 100 and cands[0]["score"] != 0
        assert abs(int(cands[0]["name"][:6]) - int(query[:6])) == 1  # a neighbouring frame after re-ranking


OFFICIAL_MODEL = os.environ.get("VLOC_DELG_OFFICIAL", "")


@pytest.mark.skipif(not OFFICIAL_MODEL, reason="opt-in: set VLOC_DELG_OFFICIAL=/path/to/an/unpacked/official/model "
                    "(a download from storage.googleapis.com/delf; cannot run offline)")
def test_official_release(data_dir, tmp_path):
    """Inspect and convert a released model; with TensorFlow, compare vloc's official extraction with its own output."""
    from vloc.models.weights_inspect import inspect_weights

    path = Path(OFFICIAL_MODEL)
    print(inspect_weights(path).format())
    done = convert_delg(path, tmp_path / "official.pt")  # an unknown layout is refused here, with its keys
    model = load_delg(done.path)
    _require_tensorflow()
    image = _image(data_dir, "02928139_3448003521.jpg", (640, 480))
    np.save(tmp_path / "im.npy", image)
    threshold = done.threshold
    _run_tf([str(HERE / "delg_official_reference.py"), str(path), str(tmp_path / "im.npy"), str(threshold),
             str(tmp_path / "ref.npz")], timeout=1800)
    ref = dict(np.load(tmp_path / "ref.npz"))
    sig = run_signature(model, image, threshold, 1000)
    boxes = ref["boxes"]
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    ours, theirs = _keyed(sig.locations, sig.scales), _keyed(centres, ref["scales"])
    common = set(ours) & set(theirs)
    assert len(common) >= 0.99 * len(theirs) and len(ours) == len(theirs)
    where = {k: i for i, k in enumerate(theirs)}
    pairs = [(i, where[k]) for i, k in enumerate(ours) if k in where]
    i, j = (np.array(p) for p in zip(*pairs, strict=True))
    assert _rel(sig.scores[i], ref["scores"][j, 0]) < PARITY_RTOL
    a, b = sig.descriptors[i], ref["features"][j]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9999
    assert float(official_global(sig.global_raw) @ official_global(ref["global_descriptors"])) > 0.9999


def test_official_mode_extractors(keras_exports, kitti, tmp_path):
    """The extractor and global model of an "official" file: the signature's cells in vloc's convention."""
    from vloc.io.images import read_image
    from vloc.models.delg_official import limit_size

    _, runs = keras_exports
    weights = convert_delg(runs["block3"][0] / "saved_model", tmp_path / "delg.pt", attention_threshold=0.5).path
    image = read_image(kitti.images / "000101.png")  # 1241 x 376 grey
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    feats = make_extractor(FeatureConf(name="delg", variant="keras-r50", weights=str(weights), max_keypoints=200,
                                       resize_max=1024))(image)
    small, (fy, fx) = limit_size(rgb, 1024)
    assert small.shape[:2] == (310, 1024) and fx == pytest.approx(1024 / 1241)
    sig = run_signature(load_delg(weights), small, 0.5, 200, global_scales_ind=())
    assert len(feats) == len(sig.scores) == 200 and feats.image_size == (1241, 376)
    expected = np.stack([sig.locations[:, 1] / fx, sig.locations[:, 0] / fy], axis=1) + 0.5
    np.testing.assert_allclose(feats.keypoints, expected, atol=1e-3)
    assert (np.diff(feats.scores) <= 0).all() and feats.scores.min() >= 0.5
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-5)
    glob = make_global_model(GlobalConf(name="delg", variant="keras-r50", weights=str(weights), resize_max=1024))
    desc = glob(image)
    full = run_signature(load_delg(weights), small, 0.5, 1, with_local=False)
    assert desc.shape == (2048,) and float(desc @ official_global(full.global_raw)) > 0.99999


def test_tf1_saved_model_graph(parity_run, tmp_path):
    """A TF1-format SavedModel (ops in the graph itself, no object graph): inspected and converted from its graph."""
    from vloc.models.weights_inspect import Layout, inspect_weights

    out, _, _ = parity_run
    seen = inspect_weights(out / "tf1_saved_model")
    assert seen.layout is Layout.TF_SLIM and not seen.tf2 and seen.graph is not None and not seen.graph.tf2
    facts = seen.graph
    assert facts.network == "graph" and facts.attention_input == "reconstruction"
    assert set(facts.signatures["serving_default"].outputs) == {"global_descriptor", "attention"}
    assert {round(e, 9) for e in facts.bn_epsilons} == {1e-5}  # TF-Slim's resnet_arg_scope
    assert ((1, 3, 3, 1), (1, 2, 2, 1), "SAME") in facts.max_pools and facts.gem_power is None  # a variable here
    done = convert_delg(out / "tf1_saved_model", tmp_path / "tf1.pt")
    assert (done.attention_input, done.attention_source) == ("reconstruction", "read from the graph")
    a = load_delg(done.path).state_dict()
    b = load_delg(convert_delg(out / "ckpt", tmp_path / "ckpt.pt").path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
