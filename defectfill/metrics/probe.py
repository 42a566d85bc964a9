"""Realism probe: can a classifier tell a generator's defects from real ones?

A classifier two-sample test (C2ST; Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample Tests",
ICLR 2017): an L2-regularised logistic regression (scikit-learn) on frozen features separates real
from generated defect crops; its cross-validated ROC AUC is the statistic. AUC 0.5: the two sets
are indistinguishable to a linear probe on these features; 1.0: every generated crop is
recognisable. Unlike KID it says which samples give a generator away (the out-of-fold scores).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from defectfill.data.datasets import load_reference_dataset
from defectfill.metrics import load_dataset_crops, load_features
from defectfill.metrics.distribution import crop_around_masks, frechet_kid_from_features, image_features

MIN_PER_CLASS = 4


def two_sample_auc(real: np.ndarray, synthetic: np.ndarray, folds: int = 5, seed: int = 0,
                   c: float = 1.0) -> dict:
    """Cross-validated ROC AUC of a logistic regression separating ``synthetic`` (label 1) from ``real``
    (label 0) feature rows (C2ST, Lopez-Paz & Oquab 2017).

    Features are standardised inside each training fold (``StandardScaler``), classes weighted
    inversely to their size (``class_weight="balanced"``), folds stratified and shuffled with
    ``seed`` (``StratifiedKFold``), ``folds`` reduced to the smaller class's size when needed. The AUC
    is computed once on the pooled out-of-fold decision values (``roc_auc_score``). Returns
    ``{auc, n_real, n_synthetic, folds, scores}`` (``scores``: the out-of-fold synthetic-ness of each
    synthetic row, in input order); ``auc`` is None with fewer than ``MIN_PER_CLASS`` rows per class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    real, synthetic = np.asarray(real, dtype=np.float64), np.asarray(synthetic, dtype=np.float64)
    out = {"auc": None, "n_real": len(real), "n_synthetic": len(synthetic), "folds": None, "scores": None}
    if min(len(real), len(synthetic)) < MIN_PER_CLASS:
        return out
    if real.ndim != 2 or synthetic.ndim != 2 or real.shape[1] != synthetic.shape[1]:
        raise ValueError(f"two_sample_auc: feature rows differ: {real.shape} vs {synthetic.shape}")
    x = np.concatenate([real, synthetic])
    y = np.concatenate([np.zeros(len(real), int), np.ones(len(synthetic), int)])
    k = int(min(folds, len(real), len(synthetic)))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, x, y, cv=cv, method="decision_function")
    out.update(auc=float(roc_auc_score(y, scores)), folds=k, scores=[float(s) for s in scores[len(real):]])
    return out


def _sidecar_class(root: Path, name: str) -> str | None:
    try:
        return json.loads((root / "sidecars" / f"{name}.json").read_text()).get("defect_class")
    except (OSError, ValueError):
        return None


def realism_probe(generated_dirs: Sequence[str | Path], reference_dir: str | Path, crop: int = 64,
                  extractor=None, seed: int = 0, folds: int = 5, worst: int = 8,
                  defect_types: Sequence[str] | None = None, kid: bool = True, context: bool = True) -> dict:
    """The C2ST (:func:`two_sample_auc`) of real defect crops of ``reference_dir`` against the pooled
    defect crops of ``generated_dirs`` (``defectfill.generation.samples`` layout; accepted samples), overall and per
    defect type (a sample's sidecar ``defect_class``; a real image's manifest ``defect_type``).

    Crops: ``crop`` px, centred on the defect (:func:`~defectfill.metrics.distribution.crop_around_masks`);
    features: ``extractor`` (default: the pretrained EfficientNet-Lite0's pooled features,
    ``load_features("efficientnet-lite0")``). Returns ``{auc, n_real, n_synthetic, folds, extractor,
    crop, kid_mean, kid_std, per_type: {type: {auc, n_real, n_synthetic}}, most_synthetic: [{dir, name,
    score}]}`` (``most_synthetic``: the ``worst`` generated crops the probe found most synthetic out of
    fold; ``kid_*``: KID of the same features (:func:`~defectfill.metrics.distribution.frechet_kid_from_features`),
    when ``kid``). Crops are resized to the extractor's input size, as for KID.

    ``context_auc`` (when ``context`` and the datasets keep their ``clean/`` images): the same test on the
    clean images the samples were painted on, cropped at the same windows: what the probe sees of the
    placement and the fabric alone. A painted defect that looks real lowers the AUC below it; one the
    probe cannot see leaves it there. ``realism_gain = context_auc − auc``.
    """
    extractor = extractor if extractor is not None else load_features("efficientnet-lite0", seed=seed)
    ds = load_reference_dataset(reference_dir, defect_types=defect_types)
    real_crops = [crop_around_masks(s.image, s.mask, crop)[0] for s in ds.samples]
    real_types = [s.defect_type for s in ds.samples]
    gen_crops, gen_types, gen_where, context_crops = [], [], [], []
    for d in generated_dirs:
        crops = load_dataset_crops(d, crop)
        if context and (Path(d) / "clean").is_dir():
            context_crops += list(load_dataset_crops(d, crop, image_folder="clean").images)
        gen_crops += list(crops.images)
        gen_types += [_sidecar_class(Path(d), n) for n in crops.names]
        gen_where += [(str(d), n) for n in crops.names]

    def feats(images):
        return image_features(images, extractor).numpy() if images else np.zeros((0, extractor.num_features))

    fr, fg = feats(real_crops), feats(gen_crops)
    res = two_sample_auc(fr, fg, folds=folds, seed=seed)
    context_auc = two_sample_auc(fr, feats(context_crops), folds=folds, seed=seed)["auc"] if context_crops else None
    order = np.argsort(-np.asarray(res["scores"])) if res["scores"] else []
    most = [{"dir": gen_where[i][0], "name": gen_where[i][1], "score": res["scores"][i]} for i in order[:worst]]
    per_type = {}
    for t in sorted({*real_types} & {x for x in gen_types if x}):
        r = fr[[i for i, x in enumerate(real_types) if x == t]]
        g = fg[[i for i, x in enumerate(gen_types) if x == t]]
        sub = two_sample_auc(r, g, folds=folds, seed=seed)
        per_type[t] = {k: sub[k] for k in ("auc", "n_real", "n_synthetic")}
    kid_mean = kid_std = None
    if kid and min(len(real_crops), len(gen_crops)) >= 2:
        dist = frechet_kid_from_features(fr, fg, seed=seed)
        kid_mean, kid_std = dist["kid_mean"], dist["kid_std"]
    return {"auc": res["auc"], "n_real": res["n_real"], "n_synthetic": res["n_synthetic"], "folds": res["folds"],
            "extractor": getattr(extractor, "name", type(extractor).__name__), "crop": int(crop),
            "kid_mean": kid_mean, "kid_std": kid_std, "context_auc": context_auc,
            "realism_gain": context_auc - res["auc"] if context_auc is not None and res["auc"] is not None else None,
            "per_type": per_type, "most_synthetic": most}
