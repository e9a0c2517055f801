"""DELG training: losses decrease, the local losses never reach the backbone, covisibility labels,
checkpoints / resume, and map adaptation."""
from __future__ import annotations

import numpy as np
import pycolmap
import pytest
import torch

from vloc.models.delg import preprocess
from vloc.training.covisibility import cluster_shared, covisibility_clusters, shared_points
from vloc.training.data import BatchSampler, from_mapping, read_csv_labels, split_train_val
from vloc.training.losses import ARCFACE_SCALE, ArcFace
from vloc.training.trainer import TrainConf, Trainer, retrieval_metrics, set_trainable, train_mode

SCENES = ("kitti", "virtual_gallery", "sacre_coeur")


@pytest.fixture(scope="module")
def three_scenes(data_dir):
    """12 images, 3 classes (one per scene), paths relative to ``prepared/``."""
    root = data_dir / "prepared"
    labels = {}
    for scene in SCENES:
        for name in sorted((root / scene / "images").iterdir())[:4]:
            labels[f"{scene}/images/{name.name}"] = scene
    return from_mapping(root, labels)


def test_each_loss_decreases(three_scenes, tmp_path):
    conf = TrainConf(image_size=128, batch_size=6, epochs=8, lr=2e-3, val_fraction=0.0, seed=0)
    trainer = Trainer(conf, three_scenes, three_scenes.subset([]), tmp_path)
    steps = [trainer.step(images, labels).as_floats() for e in range(conf.epochs)
             for images, labels in trainer.sampler.epoch(e)]
    assert len(steps) == 16
    for key in ("arcface", "attention", "reconstruction"):
        first = np.mean([s[key] for s in steps[:4]])
        last = np.mean([s[key] for s in steps[-4:]])
        assert last < 0.9 * first, f"{key}: first steps {first:.4f}, last steps {last:.4f}"


def test_local_losses_stop_at_conv4(three_scenes, tmp_path):
    conf = TrainConf(image_size=96, batch_size=4, backbone="all", val_fraction=0.0)
    trainer = Trainer(conf, three_scenes, three_scenes.subset([]), tmp_path)
    images, labels = next(trainer.sampler.epoch(0))
    backbone = list(trainer.model.backbone.parameters())
    local_params = list(trainer.model.attention.parameters()) + list(trainer.model.autoencoder.parameters())
    assert all(p.requires_grad for p in backbone)

    def grads(which: str, params):
        torch.manual_seed(0)
        train_mode(trainer.model)
        terms = trainer.loss(trainer.model(preprocess("small", images)), torch.from_numpy(labels))
        loss = {"local": terms.local, "global": terms.arcface, "total": terms.total}[which]
        return torch.autograd.grad(loss, params, allow_unused=True)

    local = grads("local", backbone)
    assert all(g is None or not g.abs().any() for g in local), "a local loss reached the backbone"
    assert all(g is not None and g.abs().sum() > 0 for g in grads("local", local_params))
    with_local, without = grads("total", backbone), grads("global", backbone)
    assert sum(g is not None for g in without) > 0.9 * len(backbone)
    for a, b in zip(with_local, without, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


def test_last_stage_mode_trains_only_layers_after_conv4(tmp_path, three_scenes):
    trainer = Trainer(TrainConf(backbone="last", val_fraction=0.0), three_scenes, three_scenes.subset([]), tmp_path)
    heads, chosen = set_trainable(trainer.model, "last")
    net = trainer.model.backbone.net
    chosen_ids = {id(p) for p in chosen}
    assert all(id(p) in chosen_ids for p in net._conv_head.parameters())
    assert not any(id(p) in chosen_ids for p in net._blocks[net.stride16_index].parameters())
    assert not any(id(p) in chosen_ids for p in net._conv_stem.parameters())


def test_arcface_margin_and_scale():
    head = ArcFace(4, 3)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3, 4))
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    plain = head.logits(x)
    margin = head.logits(x, torch.tensor([0]))
    theta = np.arccos(1 / np.sqrt(2))
    assert plain[0, 0].item() == pytest.approx(ARCFACE_SCALE / np.sqrt(2), rel=1e-5)
    assert margin[0, 0].item() == pytest.approx(ARCFACE_SCALE * np.cos(theta + 0.1), rel=1e-5)
    assert torch.equal(margin[0, 1:], plain[0, 1:])


def test_checkpoint_resume_and_validation(three_scenes, tmp_path):
    train, val = split_train_val(three_scenes, 0.25, seed=0)
    assert len(val) == 3 and len(train) == 9 and set(val.labels) == {0, 1, 2}
    conf = TrainConf(image_size=96, batch_size=6, epochs=1, val_fraction=0.25)
    history = Trainer(conf, train, val, tmp_path).fit()
    assert [h["epoch"] for h in history] == [0, 1]
    assert 0.0 <= history[-1]["validation"]["recall_at_1"] <= 1.0 and history[-1]["validation"]["num_queries"] == 3
    resumed = Trainer(TrainConf(image_size=96, batch_size=6, epochs=2, val_fraction=0.25), train, val, tmp_path,
                      resume=True)
    assert resumed.epoch == 1
    assert [h["epoch"] for h in resumed.fit()] == [0, 1, 2]
    other = from_mapping(three_scenes.root, {n: "x" if i % 2 else "y" for i, n in enumerate(three_scenes.names)})
    with pytest.raises(ValueError, match="other classes"):
        Trainer(conf, other, other.subset([]), tmp_path, resume=True)


def test_retrieval_metrics():
    g = np.eye(3, dtype=np.float32)
    q = np.array([[0.9, 0.1, 0], [0, 0.2, 0.8]], np.float32)
    m = retrieval_metrics(q, np.array([0, 1]), g, np.array([0, 1, 2]))
    assert m["recall_at_1"] == 0.5 and m["num_queries"] == 2
    assert m["mAP"] == pytest.approx((1.0 + 0.5) / 2)


def test_csv_and_sampler(tmp_path, three_scenes):
    csv = tmp_path / "train.csv"
    csv.write_text("image,label\n" + "".join(f"{n},{three_scenes.classes[k]}\n"
                                             for n, k in zip(three_scenes.names, three_scenes.labels, strict=True)))
    data = read_csv_labels(three_scenes.root, csv)
    assert data.names == three_scenes.names and data.num_classes == 3
    crops, labels = next(BatchSampler(data, 64, 5, seed=1).epoch(0))
    assert crops.shape == (5, 64, 64, 3) and crops.dtype == np.uint8 and labels.shape == (5,)
    (tmp_path / "bad.csv").write_text("file,class\na.jpg,1\n")
    with pytest.raises(ValueError, match="bad.csv: header"):
        read_csv_labels(three_scenes.root, tmp_path / "bad.csv")


def _two_place_reconstruction() -> pycolmap.Reconstruction:
    """16 synthetic images; the first 8 see points 0-149, the last 8 points 150-299, all see 10 more."""
    options = pycolmap.SyntheticDatasetOptions()
    options.num_frames_per_rig, options.num_points3D = 8, 310
    rec = pycolmap.synthesize_dataset(options)
    images = sorted(rec.images.values(), key=lambda im: im.name)
    group = {im.image_id: int(i >= 8) for i, im in enumerate(images)}
    points = sorted(rec.points3D)
    for rank, pid in enumerate(points):
        if rank >= 300:
            continue  # seen by every image: a bridge below min_shared
        keep = int(rank >= 150)
        observations = [(el.image_id, el.point2D_idx) for el in rec.points3D[pid].track.elements]
        for image_id, point2D_idx in observations:
            if group[image_id] != keep:
                rec.delete_observation(image_id, point2D_idx)
    return rec


def test_covisibility_clusters_synthetic():
    rec = _two_place_reconstruction()
    names, shared = shared_points(rec)
    by_name = {im.name: im.image_id for im in rec.images.values()}
    row = {by_name[n]: i for i, n in enumerate(names)}
    expected = np.zeros_like(shared)
    for point in rec.points3D.values():
        ids = sorted({row[el.image_id] for el in point.track.elements})
        expected[np.ix_(ids, ids)] += 1
    np.testing.assert_array_equal(shared, expected)
    assert shared[0, 1] == 160 and shared[0, 15] == 10
    labels = covisibility_clusters(rec)
    assert [labels[n] for n in names] == [0] * 8 + [1] * 8
    assert len(set(covisibility_clusters(rec, min_ratio=0.05).values())) == 2  # 10 shared points < min_shared
    assert len(set(covisibility_clusters(rec, min_ratio=0.05, min_shared=5).values())) == 1
    # complete linkage: a chain a-b-c with a, c not covisible is not one label
    chain = np.array([[100, 80, 0], [80, 100, 80], [0, 80, 100]])
    assert len(set(cluster_shared(chain).tolist())) == 2


def test_cli_train_delg_and_resume(three_scenes, tmp_path):
    from vloc.cli import main
    from vloc.models.delg import load_delg

    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\n" + "".join(f"{n},{three_scenes.classes[k]}\n"
                                             for n, k in zip(three_scenes.names, three_scenes.labels, strict=True)))
    args = ["train", "delg", "--images", str(three_scenes.root), "--csv", str(csv), "--out", str(tmp_path / "ckpt"),
            "--image-size", "64", "--batch-size", "9", "--val-fraction", "0.25"]
    assert main(args + ["--epochs", "1"]) == 0
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    model = load_delg(tmp_path / "ckpt" / "delg.pt")
    assert model.variant == "small" and model.extra["training"]["epoch"] == 2
    assert model.extra["training"]["validation"]["num_queries"] == 3
    assert main(["train", "delg", "--images", str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # no class folders


@pytest.mark.slow
def test_map_adapt(kitti, kitti_map, tmp_path):
    import json
    import shutil

    from vloc.io.cameras import read_queries
    from vloc.localization.localizer import Localizer
    from vloc.mapping.map_dir import load_map
    from vloc.training.adapt import WEIGHTS_FILE, AdaptConf, adapt_map

    map_dir = tmp_path / "map"
    shutil.copytree(kitti_map, map_dir)  # the fixture map is shared with other tests
    before = (map_dir / "manifest.json").read_text()
    bad = tmp_path / "bad_images"
    bad.mkdir()
    quick = AdaptConf(train=TrainConf(image_size=96, epochs=1, val_fraction=0.0))
    with pytest.raises(FileNotFoundError, match="10 of the map's images are missing"):
        adapt_map(map_dir, quick, images=bad)
    for name in load_map(map_dir).global_names:
        (bad / name).write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):  # fails mid-way: the old map stays as it was
        adapt_map(map_dir, quick, images=bad)
    assert (map_dir / "manifest.json").read_text() == before and not (map_dir / WEIGHTS_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_images", "map"]

    conf = AdaptConf(train=TrainConf(image_size=128, batch_size=5, epochs=2, val_fraction=0.0))
    adaptation = adapt_map(map_dir, conf)  # images: the folder recorded by `map build`
    manifest = json.loads((map_dir / "manifest.json").read_text())
    assert manifest["preset"]["global_desc"]["name"] == "delg"
    assert manifest["preset"]["global_desc"]["weights"] == WEIGHTS_FILE and (map_dir / WEIGHTS_FILE).is_file()
    assert adaptation["clusters"]["count"] >= 2 and adaptation["previous_global_desc"]["name"] == "effnet_lite0_gem"
    data = load_map(map_dir)
    assert data.global_raw.shape == (10, 1280)
    np.testing.assert_allclose(np.linalg.norm(data.global_raw, axis=1), 1.0, atol=1e-5)

    localizer = Localizer.load(map_dir, "sift-fast")  # any preset: the map brings its global model
    assert localizer.preset.global_desc.name == "delg"
    query = read_queries(kitti.queries)[0]
    result = localizer.localize(kitti.images / query.name, query.camera)
    assert result.success, result.reason
    assert len(result.retrieved) == 3
