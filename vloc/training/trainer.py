"""DELG training loop: losses, trainable parts, checkpoints, resume, validation retrieval per epoch.

Checkpoint directory::

    OUT/delg.pt          the model (``vloc.models.delg.save_delg``), loadable by ``load_delg``
    OUT/train_state.pt   optimizer, loss heads (ArcFace centres, attention classifier), epoch, classes
    OUT/history.json     per epoch: mean losses, validation recall@1 / mAP, seconds

Both checkpoint files are written to a temporary name and renamed, so an interrupted run leaves
the previous epoch's checkpoint intact. ``resume=True`` continues from ``train_state.pt``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vloc.io.files import atomic_path
from vloc.device import resolve_device
from vloc.models.delg import DELG, build_delg, load_delg, model_device, preprocess, save_delg
from vloc.training.data import (
    BatchSampler,
    ImageLoader,
    LabelledSet,
    read_class_folders,
    read_csv_labels,
    resize_longest,
    split_train_val,
)
from vloc.training.losses import ARCFACE_MARGIN, ARCFACE_SCALE, RECONSTRUCTION_WEIGHT, DELGLoss, LossTerms

logger = logging.getLogger(__name__)

BACKBONE_MODES = ("frozen", "last", "all")
MODEL_FILE, STATE_FILE, HISTORY_FILE = "delg.pt", "train_state.pt", "history.json"


@dataclass(frozen=True)
class TrainConf:
    """What to train and how.

    ``backbone``: ``"frozen"`` (default: train the heads only — whitening FC, GeM p, attention,
    autoencoder — which is what a 2-core CPU can do), ``"last"`` (also the layers after conv4,
    i.e. the last stage: only the global loss reaches them), or ``"all"``. The backbone's batch
    norm statistics stay frozen in every mode (small batches). Optimizer: Adam on the trainable
    parameters (``lr`` for the heads, ``backbone_lr`` for the backbone), cosine decay per step.
    """

    variant: str = "small"
    image_size: int = 256  # training crops are image_size x image_size; evaluation: longest side
    batch_size: int = 8
    epochs: int = 10
    lr: float = 1e-3
    backbone_lr: float = 1e-4
    weight_decay: float = 1e-5
    backbone: str = "frozen"
    val_fraction: float = 0.2
    seed: int = 0
    arcface_margin: float = ARCFACE_MARGIN
    arcface_scale: float = ARCFACE_SCALE
    reconstruction_weight: float = RECONSTRUCTION_WEIGHT

    def __post_init__(self):
        if self.backbone not in BACKBONE_MODES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONE_MODES)}, got {self.backbone!r}")
        if self.image_size < 32 or self.batch_size < 1 or self.epochs < 0:
            raise ValueError(f"invalid training sizes: image_size={self.image_size}, batch_size={self.batch_size}, "
                             f"epochs={self.epochs}")


def layers_after_conv4(model: DELG, probe_size: int = 64) -> list[nn.Parameter]:
    """Backbone parameters that do not feed conv4 (the last stage), found by a gradient probe."""
    params = list(model.backbone.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    out = model.backbone(torch.zeros(1, 3, probe_size, probe_size))
    grads = torch.autograd.grad(out["conv4"].sum(), params, allow_unused=True)
    for p, flag in zip(params, flags, strict=True):
        p.requires_grad_(flag)
    return [p for p, g in zip(params, grads, strict=True) if g is None]


def set_trainable(model: DELG, backbone: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Freeze per ``backbone`` mode; return ``(head parameters, trainable backbone parameters)``."""
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    heads = [p for p in model.parameters() if id(p) not in backbone_ids]
    chosen = {"frozen": [], "last": layers_after_conv4(model), "all": list(model.backbone.parameters())}[backbone]
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    for p in chosen + heads:
        p.requires_grad_(True)
    return heads, chosen


def identity_whitening(model: DELG) -> None:
    """Start the whitening FC at the identity (when square): the untrained global head is then plain
    GeM on the backbone, the ImageNet baseline, instead of a random projection of it."""
    weight = model.whiten.weight
    if weight.shape[0] == weight.shape[1]:
        with torch.no_grad():
            weight.copy_(torch.eye(weight.shape[0]))
            model.whiten.bias.zero_()


def train_mode(model: DELG) -> None:
    """Heads in training mode (the local head sees ``conv4.detach()``), backbone BN frozen."""
    model.train()
    model.backbone.eval()


@torch.inference_mode()
def describe(model: DELG, variant: str, data: LabelledSet, size: int, loader: ImageLoader | None = None,
             desc: str = "describe") -> np.ndarray:
    """``(N, D)`` unit global descriptors, one scale, longest image side resized to ``size``."""
    was_training = model.training
    model.eval()
    loader = loader or ImageLoader(data, size)
    out = []
    for name in tqdm(data.names, desc=desc, unit="img", leave=False):
        image = resize_longest(loader(name), size)
        x = preprocess(variant, image[None]).to(model_device(model))
        out.append(model(x)["global_descriptor"][0].float().cpu().numpy())
    model.train(was_training)
    return np.stack(out) if out else np.zeros((0, 0), np.float32)


def retrieval_metrics(queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                      gallery_labels: np.ndarray) -> dict[str, float]:
    """Same-label retrieval: recall@1 and mAP of the queries against the gallery (inner product).
    Queries without a same-label gallery image are left out; NaN when none is left."""
    if len(queries) == 0 or len(gallery) == 0:
        return dict(recall_at_1=float("nan"), mAP=float("nan"), num_queries=0)
    order = np.argsort(-(queries @ gallery.T), axis=1)
    relevant = gallery_labels[order] == query_labels[:, None]
    keep = relevant.any(axis=1)
    if not keep.any():
        return dict(recall_at_1=float("nan"), mAP=float("nan"), num_queries=0)
    relevant = relevant[keep]
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    ap = (relevant * hits / ranks).sum(axis=1) / relevant.sum(axis=1)
    return dict(recall_at_1=float(relevant[:, 0].mean()), mAP=float(ap.mean()), num_queries=int(keep.sum()))


class Trainer:
    """Train DELG on ``train`` (validated on ``val`` against ``train`` as the gallery).

    ``init_weights``: a ``save_delg`` file to start from (default: ``build_delg(variant)``, i.e.
    the variant's ImageNet backbone and freshly initialised heads).
    """

    def __init__(self, conf: TrainConf, train: LabelledSet, val: LabelledSet, out_dir: Path | str,
                 init_weights: Path | str | None = None, resume: bool = False, device: str | None = None):
        if train.num_classes < 2:
            raise ValueError(f"training needs at least 2 classes, got {train.num_classes}")
        self.conf, self.train_set, self.val_set = conf, train, val
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(conf.seed)
        state = self._resume_state() if resume else None
        if state:
            self.model = load_delg(self.out_dir / MODEL_FILE)
        else:
            self.model = build_delg(conf.variant, weights=init_weights)
            if init_weights is None:
                identity_whitening(self.model)
        self.device = resolve_device(device)
        self.model.to(self.device)
        heads, backbone = set_trainable(self.model, conf.backbone)
        c4, dim = self._probe_dims()
        self.loss = DELGLoss(dim, c4, train.num_classes, conf.arcface_margin, conf.arcface_scale,
                             conf.reconstruction_weight).to(self.device)
        groups = [dict(params=heads + list(self.loss.parameters()), lr=conf.lr)]
        if backbone:
            groups.append(dict(params=backbone, lr=conf.backbone_lr))
        self.optimizer = torch.optim.Adam(groups, weight_decay=conf.weight_decay)
        self.sampler = BatchSampler(train, conf.image_size, conf.batch_size, conf.seed)
        self.val_loader = ImageLoader(val, conf.image_size)
        total = max(1, conf.epochs * len(self.sampler))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.5 * (1 + np.cos(np.pi * min(step, total) / total)))
        self.epoch, self.history = 0, []
        if state:
            self.loss.load_state_dict(state["loss"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.epoch, self.history = state["epoch"], state["history"]
            logger.info("resumed %s at epoch %d", self.out_dir, self.epoch)

    def _resume_state(self) -> dict | None:
        path = self.out_dir / STATE_FILE
        if not path.is_file():
            logger.warning("%s: nothing to resume (no %s); starting afresh", self.out_dir, STATE_FILE)
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        if list(state["classes"]) != list(self.train_set.classes) or state["conf"]["variant"] != self.conf.variant:
            raise ValueError(f"{path}: was trained with other classes or variant ({state['conf']['variant']}, "
                             f"{len(state['classes'])} classes); use another --out or drop --resume")
        return state

    def _probe_dims(self) -> tuple[int, int]:
        with torch.no_grad():
            self.model.eval()
            out = self.model(preprocess(self.conf.variant, np.zeros((1, 64, 64, 3), np.uint8)).to(self.device))
        return out["conv4"].shape[1], out["global_descriptor"].shape[1]

    def step(self, images: np.ndarray, labels: np.ndarray) -> LossTerms:
        """One optimisation step on ``(B, S, S, 3)`` uint8 images and ``(B,)`` labels."""
        train_mode(self.model)
        outputs = self.model(preprocess(self.conf.variant, images).to(self.device))
        terms = self.loss(outputs, torch.from_numpy(labels).to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()
        self.scheduler.step()
        return terms

    def validate(self) -> dict[str, float]:
        if len(self.val_set) == 0:
            return dict(recall_at_1=float("nan"), mAP=float("nan"), num_queries=0)
        size = self.conf.image_size
        gallery = describe(self.model, self.conf.variant, self.train_set, size, self.sampler.loader, "gallery")
        queries = describe(self.model, self.conf.variant, self.val_set, size, self.val_loader, "validate")
        return retrieval_metrics(queries, np.asarray(self.val_set.labels), gallery, np.asarray(self.train_set.labels))

    def fit(self) -> list[dict]:
        """Train the remaining epochs, checkpointing after each; returns the history."""
        if self.epoch == 0 and not self.history:
            self.history.append(dict(epoch=0, validation=self.validate()))
            if len(self.val_set):
                logger.info("before training: validation %s", self.history[-1]["validation"])
        while self.epoch < self.conf.epochs:
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            bar = tqdm(self.sampler.epoch(self.epoch), total=len(self.sampler), desc=f"epoch {self.epoch + 1}",
                       unit="batch")
            for images, labels in bar:
                for key, value in self.step(images, labels).as_floats().items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.set_postfix(loss=f"{sums['total'] / (bar.n + 1):.3f}")
            self.epoch += 1
            record = dict(epoch=self.epoch, losses={k: v / len(self.sampler) for k, v in sums.items()},
                          validation=self.validate(), seconds=round(time.perf_counter() - t0, 2))
            self.history.append(record)
            logger.info("epoch %d: losses %s%s", self.epoch, {k: round(v, 4) for k, v in record["losses"].items()},
                        f", validation {record['validation']}" if len(self.val_set) else "")
            self.save()
        if not (self.out_dir / MODEL_FILE).is_file():  # zero epochs: the initial model is the result
            self.save()
        return self.history

    def save(self) -> Path:
        """Write the model, the training state and the history into the output directory."""
        validation = self.history[-1]["validation"] if self.history else None
        extra = dict(training=dict(conf=dataclasses.asdict(self.conf), epoch=self.epoch,
                                   classes=len(self.train_set.classes), validation=validation))
        save_delg(self.model, self.out_dir / MODEL_FILE, self.conf.variant, extra)  # written atomically
        with atomic_path(self.out_dir / STATE_FILE) as tmp:
            torch.save(dict(epoch=self.epoch, history=self.history, conf=dataclasses.asdict(self.conf),
                            classes=list(self.train_set.classes), loss=self.loss.state_dict(),
                            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict()), tmp)
        (self.out_dir / HISTORY_FILE).write_text(json.dumps(self.history, indent=1, default=float))
        return self.out_dir / MODEL_FILE


def train_delg(images: Path | str, out_dir: Path | str, conf: TrainConf = TrainConf(), csv: Path | str | None = None,
               resume: bool = False, init_weights: Path | str | None = None, device: str | None = None) -> list[dict]:
    """``vloc train delg``: labels from ``csv`` (``image,label`` or GLDv2 layout) or from one
    sub-folder per class, a held-out split per class for validation, then :meth:`Trainer.fit` on
    ``device`` (:func:`vloc.device.resolve_device`)."""
    data = read_csv_labels(images, csv) if csv is not None else read_class_folders(images)
    train, val = split_train_val(data, conf.val_fraction, conf.seed)
    logger.info("%d classes: %d training images, %d validation images", data.num_classes, len(train), len(val))
    return Trainer(conf, train, val, out_dir, init_weights, resume, device).fit()
