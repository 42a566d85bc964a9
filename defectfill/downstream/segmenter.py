"""Downstream defect segmenter: a plain U-Net trained for a fixed step budget, and its pixel/tile metrics.

Protocol: train on class-balanced tiles (:class:`~defectfill.downstream.tiles.TileSet`) for exactly
``cfg.steps`` optimiser steps (the step count *is* the budget: runs that are compared use the same
steps, and nothing stops early on evaluation data), then evaluate on :class:`EvalTiles` that cover
every pixel of the evaluation images once.

Metrics (:func:`evaluate_segmenter`) are computed here in torch, not with torchmetrics (not a
dependency of this package); the tests cross-check them against ``torchmetrics`` and hand values:

* ``pixel_ap`` — average precision over all owned pixels, the sklearn definition
  ``AP = sum_n (R_n - R_(n-1)) P_n`` over distinct score thresholds (ties grouped, no
  interpolation); equals ``sklearn.metrics.average_precision_score`` and torchmetrics'
  ``binary_average_precision(thresholds=None)``. Chance level = ``pixel_positive_rate``.
* ``pixel_f1@0.5`` — F1 of ``prob >= 0.5``; ``pixel_f1_best`` — the best F1 over all thresholds,
  chosen on the evaluation data itself (**optimistic**; ``pixel_f1_best_optimistic`` says so). Pass
  ``threshold=`` (e.g. the best-F1 threshold of a validation split of the training data, which
  :func:`train_segmenter` logs as ``val_threshold``) for an honest ``pixel_f1@threshold``.
* ``tile_auroc`` — AUROC of tile score = max probability inside the tile vs label = the tile holds
  a defect pixel (ties count 1/2, Mann-Whitney).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectfill.backbones import TIMM_NAME, load_pretrained_into, normalize
from defectfill.downstream.dis import DISUNet
from defectfill.downstream.tiles import EvalTiles, SourceImage, TileSet, fabric_regions
from defectfill.downstream.unet import UNet
from defectfill.errors import ConfigError, DataError
from defectfill.runinfo import atomic_write_text

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "segmenter.json"
FORMAT = "defectfill-segmenter/1"
ARCHS = ("unet_lite0", "fpn_lite0", "deeplabv3plus_lite0", "unet", "dis_unet")


@dataclass
class SegmenterConfig:
    """Segmenter and training settings (defaults: the CPU-scale setting measured on AITEX)."""

    # "unet_lite0" / "fpn_lite0" / "deeplabv3plus_lite0": segmentation-models-pytorch decoders on
    # the EfficientNet-Lite0 encoder (defectfill.backbones); "unet": the plain U-Net from scratch;
    # "dis_unet": DGT's DIS U-Net (defectfill.downstream.dis, GroupNorm, random init)
    arch: str = "unet_lite0"
    encoder_weights: str = "imagenet"  # "imagenet" (the packaged weights) or "random" (explicit only)
    trainable_stages: int = 0  # last encoder stages trained (0: frozen encoder, 7: all)
    decoder_channels: int = 32  # width of the smp decoder's first stage (halved per stage, at least 8)
    base_channels: int = 16  # plain "unet" / "dis_unet" only (dis_unet: its `width`)
    depth: int = 4  # plain "unet" / "dis_unet" only: number of 2x downsamplings; widths base * 2**i, i = 0..depth
    # (dis_unet caps them at 8 * base)
    in_channels: int = 1  # 1 grey, 3 RGB (must match the tiles)
    pos_weight: float = 20.0  # BCE weight of defect pixels
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"  # "cosine" (decay to 0 over `steps`) or "constant"
    batch_size: int = 8
    steps: int = 600  # the training budget (~5 min on 1 CPU thread at 128 px); compare runs only at equal steps
    crop: int = 128  # crop side in source pixels (also the evaluation tile side)
    size: int = 128  # side the crops are resized to for the network
    positive_fraction: float = 0.5
    # share of positive crops cut from synthetic defect images (None: by weight over all; see TileSet)
    synthetic_fraction: float | None = 0.3
    # share of the steps, from the start, in which synthetic defects supply positives; after it every positive
    # is real (synthetic pretraining, then real fine-tuning: synthetic_fraction 1, synthetic_phase 0.5)
    synthetic_phase: float = 1.0
    hflip: bool = True
    vflip: bool = True
    negative_margin: int = 8
    seed: int = 0
    log_every: int = 25
    eval_batch_size: int = 16
    eval_on_fabric: bool = True  # pixel metrics over fabric + defect pixels (all-pixel figures beside them)
    device: str = "cpu"

    def validate(self) -> SegmenterConfig:
        """Raise ConfigError naming the first bad value; return self."""
        checks = [
            ("arch", self.arch in ARCHS), ("encoder_weights", self.encoder_weights in ("imagenet", "random")),
            ("trainable_stages", 0 <= self.trainable_stages <= 7), ("decoder_channels", self.decoder_channels >= 8),
            ("base_channels", self.base_channels >= 1), ("depth", self.depth >= 1),
            ("in_channels", self.in_channels in (1, 3)), ("pos_weight", self.pos_weight > 0),
            ("lr", self.lr > 0), ("weight_decay", self.weight_decay >= 0),
            ("schedule", self.schedule in ("cosine", "constant")), ("batch_size", self.batch_size >= 1),
            ("steps", self.steps >= 0), ("crop", self.crop >= 1), ("size", self.size >= 1),
            ("positive_fraction", 0 <= self.positive_fraction <= 1),
            ("synthetic_fraction", self.synthetic_fraction is None or 0 <= self.synthetic_fraction <= 1),
            ("synthetic_phase", 0 <= self.synthetic_phase <= 1),
            ("negative_margin", self.negative_margin >= 0), ("log_every", self.log_every >= 1),
            ("eval_batch_size", self.eval_batch_size >= 1),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"segmenter config: invalid {name}={getattr(self, name)!r}")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> SegmenterConfig:
        """Build from a dict; unknown keys raise ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"segmenter config: unknown key(s) {', '.join(unknown)}")
        return cls(**values).validate()


# ----------------------------------------------------------------------------- model


class PretrainedSegmenter(nn.Module):
    """A segmentation-models-pytorch decoder on the EfficientNet-Lite0 encoder (``tu-tf_efficientnet_lite0``).

    Inputs: float (B, 1 or 3, H, W) in [0, 1]; grey is replicated to RGB and normalised as the
    backbone was trained (:func:`defectfill.backbones.normalize`); H, W are replicate-padded to a
    multiple of 32. Only the last ``trainable_stages`` of the encoder's 7 block stages train; the
    rest (stem included) keep gradients off and BatchNorm in eval mode in ``train()``, so a frozen
    encoder stays exactly the ImageNet one. Returns logits (B, 1, H, W).
    """

    def __init__(self, arch: str = "unet_lite0", pretrained: bool = True, trainable_stages: int = 0,
                 decoder_channels: int = 32) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        kind = arch.removesuffix("_lite0")
        widths = tuple(max(decoder_channels // 2**i, 8) for i in range(5))
        kw = {"unet": {"decoder_channels": widths},
              "fpn": {"decoder_pyramid_channels": 2 * decoder_channels, "decoder_segmentation_channels": decoder_channels},
              "deeplabv3plus": {"decoder_channels": 2 * decoder_channels}}[kind]
        cls = {"unet": smp.Unet, "fpn": smp.FPN, "deeplabv3plus": smp.DeepLabV3Plus}[kind]
        self.net = cls(encoder_name=f"tu-{TIMM_NAME}", encoder_weights=None, in_channels=3, classes=1, **kw)
        if pretrained:
            load_pretrained_into(self.net.encoder.model)
        encoder = self.net.encoder.model  # timm EfficientNetFeatures: conv_stem, bn1, blocks (7 stages)
        stages = list(encoder.blocks)
        self.frozen = [encoder.conv_stem, encoder.bn1, *stages[:len(stages) - trainable_stages]]
        for m in self.frozen:
            m.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> PretrainedSegmenter:
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = normalize(x)
        ph, pw = (-h) % 32, (-w) % 32
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return self.net(x)[..., :h, :w]


def build_model(cfg: SegmenterConfig, load_weights: bool = True) -> nn.Module:
    """The segmenter ``cfg.arch`` describes; its random parts are drawn from ``cfg.seed`` only (the
    global RNG state is left untouched). ``load_weights=False`` skips loading the ImageNet encoder
    (for :func:`load_segmenter`, which loads the saved weights over it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.arch == "unet":
            return UNet(cfg.in_channels, cfg.base_channels, cfg.depth)
        if cfg.arch == "dis_unet":
            return DISUNet(cfg.in_channels, cfg.base_channels, cfg.depth)
        return PretrainedSegmenter(cfg.arch, load_weights and cfg.encoder_weights == "imagenet",
                                   cfg.trainable_stages, cfg.decoder_channels)


# ----------------------------------------------------------------------------- metrics (pure)


def _as_flat(scores, labels) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(scores).detach().reshape(-1).to(torch.float64)
    y = torch.as_tensor(labels).detach().reshape(-1).bool()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.numel()}) and labels ({y.numel()}) differ in size")
    return s, y


class NegativeCounts:
    """``fp[j] = #negatives >= t_j`` at every distinct score ``t_j`` of a set of positive scores,
    counted in ONE pass over the negatives (chunks of ``bucketize``, memory O(chunk + #distinct
    positives)). Pass it instead of the negative scores to the curve functions below: the curve of
    these positives or of any subset of them (e.g. one defect type's pixels against all negatives)
    is then read from it exactly, without another pass over the (many) negatives. ``neg_scores``
    may be one tensor or a list of parts; :meth:`extended` adds a part, counting only that part."""

    def __init__(self, pos_scores: torch.Tensor, neg_scores: torch.Tensor | Sequence[torch.Tensor],
                 chunk: int = 1 << 22) -> None:
        self.parts = [neg_scores] if isinstance(neg_scores, torch.Tensor) else list(neg_scores)
        self.thresholds = torch.unique(pos_scores.reshape(-1).to(torch.float64), sorted=True)  # ascending
        self.fp_asc = sum((self._count(part, chunk) for part in self.parts),
                          torch.zeros(self.thresholds.numel(), dtype=torch.float64))

    def _count(self, neg: torch.Tensor, chunk: int) -> torch.Tensor:
        """``#neg >= thr[j]`` for every threshold (float64)."""
        thr = self.thresholds
        if neg.dtype == torch.float32 and torch.equal(thr.to(torch.float32).to(torch.float64), thr):
            thr = thr.to(torch.float32)  # exact: float32 scores against float32-representable thresholds
        else:
            neg = neg.to(torch.float64)
        flat = neg.reshape(-1)
        hist = torch.zeros(thr.numel() + 1, dtype=torch.float64)
        for i in range(0, flat.numel(), chunk):
            idx = torch.bucketize(flat[i:i + chunk], thr, right=True)  # #thr <= s
            hist += torch.bincount(idx, minlength=thr.numel() + 1).to(torch.float64)
        return torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])[1:]  # [j] = #neg >= thr[j]

    def extended(self, more: torch.Tensor, chunk: int = 1 << 22) -> NegativeCounts:
        """The counts over our negatives plus ``more`` (same thresholds); only ``more`` is counted."""
        out = object.__new__(NegativeCounts)
        out.parts, out.thresholds = [*self.parts, more], self.thresholds
        out.fp_asc = self.fp_asc + self._count(more, chunk)
        return out

    def numel(self) -> int:
        return sum(p.numel() for p in self.parts)

    def count_at_least(self, threshold: float) -> float:
        return float(sum((p >= threshold).sum() for p in self.parts))

    def at(self, thresholds: torch.Tensor) -> torch.Tensor | None:
        """``#neg >= t`` for ascending float64 ``thresholds`` that are all among ours, else None."""
        if self.thresholds.numel() == 0:
            return None if thresholds.numel() else self.fp_asc
        idx = torch.searchsorted(self.thresholds, thresholds).clamp(max=self.thresholds.numel() - 1)
        return self.fp_asc[idx] if torch.equal(self.thresholds[idx], thresholds) else None


Negatives = torch.Tensor | NegativeCounts


def curve_at_positive_scores(pos_scores: torch.Tensor, neg_scores: Negatives, chunk: int = 1 << 22):
    """Operating points at each distinct positive score ``t`` (descending), rule ``score >= t``.

    Returns ``(thresholds, tp, fp)``: ``tp[j] = #pos >= t_j``, ``fp[j] = #neg >= t_j`` (float64).
    Negatives are counted in chunks with ``bucketize`` (:class:`NegativeCounts`; pass one to reuse
    its counts). These are the only thresholds where recall changes, so AP and the best F1 over
    *all* thresholds are exact from them.
    """
    thr, counts = torch.unique(pos_scores.to(torch.float64), sorted=True, return_counts=True)  # ascending
    fp_asc = neg_scores.at(thr) if isinstance(neg_scores, NegativeCounts) else None
    if fp_asc is None:
        parts = neg_scores.parts if isinstance(neg_scores, NegativeCounts) else neg_scores
        fp_asc = NegativeCounts(thr, parts, chunk).fp_asc
    tp_asc = torch.flip(torch.cumsum(torch.flip(counts.to(torch.float64), [0]), 0), [0])
    return torch.flip(thr, [0]), torch.flip(tp_asc, [0]), torch.flip(fp_asc, [0])


def average_precision_split(pos_scores: torch.Tensor, neg_scores: Negatives) -> float:
    """AP from positive and negative scores (sklearn definition); nan without positives."""
    n_pos = pos_scores.numel()
    if n_pos == 0:
        return float("nan")
    _, tp, fp = curve_at_positive_scores(pos_scores, neg_scores)
    recall_step = torch.diff(tp, prepend=tp.new_zeros(1)) / n_pos
    return float((recall_step * tp / (tp + fp)).sum())


def average_precision(scores, labels) -> float:
    """Average precision ``sum_n (R_n - R_(n-1)) P_n`` over distinct thresholds (= sklearn)."""
    s, y = _as_flat(scores, labels)
    return average_precision_split(s[y], s[~y])


def f1_at(pos_scores: torch.Tensor, neg_scores: Negatives, threshold: float) -> dict:
    """Precision, recall and F1 of the rule ``score >= threshold`` (F1 = 2TP / (2TP + FP + FN))."""
    tp = float((pos_scores >= threshold).sum())
    fp = (neg_scores.count_at_least(threshold) if isinstance(neg_scores, NegativeCounts)
          else float((neg_scores >= threshold).sum()))
    n_pos = pos_scores.numel()
    denom = 2 * tp + fp + (n_pos - tp)
    return {"precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / n_pos if n_pos else float("nan"),
            "f1": 2 * tp / denom if denom else float("nan")}


def best_f1(pos_scores: torch.Tensor, neg_scores: Negatives) -> dict:
    """The best F1 over all thresholds (highest threshold on ties); ``threshold`` nan without positives."""
    n_pos = pos_scores.numel()
    if n_pos == 0:
        return {"f1": float("nan"), "threshold": float("nan"), "precision": float("nan"), "recall": float("nan")}
    thr, tp, fp = curve_at_positive_scores(pos_scores, neg_scores)
    f1 = 2 * tp / (tp + fp + n_pos)
    j = int(torch.argmax(f1))  # first maximum = highest threshold
    return {"f1": float(f1[j]), "threshold": float(thr[j]), "precision": float(tp[j] / (tp[j] + fp[j])),
            "recall": float(tp[j] / n_pos)}


def auroc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); nan if a class is missing."""
    s, y = _as_flat(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    avg_rank = ends - (counts.to(torch.float64) - 1) / 2  # 1-based average rank of each distinct value
    rank_sum = float(avg_rank[inverse][y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# ----------------------------------------------------------------------------- prediction / evaluation


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Defect probabilities (B, h, w) for float images (B, C, h, w) in [0, 1].

    With ``size`` (the training size) different from h, the input is resized to it (antialiased
    bilinear, as in training) and the logits are resized back bilinearly.
    """
    h, w = images.shape[-2:]
    device = next(model.parameters()).device
    x = images.to(device)
    if size is not None and (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    logits = model(x)
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return torch.sigmoid(logits[:, 0].float()).cpu()


def _pixel_metrics(pos_s: torch.Tensor, neg_s: Negatives, threshold: float | None) -> dict:
    """Pixel AP, F1 @0.5, best F1 (optimistic) and, with ``threshold``, F1/precision/recall at it."""
    if not isinstance(neg_s, NegativeCounts):
        neg_s = NegativeCounts(pos_s, neg_s)  # one pass over the negatives for AP and best F1
    at_half, best = f1_at(pos_s, neg_s, 0.5), best_f1(pos_s, neg_s)
    n_pix = pos_s.numel() + neg_s.numel()
    out = {"pixel_ap": average_precision_split(pos_s, neg_s),
           "pixel_f1@0.5": at_half["f1"], "pixel_precision@0.5": at_half["precision"],
           "pixel_recall@0.5": at_half["recall"],
           "pixel_f1_best": best["f1"], "pixel_f1_best_threshold": best["threshold"],
           "pixel_f1_best_optimistic": True,  # threshold chosen on the evaluation data itself
           "pixels": n_pix, "positive_pixels": pos_s.numel(),
           "pixel_positive_rate": pos_s.numel() / n_pix if n_pix else float("nan")}
    if threshold is not None:
        at_t = f1_at(pos_s, neg_s, threshold)
        out.update({"threshold": float(threshold), "pixel_f1@threshold": at_t["f1"],
                    "pixel_precision@threshold": at_t["precision"], "pixel_recall@threshold": at_t["recall"]})
    return out


def ap_by_group(pos_by_group: dict[str, torch.Tensor], neg_scores: Negatives) -> dict:
    """Per group (defect type): AP of its defect pixels against ALL negative pixels, and the macro mean.

    ``{"by_group": {g: {"ap", "positive_pixels"}}, "macro": mean AP over groups with positives}``;
    one type's pixels cannot dominate the macro figure as they dominate pooled pixel AP. Pass
    :class:`NegativeCounts` of all positives to count the negatives once for every group.
    """
    by = {g: {"ap": average_precision_split(p, neg_scores), "positive_pixels": p.numel()}
          for g, p in sorted(pos_by_group.items()) if p.numel()}
    aps = [v["ap"] for v in by.values()]
    return {"by_group": by, "macro": float(np.mean(aps)) if aps else float("nan")}


def histogram_counts(scores: np.ndarray, bins: int) -> np.ndarray:
    """int64 counts of ``scores`` (probabilities in [0, 1]) in ``bins`` uniform bins of [0, 1]:
    bin index ``min(int(p * bins), bins - 1)`` (computed in float64; values below 0 go to bin 0)."""
    idx = np.clip((np.asarray(scores, dtype=np.float64).reshape(-1) * bins).astype(np.int64), 0, bins - 1)
    return np.bincount(idx, minlength=bins).astype(np.int64)


def histogram_average_precision(pos_hist: Sequence[int], neg_hist: Sequence[int]) -> float:
    """AP (the sklearn definition, ties grouped) when every pixel scores its bin: the bins are the
    thresholds, highest first. Pooled over images by summing their ``per_source`` histograms; with
    1024 bins it is close to the exact :func:`average_precision_split` (nan without positives)."""
    pos = np.asarray(pos_hist, dtype=np.float64)[::-1]
    neg = np.asarray(neg_hist, dtype=np.float64)[::-1]
    if pos.shape != neg.shape:
        raise ValueError(f"histograms differ in length ({pos.size}, {neg.size})")
    n_pos = pos.sum()
    if n_pos == 0:
        return float("nan")
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    hit = pos > 0
    return float((pos[hit] / n_pos * tp[hit] / (tp[hit] + fp[hit])).sum())


def _label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a bool mask: (int labels, 0 = background; count)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels, int(n)


def source_record(image: SourceImage, probs: np.ndarray, counted: np.ndarray, kind: str, bins: int) -> dict:
    """The ``per_source`` record of one evaluation image from its full probability map and its
    counted-pixel map (both HxW): see :func:`evaluate_segmenter`."""
    mask = image.mask
    pos_p, neg_p = probs[counted & mask], probs[counted & ~mask]
    scores = probs[counted]
    region_scores: list[float] = []
    if mask.any():
        labels, n = _label_components(mask)
        lab = labels[counted & mask]
        best = np.full(n + 1, -np.inf)
        np.maximum.at(best, lab, pos_p.astype(np.float64))
        region_scores = [float(v) for v in best[1:] if np.isfinite(v)]
    return {"id": image.source_id or image.id, "type": kind,
            "pos_hist": histogram_counts(pos_p, bins).tolist(), "neg_hist": histogram_counts(neg_p, bins).tolist(),
            "image_score": float(scores.max()) if scores.size else None, "region_scores": region_scores}


def evaluate_segmenter(model: nn.Module, eval_tiles: EvalTiles, threshold: float | None = None,
                       batch_size: int = 16, groups: Sequence[str] | None = None, per_source: bool = False,
                       bins: int = 1024) -> dict:
    """Pixel AP, pixel F1 (@0.5, best = optimistic, and @``threshold`` when given), tile AUROC, counts.

    Pixel metrics use every counted pixel of every image exactly once (the tiles' owned regions;
    with ``eval_tiles.regions``, e.g. :func:`~defectfill.downstream.tiles.fabric_regions`, only the
    pixels inside them: ``pixel_region`` says which); ``all_pixels`` repeats them over every pixel.
    Tile metrics use every tile with a counted pixel (score = max probability over its counted
    pixels, label = any defect pixel). With ``threshold``: F1/precision/recall at it and tile
    recall (defect tiles scoring >= it). With ``groups`` (one label per evaluation image, e.g. the
    defect type): per-group pixel AP against all negatives, their macro mean (``pixel_ap_macro``)
    and, with ``threshold``, tile recall per group. The model is put in eval mode and restored.

    With ``per_source``: ``out["per_source"]``, one record per evaluation image (``eval_tiles.images``
    order), so pooled and per-image figures can be recomputed over any subset of images later:
    ``{"id": source id, "type": groups[i] (else "defect"/"good" by the mask), "pos_hist"/"neg_hist":
    counts (``bins`` ints, uniform on [0, 1], index ``min(int(p * bins), bins - 1)``) of the predicted
    probabilities of the image's counted defect / non-defect pixels (the same pixels as the pooled
    metrics: summed over images, ``pos_hist`` totals ``positive_pixels``), "image_score": max
    probability over the counted pixels (None if none), "region_scores": per 8-connected component of
    the defect mask (label order = scan order of its first pixel), the max probability over its
    counted pixels (components without one skipped; [] for good images)}``.
    :func:`histogram_average_precision` gives the pooled AP from summed histograms.
    """
    if per_source and bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    pos, neg, pos_all, neg_all, tile_scores, tile_labels, tile_groups = [], [], [], [], [], [], []
    pos_by_group: dict[str, list[torch.Tensor]] = {}
    records: list[dict | None] = [None] * len(eval_tiles.images)
    maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # image index -> (probabilities, counted), while open
    left = np.bincount([t.image_index for t in eval_tiles.tiles], minlength=len(eval_tiles.images))
    try:
        for tiles, images, masks, owns, insides, regions in eval_tiles.batches(batch_size):
            probs = predict_probabilities(model, images, eval_tiles.size).numpy()
            counted = owns & regions
            if per_source:
                for t, p, c in zip(tiles, probs, counted):
                    k = t.image_index
                    if k not in maps:
                        shape = eval_tiles.images[k].mask.shape
                        maps[k] = (np.zeros(shape, np.float32), np.zeros(shape, bool))
                    yf, yt, xf, xt = t.own
                    own = (slice(yf - t.y0, yt - t.y0), slice(xf - t.x0, xt - t.x0))
                    maps[k][0][yf:yt, xf:xt] = p[own]
                    maps[k][1][yf:yt, xf:xt] = c[own]
                    left[k] -= 1
                    if left[k] == 0:  # every tile of the image seen: close its record, free its maps
                        im = eval_tiles.images[k]
                        kind = groups[k] if groups is not None else ("defect" if im.has_defect else "good")
                        records[k] = source_record(im, *maps.pop(k), kind, bins)
            pos.append(torch.from_numpy(probs[counted & masks]))
            neg.append(torch.from_numpy(probs[counted & ~masks]))
            if eval_tiles.regions is not None:  # the owned pixels outside the regions
                pos_all.append(torch.from_numpy(probs[owns & ~regions & masks]))
                neg_all.append(torch.from_numpy(probs[owns & ~regions & ~masks]))
            for t, p, r, m, own_pos in zip(tiles, probs, regions, masks, counted & masks):
                if groups is not None and own_pos.any():
                    pos_by_group.setdefault(groups[t.image_index], []).append(torch.from_numpy(p[own_pos]))
                if r.any():
                    tile_scores.append(float(p[r].max()))
                    tile_labels.append(bool(m.any()))
                    tile_groups.append(groups[t.image_index] if groups is not None else None)
    finally:
        model.train(was_training)
    pos_s, neg_s = torch.cat(pos), torch.cat(neg)
    neg_counts = NegativeCounts(pos_s, neg_s)  # the only pass over the negatives (groups' pixels are a subset)
    out = {**_pixel_metrics(pos_s, neg_counts, threshold),
           "pixel_region": "all" if eval_tiles.regions is None else "fabric",
           "tile_auroc": auroc(torch.tensor(tile_scores), torch.tensor(tile_labels)),
           "images": len(eval_tiles.images), "tiles": len(tile_scores), "positive_tiles": int(sum(tile_labels))}
    if eval_tiles.regions is not None:
        pos_off, neg_off = torch.cat(pos_all), torch.cat(neg_all)
        if pos_off.numel() == 0:  # the regions hold every defect pixel (fabric_regions): count the rest only
            out["all_pixels"] = _pixel_metrics(pos_s, neg_counts.extended(neg_off), threshold)
        else:
            out["all_pixels"] = _pixel_metrics(torch.cat([pos_s, pos_off]), torch.cat([neg_s, neg_off]), threshold)
    if groups is not None:
        per = ap_by_group({g: torch.cat(v) for g, v in pos_by_group.items()}, neg_counts)
        out["pixel_ap_by_type"], out["pixel_ap_macro"] = per["by_group"], per["macro"]
    if threshold is not None:
        positive = [s for s, y in zip(tile_scores, tile_labels) if y]
        out["tile_recall@threshold"] = (sum(s >= threshold for s in positive) / len(positive)
                                        if positive else float("nan"))
        if groups is not None:
            out["tile_recall@threshold_by_group"] = tile_recall_by_group(tile_scores, tile_labels, tile_groups,
                                                                         threshold)
    if per_source:
        out["per_source"] = records
    out["seconds"] = time.perf_counter() - start
    return out


def tile_recall_by_group(scores: Sequence[float], labels: Sequence[bool], groups: Sequence[str],
                         threshold: float) -> dict:
    """Per group (e.g. defect type): ``{recall, tiles}`` over its defect tiles (score >= threshold)."""
    hits: dict[str, list[bool]] = {}
    for s, y, g in zip(scores, labels, groups):
        if y:
            hits.setdefault(g, []).append(s >= threshold)
    return {g: {"recall": sum(h) / len(h), "tiles": len(h)} for g, h in sorted(hits.items())}


# ----------------------------------------------------------------------------- training


def train_tiles_for(cfg: SegmenterConfig, images: Sequence[SourceImage]) -> TileSet:
    """The TileSet that ``cfg`` describes (crop, size, seed, positive/synthetic fraction, flips, margin)."""
    return TileSet(images, crop=cfg.crop, size=cfg.size, seed=cfg.seed, positive_fraction=cfg.positive_fraction,
                   hflip=cfg.hflip, vflip=cfg.vflip, negative_margin=cfg.negative_margin,
                   synthetic_fraction=cfg.synthetic_fraction)


def eval_tiles_for(cfg: SegmenterConfig, images: Sequence[SourceImage]) -> EvalTiles:
    """Evaluation tiles of side ``cfg.crop``, fed to the network at ``cfg.size`` (the training scale);
    with ``cfg.eval_on_fabric`` pixel metrics count fabric and defect pixels only (``fabric_regions``)."""
    return EvalTiles(images, tile=cfg.crop, size=cfg.size,
                     regions=fabric_regions(images) if cfg.eval_on_fabric else None)


def _check_tiles(cfg: SegmenterConfig, tiles: TileSet) -> None:
    got = {"crop": tiles.crop, "size": tiles.size, "seed": tiles.seed,
           "positive_fraction": tiles.positive_fraction, "synthetic_fraction": tiles.synthetic_fraction,
           "in_channels": tiles.channels}
    bad = [f"{k}={v!r} (config {getattr(cfg, k)!r})" for k, v in got.items() if getattr(cfg, k) != v]
    if bad:
        raise ConfigError(f"train tiles do not match the segmenter config: {', '.join(bad)}")


def lr_factor(step: int, steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step``: 1 (constant) or half-cosine from 1 to 0."""
    if schedule == "constant" or steps <= 1:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / steps))


def synthetic_phase_end(steps: int, synthetic_phase: float) -> int:
    """First step whose positives are all real: ``round(synthetic_phase * steps)`` (``steps`` when the
    phase is 1, i.e. synthetic positives throughout)."""
    return steps if synthetic_phase >= 1 else int(round(synthetic_phase * steps))


def train_segmenter(cfg: SegmenterConfig, train_tiles: TileSet | Sequence[SourceImage],
                    val_tiles: EvalTiles | Sequence[SourceImage] | None = None) -> tuple[UNet, dict]:
    """Train a U-Net for exactly ``cfg.steps`` Adam steps of BCE (``pos_weight``) on ``train_tiles``.

    Step ``k`` uses ``train_tiles.batch(k, cfg.batch_size)``; the weights depend only on the config and
    data. ``val_tiles`` (held-out *training* images) never steer training: they are evaluated once at
    the end and their best-F1 threshold is logged as ``val_threshold`` for an honest F1 on evaluation
    data. Returns the model (eval mode, on ``cfg.device``) and a log dict.
    """
    cfg.validate()
    tiles = train_tiles if isinstance(train_tiles, TileSet) else train_tiles_for(cfg, train_tiles)
    _check_tiles(cfg, tiles)
    device = torch.device(cfg.device)
    model = build_model(cfg).to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    pos_weight = torch.tensor([cfg.pos_weight], device=device)
    history, window, start = [], [], time.perf_counter()
    positives = synthetic_positives = 0
    real_from = synthetic_phase_end(cfg.steps, cfg.synthetic_phase)
    if real_from < cfg.steps and tiles.positive_fraction > 0 and not tiles.has_real_positives:
        raise DataError(f"synthetic_phase={cfg.synthetic_phase} ends in real fine-tuning, but no real training "
                        "image has a defect")
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.schedule)
        batch = tiles.batch(step, cfg.batch_size, real_positives_only=step >= real_from)
        positives += sum(batch["positive"])
        synthetic_positives += sum(p and s for p, s in zip(batch["positive"], batch["synthetic"]))
        logits = model(batch["images"].to(device))
        loss = F.binary_cross_entropy_with_logits(logits, batch["masks"].to(device), pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "loss": float(np.mean(window)), "lr": opt.param_groups[0]["lr"],
                            "seconds": round(time.perf_counter() - start, 3)})
            window = []
    seconds = time.perf_counter() - start
    model.eval()
    log = {"steps": cfg.steps, "seconds": seconds, "seconds_per_step": seconds / max(cfg.steps, 1),
           "history": history, "config": asdict(cfg), "train_images": len(tiles),
           "positive_crops": positives, "synthetic_positive_crops": synthetic_positives}
    if val_tiles is not None:
        vt = val_tiles if isinstance(val_tiles, EvalTiles) else eval_tiles_for(cfg, val_tiles)
        log["val"] = evaluate_segmenter(model, vt, batch_size=cfg.eval_batch_size)
        log["val_threshold"] = log["val"]["pixel_f1_best_threshold"]
    return model, log


# ----------------------------------------------------------------------------- persistence


def save_segmenter(model: UNet, cfg: SegmenterConfig, directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` (state dict incl. BatchNorm buffers) and ``segmenter.json``; return the folder."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / f"{WEIGHTS_NAME}.tmp-{os.getpid()}"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, directory / WEIGHTS_NAME)
    atomic_write_text(directory / CONFIG_NAME, json.dumps({"format": FORMAT, "config": asdict(cfg)}, indent=2))
    return directory


def load_segmenter(directory: str | os.PathLike, device: str | None = None) -> tuple[UNet, SegmenterConfig]:
    """Load what :func:`save_segmenter` wrote; the model is in eval mode on ``device`` (default: the config's)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        record = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{directory / CONFIG_NAME}: cannot read segmenter config ({err})") from err
    if record.get("format") != FORMAT:
        raise ConfigError(f"{directory / CONFIG_NAME}: format {record.get('format')!r}, expected {FORMAT!r}")
    cfg = SegmenterConfig.from_dict(record["config"])
    model = build_model(cfg, load_weights=False)
    model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)))
    return model.to(device or cfg.device).eval(), cfg
