"""DFC, DGT's open-set defect feature classifier ("Open-Set Fabric Defect Detection With Defect
Generation and Transfer", IEEE TIM 2025), and the open-set machinery it rests on: extreme value
theory (Weibull models of the distance to a class's mean feature) and OpenMax recalibration
(Bendale & Boult, "Towards Open Set Deep Networks", CVPR 2016).

Pipeline (:func:`train_dfc`): a classifier (:class:`DFCNet`) is trained with cross-entropy on
defect crops of the K known classes; on the training crops it classifies correctly, the mean
feature of each class is taken (:func:`class_means`, the paper's mean activation vectors μ_k) and
a Weibull distribution is fitted to the ``tail_size`` largest distances ‖f − μ_k‖ of that class
(:func:`fit_weibull_tail`). At test time the top ``alpha`` activations are lowered by the Weibull
CDF of the sample's distance to the class mean and the removed mass becomes an explicit
"unknown" activation (:func:`openmax_scores`, OpenMax Alg. 2); the unknown probability is
thresholded at a quantile of the *training* samples' unknown probabilities
(:func:`choose_threshold`), so about ``1 − quantile`` of known training crops are rejected.

Everything here is library code: the benchmark can use it without ``gan_baselines``. Pure
functions take and return numpy arrays (torch tensors are accepted as input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectfill.backbones import NUM_FEATURES, Backbone
from defectfill.errors import ConfigError

UNKNOWN = "unknown"
DEGENERATE_SHAPE = 10.0  # Weibull shape used when a tail has no spread (a steep step at its value)


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------------- extreme value theory


def fit_weibull_tail(distances, tail_size: int) -> tuple[float, float, float]:
    """(shape κ, loc, scale λ) of a Weibull fitted to the ``tail_size`` LARGEST ``distances``.

    OpenMax (Bendale & Boult 2016, Alg. 1; libMR ``FitHigh``) models the extreme tail of the
    distances of a class's correctly classified samples to its mean activation vector with a
    Weibull, W(d) = 1 − exp(−((d − loc)/λ)^κ) for d > loc. Fit: maximum likelihood with
    ``scipy.stats.weibull_min.fit(tail, floc=0)``. The location is FIXED at 0 because distances are
    non-negative and 0 is their natural origin (libMR instead shifts the data by a constant; a
    min-based location would make the CDF of every distance below the tail exactly 0 and is
    unstable for small tails). With ``tail_size >= len(distances)`` all distances are used, and the
    fit recovers the parameters of Weibull-distributed data. A tail without spread (one distance,
    or all equal) gives (``DEGENERATE_SHAPE``, 0, its value): a steep step there.
    """
    from scipy.stats import weibull_min

    d = _np(distances).reshape(-1)
    if d.size == 0:
        raise ValueError("fit_weibull_tail needs at least one distance")
    if tail_size < 1:
        raise ValueError(f"tail_size must be >= 1, got {tail_size}")
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("distances must be finite and non-negative")
    tail = np.sort(d)[-min(int(tail_size), d.size):]
    top = float(tail.max())
    if tail.size < 2 or float(tail.max() - tail.min()) <= 1e-12 * max(top, 1.0) or top <= 0:
        return DEGENERATE_SHAPE, 0.0, max(top, 1e-12)
    tail = np.maximum(tail, 1e-12 * top)  # a zero distance has zero likelihood under any Weibull with loc 0
    shape, loc, scale = weibull_min.fit(tail, floc=0.0)
    return float(shape), float(loc), float(scale)


def weibull_cdf(distances, params: tuple[float, float, float]) -> np.ndarray:
    """W(d) = 1 − exp(−((d − loc)/scale)^shape) for d > loc, else 0 (libMR's ``W_score``)."""
    shape, loc, scale = params
    z = np.clip((_np(distances) - loc) / scale, 0.0, None)
    return -np.expm1(-(z**shape))


# ----------------------------------------------------------------------------- OpenMax


@dataclass
class OpenMaxModel:
    """Per known class k: mean feature ``means[k]`` (μ_k) and Weibull ``weibull[k]`` = (shape, loc,
    scale) of its tail of distances ‖f − μ_k‖ (Euclidean)."""

    means: np.ndarray  # (K, D)
    weibull: np.ndarray  # (K, 3)
    tail_size: int

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    def distances(self, features) -> np.ndarray:
        """(N, K) Euclidean distances of each feature to each class mean."""
        f = _np(features)
        return np.sqrt(np.maximum(((f[:, None, :] - self.means[None]) ** 2).sum(-1), 0.0))

    def cdf(self, features) -> np.ndarray:
        """(N, K) Weibull CDF of each class's distance: the probability that the sample is an outlier of k."""
        d = self.distances(features)
        return np.stack([weibull_cdf(d[:, k], tuple(self.weibull[k])) for k in range(self.num_classes)], axis=1)


def class_means(features, labels, predicted, num_classes: int | None = None) -> np.ndarray:
    """(K, D) mean feature of the CORRECTLY classified samples of each class (label == predicted ==
    k): OpenMax's mean activation vectors. A class none of whose samples is classified correctly
    falls back to the mean of all its samples; a class without samples is a ValueError."""
    f, y, p = _np(features), _np(labels).astype(int).reshape(-1), _np(predicted).astype(int).reshape(-1)
    k = int(num_classes if num_classes is not None else y.max() + 1)
    means = np.zeros((k, f.shape[1]))
    for c in range(k):
        own = y == c
        if not own.any():
            raise ValueError(f"class {c} has no samples")
        correct = own & (p == c)
        means[c] = f[correct if correct.any() else own].mean(0)
    return means


def fit_openmax(features, labels, logits, tail_size: int = 20) -> OpenMaxModel:
    """Fit OpenMax (Bendale & Boult 2016, Alg. 1) on training data: predictions = argmax of
    ``logits`` (N, K); μ_k = :func:`class_means`; per class the Weibull of the ``tail_size``
    largest distances of its correctly classified samples to μ_k (all its samples when none is
    correct). ``features`` (N, D) are the vectors whose distances are modelled (the paper uses the
    activation vector itself: pass the logits as features for that; DFC passes its embedding)."""
    f, z = _np(features), _np(logits)
    y = _np(labels).astype(int).reshape(-1)
    if not len(f) == len(z) == len(y):
        raise ValueError(f"features ({len(f)}), logits ({len(z)}) and labels ({len(y)}) differ in length")
    k = z.shape[1]
    pred = z.argmax(1)
    means = class_means(f, y, pred, k)
    params = []
    for c in range(k):
        own = y == c
        use = own & (pred == c) if (own & (pred == c)).any() else own
        params.append(fit_weibull_tail(np.linalg.norm(f[use] - means[c], axis=1), tail_size))
    return OpenMaxModel(means, np.asarray(params, dtype=np.float64), int(tail_size))


def openmax_scores(model: OpenMaxModel, features, logits, alpha: int = 2) -> np.ndarray:
    """(N, K + 1) OpenMax probabilities; the last column is the unknown class (they sum to 1).

    Bendale & Boult 2016, Alg. 2, as their reference code computes it: rank the activations v
    (``logits``), and for the i-th largest (i = 1..α) set
        ω_s(i) = 1 − ((α − i + 1) / α) · W_s(i)(‖f − μ_s(i)‖),   ω = 1 for the other classes,
    where W is the class's Weibull CDF (:meth:`OpenMaxModel.cdf`; the paper prints exp(−(·)^κ),
    i.e. 1 − W, which its code and libMR's W_score do not use). Revised activations v̂ = v ∘ ω, the
    unknown activation v̂_0 = Σ_k v_k (1 − ω_k), and P = softmax(v̂_1..v̂_K, v̂_0). ``alpha`` is
    clipped to [1, K]. A sample far from the means of its top classes loses their activation to
    the unknown class.
    """
    z = _np(logits)
    n, k = z.shape
    a = int(min(max(alpha, 1), k))
    cdf = model.cdf(features)
    order = np.argsort(-z, axis=1, kind="stable")[:, :a]
    omega = np.ones_like(z)
    rows = np.arange(n)
    for i in range(a):  # i = 0 is the top class (rank i + 1)
        c = order[:, i]
        omega[rows, c] = 1.0 - (a - i) / a * cdf[rows, c]
    revised = np.concatenate([z * omega, (z * (1.0 - omega)).sum(1, keepdims=True)], axis=1)
    revised -= revised.max(1, keepdims=True)
    e = np.exp(revised)
    return e / e.sum(1, keepdims=True)


# ----------------------------------------------------------------------------- decision and metrics


def choose_threshold(unknown_scores_train, quantile: float = 0.95) -> float:
    """The ``quantile`` of the KNOWN TRAINING samples' unknown scores (numpy's linear
    interpolation): with :func:`flag_unknown` (score > threshold) about 1 − ``quantile`` of the
    training samples are rejected as unknown. Evaluation data never choose it."""
    s = _np(unknown_scores_train).reshape(-1)
    if s.size == 0:
        raise ValueError("choose_threshold needs at least one training score")
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    return float(np.quantile(s, quantile))


def flag_unknown(scores, threshold: float) -> np.ndarray:
    """Boolean (N,): unknown score strictly above ``threshold``."""
    return _np(scores).reshape(-1) > threshold


def open_set_auroc(unknown_score_known, unknown_score_novel) -> float:
    """AUROC of separating novel (positive) from known (negative) samples by their unknown score
    (torchmetrics ``binary_auroc``; ties count 1/2); nan when either set is empty."""
    from torchmetrics.functional.classification import binary_auroc

    known, novel = _np(unknown_score_known).reshape(-1), _np(unknown_score_novel).reshape(-1)
    if known.size == 0 or novel.size == 0:
        return float("nan")
    scores = torch.from_numpy(np.concatenate([known, novel]))
    target = torch.cat([torch.zeros(known.size, dtype=torch.long), torch.ones(novel.size, dtype=torch.long)])
    return float(binary_auroc(scores, target))


def open_set_report(unknown_score_known, unknown_score_novel, threshold: float,
                    known_predicted: Sequence | None = None, known_labels: Sequence | None = None) -> dict:
    """Open-set figures of one evaluation:

    * ``novel_flagged_fraction``: novel samples with unknown score > ``threshold`` (recall of unknowns);
    * ``known_false_unknown_rate``: known samples flagged unknown;
    * ``auroc``: :func:`open_set_auroc` (threshold-free);
    * ``known_accuracy``: closed-set accuracy of ``known_predicted`` vs ``known_labels`` (nan without them);
    * ``known_accuracy_open``: known samples both classified correctly and NOT flagged unknown.
    """
    known, novel = _np(unknown_score_known).reshape(-1), _np(unknown_score_novel).reshape(-1)
    flagged_known = flag_unknown(known, threshold)
    out = {"novel_flagged_fraction": float(flag_unknown(novel, threshold).mean()) if novel.size else float("nan"),
           "known_false_unknown_rate": float(flagged_known.mean()) if known.size else float("nan"),
           "auroc": open_set_auroc(known, novel), "threshold": float(threshold),
           "known": int(known.size), "novel": int(novel.size)}
    if known_predicted is not None and known_labels is not None and len(known_labels):
        correct = np.asarray([p == t for p, t in zip(known_predicted, known_labels)], dtype=bool)
        out["known_accuracy"] = float(correct.mean())
        out["known_accuracy_open"] = float((correct & ~flagged_known).mean())
    else:
        out["known_accuracy"] = out["known_accuracy_open"] = float("nan")
    return out


# ----------------------------------------------------------------------------- crops


def defect_crops(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], crop: int = 64,
                 size: int = 64) -> np.ndarray:
    """(N, size, size) uint8 grey crops, one per image: a ``crop`` x ``crop`` window centred on the
    bounding box of the mask (shifted to stay inside the image; edge-replicated where the image is
    smaller than ``crop``), converted to grey (channel mean) and resized to ``size`` (area
    interpolation when shrinking, bilinear when enlarging). An empty mask is a ValueError."""
    import cv2

    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    out = np.zeros((len(images), size, size), np.uint8)
    for i, (img, mask) in enumerate(zip(images, masks)):
        img = np.asarray(img)
        grey = img if img.ndim == 2 else np.rint(img.astype(np.float32).mean(-1)).astype(np.uint8)
        ys, xs = np.nonzero(np.asarray(mask))
        if ys.size == 0:
            raise ValueError(f"mask {i} is empty: no defect to crop")
        pad = max(0, crop - grey.shape[0], crop - grey.shape[1])
        if pad:
            grey = np.pad(grey, ((0, max(0, crop - grey.shape[0])), (0, max(0, crop - grey.shape[1]))), mode="edge")
        cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
        y0 = int(np.clip(round(cy - crop / 2), 0, grey.shape[0] - crop))
        x0 = int(np.clip(round(cx - crop / 2), 0, grey.shape[1] - crop))
        window = grey[y0:y0 + crop, x0:x0 + crop]
        if crop != size:
            window = cv2.resize(window, (size, size), interpolation=cv2.INTER_AREA if size < crop else cv2.INTER_LINEAR)
        out[i] = window
    return out


def crops_to_tensor(crops, size: int | None = None) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) crops -> float (N, 1 or C, size, size) in [0, 1] (antialiased
    bilinear resize when ``size`` differs)."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).float() / 255.0
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


# ----------------------------------------------------------------------------- the DFC network


def _small_cnn(in_channels: int, width: int = 16) -> nn.Sequential:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(min(8, cout), cout), nn.ReLU()]

    return nn.Sequential(*block(in_channels, width), nn.MaxPool2d(2), *block(width, 2 * width), nn.MaxPool2d(2),
                         *block(2 * width, 4 * width), nn.MaxPool2d(2), *block(4 * width, 4 * width),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


class DFCNet(nn.Module):
    """DGT's DFC network: an encoder with pooled features, an embedding layer and a linear classifier.

    ``pretrained=True``: the ImageNet EfficientNet-Lite0 of :mod:`defectfill.backbones`, FROZEN
    (eval mode, no parameter gradients; gradients still flow to the input), its 1280-d pooled head
    features -> LayerNorm -> Linear(1280, hidden) -> ReLU. ``pretrained=False``: a small CNN from
    scratch (4 conv-GroupNorm-ReLU blocks, 16..64 channels, global average pool) -> Linear(64,
    hidden) -> ReLU. Inputs: float (B, in_channels, H, W) in [0, 1]. ``features(x)`` is the
    ``hidden``-d embedding (what OpenMax measures distances in), ``forward(x)`` the class logits.
    """

    def __init__(self, num_classes: int, pretrained: bool = True, hidden: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        if num_classes < 1 or hidden < 1 or in_channels not in (1, 3):
            raise ValueError(f"DFCNet needs num_classes, hidden >= 1 and in_channels 1 or 3, got "
                             f"{num_classes}, {hidden}, {in_channels}")
        self.pretrained, self.in_channels, self.num_classes = pretrained, in_channels, num_classes
        if pretrained:
            self.backbone = Backbone(pretrained=True, levels=(4,), frozen=True)
            self.backbone.net.classifier = nn.Identity()  # not used; keeps 1.3 M weights out of the state
            self.embed = nn.Sequential(nn.LayerNorm(NUM_FEATURES), nn.Linear(NUM_FEATURES, hidden), nn.ReLU())
        else:
            self.backbone = _small_cnn(in_channels)
            self.embed = nn.Sequential(nn.Linear(64, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    @property
    def frozen_encoder(self) -> bool:
        return self.pretrained

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, E) pooled encoder features."""
        if self.pretrained:
            return self.backbone.pooled(x)
        return self.backbone((x - 0.5) / 0.5)

    def head(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) from :meth:`encode`'s output."""
        f = self.embed(encoded)
        return f, self.classifier(f)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x))[1]


def build_dfc_net(num_classes: int, pretrained: bool = True, hidden: int = 64, in_channels: int = 1,
                  seed: int = 0) -> DFCNet:
    """A :class:`DFCNet` whose random layers are drawn from ``seed`` (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DFCNet(num_classes, pretrained, hidden, in_channels)


# ----------------------------------------------------------------------------- training and prediction


OPENMAX_SPACES = ("embedding", "encoder", "logits")


@dataclass
class DFCConfig:
    """DFC training and open-set settings (defaults: a CPU-scale run, well under a minute)."""

    crop: int = 64  # source window side for `defect_crops`
    size: int = 64  # side the crops are resized to for the network
    steps: int = 200  # Adam steps of cross-entropy
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    hidden: int = 64  # embedding size (OpenMax's feature space)
    tail_size: int = 20  # largest distances per class in the Weibull fit
    alpha: int = 2  # top classes OpenMax revises (clipped to K)
    threshold_quantile: float = 0.95  # of the training crops' unknown probability
    # the vectors whose distances to the class means OpenMax models: "embedding" (the trained hidden
    # layer), "encoder" (the encoder's pooled features; frozen ImageNet Lite0 when pretrained) or
    # "logits" (the paper's activation vector)
    openmax_space: str = "embedding"
    seed: int = 0
    pretrained: bool = True  # frozen ImageNet EfficientNet-Lite0 encoder; False: small CNN from scratch

    def validate(self) -> DFCConfig:
        checks = [("crop", self.crop >= 1), ("size", self.size >= 8), ("steps", self.steps >= 0),
                  ("batch_size", self.batch_size >= 1), ("lr", self.lr > 0), ("weight_decay", self.weight_decay >= 0),
                  ("hidden", self.hidden >= 1), ("tail_size", self.tail_size >= 1), ("alpha", self.alpha >= 1),
                  ("threshold_quantile", 0 <= self.threshold_quantile <= 1),
                  ("openmax_space", self.openmax_space in OPENMAX_SPACES)]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"DFC config: invalid {name}={getattr(self, name)!r}")
        return self


@torch.no_grad()
def _run(net: DFCNet, x: torch.Tensor, space: str = "embedding", chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(the ``space`` vectors OpenMax measures, logits) of ``x`` in eval mode, in chunks."""
    was = net.training
    net.eval()
    feats, logits = [], []
    try:
        device = next(net.parameters()).device
        for i in range(0, len(x), chunk):
            e = net.encode(x[i:i + chunk].to(device))
            f, z = net.head(e)
            feats.append({"embedding": f, "encoder": e, "logits": z}[space].float().cpu())
            logits.append(z.float().cpu())
    finally:
        net.train(was)
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


@dataclass
class DFC:
    """A trained DFC: network, class names, OpenMax model and unknown threshold (chosen on the
    training crops). ``predict`` / ``evaluate`` take uint8 crops like :func:`defect_crops` makes."""

    net: DFCNet
    classes: list[str]
    openmax: OpenMaxModel
    threshold: float
    cfg: DFCConfig
    log: dict = field(default_factory=dict)

    def scores(self, crops) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features, logits, OpenMax probabilities (N, K + 1)) of uint8 crops."""
        f, z = _run(self.net, crops_to_tensor(crops, self.cfg.size), self.cfg.openmax_space)
        return f, z, openmax_scores(self.openmax, f, z, self.cfg.alpha)

    def predict(self, crops) -> dict:
        """``probs`` (N, K + 1; last column unknown), ``unknown`` (N,) its probability,
        ``is_unknown`` (N,) unknown > threshold, ``predicted``: the class name of the largest known
        probability, or ``"unknown"`` where flagged; ``closed_set`` the class name ignoring the flag."""
        _, _, probs = self.scores(crops)
        unknown = probs[:, -1]
        is_unknown = flag_unknown(unknown, self.threshold)
        closed = [self.classes[k] for k in probs[:, :-1].argmax(1)]
        return {"probs": probs, "unknown": unknown, "is_unknown": is_unknown,
                "predicted": [UNKNOWN if u else c for u, c in zip(is_unknown, closed)], "closed_set": closed}

    def evaluate(self, known_crops, known_labels: Sequence[str], novel_crops) -> dict:
        """:func:`open_set_report` on held-out known crops (with their labels) and novel-class crops."""
        known, novel = self.predict(known_crops), self.predict(novel_crops)
        return open_set_report(known["unknown"], novel["unknown"], self.threshold, known["closed_set"],
                               list(known_labels))


def train_dfc(crops: np.ndarray, labels: Sequence[str], cfg: DFCConfig | None = None) -> DFC:
    """Train DFC on uint8 crops (N, H, W) (or (N, H, W, C)) with class names ``labels``; fit OpenMax and
    the unknown threshold on the same training crops.

    Exactly ``cfg.steps`` Adam steps of cross-entropy; step k's batch is ``cfg.batch_size`` crops
    drawn without replacement from ``np.random.default_rng([seed, k])``, so the result depends only
    on the data and the config. With the frozen pretrained encoder its pooled features are computed
    once and only the embedding + classifier train (fast on CPU); the small CNN trains end to end.
    """
    import time

    cfg = (cfg or DFCConfig()).validate()
    if len(crops) != len(labels):
        raise ValueError(f"{len(crops)} crops but {len(labels)} labels")
    if len(crops) < 2:
        raise ValueError("train_dfc needs at least 2 crops")
    start = time.perf_counter()
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(c) for c in labels])
    x = crops_to_tensor(crops, cfg.size)
    net = build_dfc_net(len(classes), cfg.pretrained, cfg.hidden, x.shape[1], cfg.seed)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if net.frozen_encoder:
        with torch.no_grad():
            net.eval()
            inputs = torch.cat([net.encode(x[i:i + 256]) for i in range(0, len(x), 256)])
    else:
        inputs = x
    net.train()
    losses = []
    for step in range(cfg.steps):
        idx = torch.from_numpy(np.random.default_rng([cfg.seed, step]).choice(len(x), min(cfg.batch_size, len(x)),
                                                                             replace=False))
        logits = net.head(inputs[idx])[1] if net.frozen_encoder else net(inputs[idx])
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    feats, logits = _run(net, x, cfg.openmax_space)
    openmax = fit_openmax(feats, y.numpy(), logits, cfg.tail_size)
    unknown = openmax_scores(openmax, feats, logits, cfg.alpha)[:, -1]
    threshold = choose_threshold(unknown, cfg.threshold_quantile)
    log = {"config": asdict(cfg), "classes": classes, "train_crops": len(x),
           "train_accuracy": float((logits.argmax(1) == y.numpy()).mean()),
           "train_false_unknown_rate": float(flag_unknown(unknown, threshold).mean()),
           "final_loss": float(np.mean(losses[-10:])) if losses else float("nan"),
           "seconds": time.perf_counter() - start}
    return DFC(net, classes, openmax, threshold, cfg, log)
