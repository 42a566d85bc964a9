"""RT-DETR training and evaluation (ultralytics), strictly offline, for the synthetic-defect benchmark.

ultralytics is a third-party trainer: it saves its checkpoints (``weights/best.pt``, ``last.pt``) in
its own pickle-based ``.pt`` format. We accept that for the detector weights only; everything this
package writes about the detector (metrics, manifests, reports) is JSON or Markdown.

Nothing is ever downloaded: ``model`` is, by default, ``configs/rtdetr/rtdetr_lite0.yaml`` (RT-DETR
on the ImageNet-pretrained EfficientNet-Lite0 of :mod:`defectfill.backbones`, frozen, weights from a
registry package; see :mod:`defectfill.detect.backbone`), our small ResNet YAML
(``configs/rtdetr/rtdetr_small.yaml``, from scratch), an ultralytics architecture YAML such as
``rtdetr-l.yaml`` (from scratch), or a LOCAL ``.pt`` file (e.g. ``rtdetr-l.pt`` that the user copied
in). ultralytics is imported only after :func:`defectfill.detect.offline.prepare_ultralytics_offline`.
A training run writes ``<output_dir>/<name>/backbone.json`` (which backbone, pretrained or not,
frozen or not, checked on the model the trainer really trained) when the model has that backbone.

Command line: ``defectfill detect build | train | eval`` (:mod:`defectfill.cli.detect`)::

    defectfill detect build --data-dir ../shared/data/aitex --output-dir runs/det/dataset [--synthetic DIR]
    defectfill detect train --data-yaml runs/det/dataset/data.yaml [--config YAML] [--set epochs=50]
    defectfill detect eval  --weights runs/det/rtdetr/weights/best.pt --data-yaml DIR/data.yaml
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from defectfill.errors import ConfigError, DataError, ModelError

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_MODEL = "configs/rtdetr/rtdetr_small.yaml"
LITE0_MODEL = "configs/rtdetr/rtdetr_lite0.yaml"
DEFAULT_MODEL = LITE0_MODEL
METRIC_KEYS = ("map50", "map50_95", "precision", "recall", "f1")


# ultralytics' BaseTrainer.build_optimizer accepts these names (case-insensitive); it keeps them in a local set
OPTIMIZERS = ("auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop")


@dataclass
class DetectorConfig:
    """Dataset, training and evaluation knobs of one detector run (YAML keys = field names)."""

    # model: our YAML (pretrained-backbone default, or rtdetr_small.yaml) | an ultralytics YAML
    # (rtdetr-l.yaml) | a LOCAL .pt (never downloaded)
    model: str = DEFAULT_MODEL
    # the EfficientNet-Lite0 layer of a model YAML (None: as the YAML says; an error for other models)
    backbone_pretrained: bool | None = None  # False: a RANDOM backbone (explicit option only)
    backbone_frozen: bool | None = None
    # dataset (used by `detect build` and the benchmark; see build_detection_dataset)
    tile: int = 256
    single_class: bool = True
    val_fraction: float = 0.25
    split_long: float | None = None
    min_box_area: int = 1
    merge_gap: int = 0  # px: components this close make one box
    min_box_side: int = 1  # px: every box grows to at least this side (thin threads)
    centre_tiles: bool = False  # train defect images also get a tile centred on each defect
    include_good: bool = True
    good_tiles_per_image: int | None = None
    defect_types: list[str] | None = None
    synthetic_fraction: float | None = 0.3  # cap on the synthetic share of labelled train tiles (None: no cap)
    # training (ultralytics train arguments of the same name)
    epochs: int = 100
    imgsz: int = 256
    batch: int = 16
    nbs: int = 64  # nominal batch: gradients accumulate over round(nbs / batch) batches
    optimizer: str = "AdamW"
    lr0: float = 1e-4
    lrf: float = 0.01
    weight_decay: float = 1e-4
    warmup_epochs: float = 3.0
    warmup_bias_lr: float = 0.0  # ultralytics' 0.1 default is an SGD setting; AdamW biases ramp from 0
    cos_lr: bool = False
    patience: int = 50
    mosaic: float = 1.0
    close_mosaic: int = 10
    fliplr: float = 0.5
    flipud: float = 0.5  # fabric has no up/down
    seed: int = 0
    deterministic: bool = True
    device: str | None = None  # None: "0" when CUDA is available, else "cpu"
    workers: int = 4
    amp: bool = False  # always off on CPU; on GPU ultralytics' AMP check wants to download a model
    cache: bool = False
    # frozen backbone's features computed once per distinct image; needs mosaic 0 and turns off the other
    # input-changing augmentations (scale, translate, colour); flips stay (see detect.backbone.FeatureCache)
    cache_backbone: bool = False
    train_args: dict | None = None  # any other ultralytics train argument, passed through
    # evaluation
    conf: float = 0.001
    # outputs
    output_dir: str = "runs/detect"
    name: str = "rtdetr"
    yolo_config_dir: str | None = None  # ultralytics settings/fonts (default ~/.cache/defectfill/ultralytics)

    def validate(self) -> None:
        """ConfigError naming the first bad value."""
        for key in ("epochs", "imgsz", "batch", "nbs", "tile", "min_box_area", "min_box_side"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.tile < 32:
            raise ConfigError(f"tile must be >= 32, got {self.tile}")
        if self.merge_gap < 0:
            raise ConfigError(f"merge_gap must be >= 0, got {self.merge_gap}")
        if self.split_long is not None and self.split_long < 1:
            raise ConfigError(f"split_long must be >= 1 (an aspect ratio) or null, got {self.split_long}")
        if self.good_tiles_per_image is not None and self.good_tiles_per_image < 1:
            raise ConfigError(f"good_tiles_per_image must be >= 1 or null, got {self.good_tiles_per_image}")
        if self.imgsz % 32:
            raise ConfigError(f"imgsz must be a multiple of 32 (the RT-DETR stride), got {self.imgsz}")
        if self.synthetic_fraction is not None and not 0 <= self.synthetic_fraction <= 1:
            raise ConfigError(f"synthetic_fraction must be in [0, 1] or null, got {self.synthetic_fraction}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.workers < 0 or self.patience < 0:
            raise ConfigError("workers and patience must be >= 0")
        if self.lr0 <= 0:
            raise ConfigError(f"lr0 must be positive, got {self.lr0}")
        if self.optimizer.lower() not in {o.lower() for o in OPTIMIZERS}:
            raise ConfigError(f"optimizer: {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.cache_backbone and (self.mosaic > 0 or self.backbone_frozen is False):
            raise ConfigError("cache_backbone needs mosaic: 0 and a frozen backbone (a cached feature is only "
                              f"valid for the same input image), got mosaic {self.mosaic}, backbone_frozen "
                              f"{self.backbone_frozen}")
        for key in ("backbone_pretrained", "backbone_frozen"):
            if getattr(self, key) not in (None, True, False):
                raise ConfigError(f"{key} must be true, false or null, got {getattr(self, key)!r}")

    def dataset_kwargs(self) -> dict:
        """Keyword arguments for :func:`defectfill.detect.dataset.build_detection_dataset`."""
        keys = ("tile", "single_class", "val_fraction", "split_long", "min_box_area", "include_good",
                "good_tiles_per_image", "defect_types", "seed", "synthetic_fraction", "merge_gap", "min_box_side",
                "centre_tiles")
        return {k: getattr(self, k) for k in keys}


# ----------------------------------------------------------------------------- resolution


def _ultralytics_model_yaml(name: str) -> Path | None:
    """The architecture YAML ``name`` shipped inside ultralytics (found without importing it)."""
    spec = importlib.util.find_spec("ultralytics")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        hits = sorted((Path(folder) / "cfg" / "models").rglob(name))
        if hits:
            return hits[0]
    return None


def resolve_model(model: str) -> str:
    """An absolute path (local YAML / .pt) or an ultralytics built-in YAML path; never a download.

    Relative paths are tried against the working directory, then the repository root.
    """
    path = Path(model).expanduser()
    for candidate in (path, REPO_ROOT / path):
        if candidate.is_file():
            if candidate.suffix not in (".yaml", ".yml", ".pt"):
                raise ModelError(f"{candidate}: a detector model must be a .yaml architecture or a .pt checkpoint")
            return str(candidate.resolve())
    if path.suffix == ".pt":
        raise ModelError(f"{model}: local .pt weights not found (weights are never downloaded; "
                         "copy e.g. rtdetr-l.pt to this machine and pass its path)")
    if path.suffix in (".yaml", ".yml") and path.name == model:
        builtin = _ultralytics_model_yaml(model)
        if builtin is not None:
            return str(builtin)
    raise ModelError(f"{model}: detector model YAML not found (neither a file nor an ultralytics built-in)")


def resolve_device(device: str | None) -> str:
    """``device``, or "0" when CUDA is available and "cpu" otherwise."""
    if device not in (None, ""):
        return str(device)
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def read_data_yaml(data_yaml: str | os.PathLike) -> dict:
    """The mapping in a dataset YAML; DataError naming the file when missing or invalid."""
    path = Path(data_yaml)
    if not path.is_file():
        raise DataError(f"{path}: dataset YAML not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(data, dict) or "names" not in data or "val" not in data:
        raise DataError(f"{path}: not a detection dataset YAML (needs 'names' and 'val')")
    return data


def _import_rtdetr(config_dir: str | None):
    """ultralytics' RTDETR class, imported offline (prepare_ultralytics_offline first), with our
    backbone layer registered for its YAML parser."""
    from defectfill.detect.backbone import register  # lazy: ultralytics may load only after prepare_ultralytics_offline
    from defectfill.detect.offline import prepare_ultralytics_offline

    prepare_ultralytics_offline(config_dir)
    register()
    from ultralytics import RTDETR

    return RTDETR


def model_for_run(cfg: DetectorConfig, run_dir: Path) -> str:
    """The model ultralytics builds: ``cfg.model`` resolved, or, when ``backbone_pretrained`` /
    ``backbone_frozen`` change its backbone layer, a copy of the YAML with them written to
    ``run_dir/model_<stem>.yaml``. ConfigError when they are set for a model without that layer."""
    from defectfill.detect.backbone import LAYER_NAME, layer_args, with_backbone

    model = resolve_model(cfg.model)
    options = (cfg.backbone_pretrained, cfg.backbone_frozen)
    if options == (None, None):
        return model
    if Path(model).suffix == ".pt":
        raise ConfigError(f"backbone_pretrained/backbone_frozen apply to a model YAML, not the checkpoint {model}")
    spec = yaml.safe_load(Path(model).read_text())
    if not layer_args(spec):
        raise ConfigError(f"backbone_pretrained/backbone_frozen: {model} has no {LAYER_NAME} layer")
    path = run_dir / f"model_{Path(model).stem}.yaml"
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {model} with backbone options {dict(zip(('pretrained', 'frozen'), options))}\n"
                    + yaml.safe_dump(with_backbone(spec, *options), sort_keys=False))
    return str(path)


# ----------------------------------------------------------------------------- train / evaluate


def train_args(cfg: DetectorConfig, data_yaml: str | os.PathLike) -> dict:
    """The keyword arguments handed to ultralytics' ``RTDETR(model).train``."""
    device = resolve_device(cfg.device)
    args = {
        "data": str(Path(data_yaml).resolve()), "epochs": cfg.epochs, "imgsz": cfg.imgsz, "batch": cfg.batch,
        "nbs": cfg.nbs, "optimizer": cfg.optimizer, "lr0": cfg.lr0, "lrf": cfg.lrf,
        "weight_decay": cfg.weight_decay, "warmup_epochs": cfg.warmup_epochs,
        "warmup_bias_lr": cfg.warmup_bias_lr, "cos_lr": cfg.cos_lr, "patience": cfg.patience,
        "mosaic": cfg.mosaic, "close_mosaic": cfg.close_mosaic, "fliplr": cfg.fliplr, "flipud": cfg.flipud,
        "seed": cfg.seed, "deterministic": cfg.deterministic, "device": device, "workers": cfg.workers,
        "amp": bool(cfg.amp and device != "cpu"), "cache": cfg.cache,
        "project": str(Path(cfg.output_dir).expanduser().resolve()), "name": cfg.name, "exist_ok": True,
        "plots": False, "val": True, "verbose": False,
    }
    if cfg.cache_backbone:  # inputs must repeat exactly for cached features: flips only
        args.update(scale=0.0, translate=0.0, degrees=0.0, shear=0.0, perspective=0.0, hsv_h=0.0, hsv_s=0.0,
                    hsv_v=0.0, mixup=0.0, cutmix=0.0, copy_paste=0.0)
    return {**args, **(cfg.train_args or {})}


def train_detector(cfg: DetectorConfig, data_yaml: str | os.PathLike,
                   callbacks: dict[str, Callable] | None = None) -> Path:
    """Train RT-DETR on ``data_yaml``; return the best weights (``<output_dir>/<name>/weights/best.pt``).

    The weights are an ultralytics ``.pt`` checkpoint (its own format, see the module docstring).
    Refuses an evaluation folder (``defectfill_role: eval``). Offline; ``amp`` is forced off on CPU.
    A frozen EfficientNet-Lite0 layer is added to ultralytics' ``freeze``; its checks write
    ``backbone.json`` (:func:`defectfill.detect.backbone.backbone_callbacks`). ``callbacks``: more
    ultralytics callbacks (event -> function of the trainer), e.g. to evaluate checkpoints as they come.
    """
    data = read_data_yaml(data_yaml)
    if data.get("defectfill_role") == "eval":
        raise DataError(f"{data_yaml}: is an evaluation folder (build_eval_dataset); never train on it")
    args = train_args(cfg, data_yaml)
    run_dir = Path(args["project"]) / cfg.name
    model = model_for_run(cfg, run_dir)
    rtdetr = _import_rtdetr(cfg.yolo_config_dir)(model)
    from defectfill.detect.backbone import INFO_FILE, backbone_callbacks, feature_cache_callbacks, frozen_layers

    frozen = frozen_layers(rtdetr.model.yaml)  # the trainer's `freeze` is what keeps them frozen
    if frozen:
        extra = args.get("freeze")
        extra = list(range(extra)) if isinstance(extra, int) else list(extra or [])
        args["freeze"] = sorted({*extra, *frozen})
    (run_dir / INFO_FILE).unlink(missing_ok=True)  # never report a previous run's backbone
    for event, fn in backbone_callbacks(from_yaml=Path(model).suffix != ".pt").items():
        rtdetr.add_callback(event, fn)
    if cfg.cache_backbone:
        if not frozen:
            raise ConfigError(f"cache_backbone: {model} has no frozen EfficientNet-Lite0 layer")
        for event, fn in feature_cache_callbacks().items():
            rtdetr.add_callback(event, fn)
    for event, fn in (callbacks or {}).items():
        rtdetr.add_callback(event, fn)
    rtdetr.train(**args)
    weights_dir = run_dir / "weights"
    for candidate in (weights_dir / "best.pt", weights_dir / "last.pt"):
        if candidate.is_file():
            return candidate
    raise ModelError(f"{weights_dir}: ultralytics finished without writing best.pt or last.pt")


def read_backbone_record(run_dir: str | os.PathLike) -> dict | None:
    """The ``backbone.json`` a training run wrote (None when its model has no EfficientNet-Lite0)."""
    from defectfill.detect.backbone import INFO_FILE

    path = Path(run_dir) / INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _num(value: Any) -> float | None:
    """A finite Python float, or None for NaN/inf."""
    value = float(value)
    return value if math.isfinite(value) else None


def metrics_to_dict(metrics: Any) -> dict:
    """Overall and per-class numbers from ultralytics' ``DetMetrics`` (what ``model.val`` returns).

    ``map50``/``map50_95`` = ``box.map50``/``box.map`` (class means); ``precision``/``recall`` =
    ``box.mp``/``box.mr``, and ``f1`` the mean of ``box.f1``: per class at IoU 0.5, at the one
    confidence that maximises the class-mean F1 (ultralytics' convention). Per class (``names``
    order): images and instances in the split, precision, recall, f1, ap50, ap50_95 (None when the
    class has no instance in the split).
    """
    box = metrics.box
    names = dict(metrics.names)
    nt = metrics.nt_per_class if metrics.nt_per_class is not None else [0] * len(names)
    nimg = metrics.nt_per_image if metrics.nt_per_image is not None else [0] * len(names)
    present = [int(c) for c in box.ap_class_index]
    per_class = {}
    for c, name in sorted(names.items()):
        row = {"images": int(nimg[c]), "instances": int(nt[c])}
        if c in present:
            i = present.index(c)
            row.update(precision=_num(box.p[i]), recall=_num(box.r[i]), f1=_num(box.f1[i]),
                       ap50=_num(box.ap50[i]), ap50_95=_num(box.ap[i]))
        else:
            row.update(precision=None, recall=None, f1=None, ap50=None, ap50_95=None)
        per_class[name] = row
    f1 = sum(float(v) for v in box.f1) / len(box.f1) if len(box.f1) else 0.0
    return {"map50": _num(box.map50), "map50_95": _num(box.map), "precision": _num(box.mp),
            "recall": _num(box.mr), "f1": _num(f1), "instances": int(sum(int(v) for v in nt)),
            "per_class": per_class, "speed_ms_per_image": {k: _num(v) for k, v in dict(metrics.speed).items()}}


def evaluate_detector(weights: str | os.PathLike, data_yaml: str | os.PathLike, split: str = "val",
                      imgsz: int | None = None, batch: int = 16, device: str | None = None, conf: float = 0.001,
                      workers: int = 0, config_dir: str | None = None) -> dict:
    """Run ultralytics' validator of ``weights`` on ``split`` of ``data_yaml``; return JSON-able metrics.

    Keys: :data:`METRIC_KEYS`, ``instances``, ``per_class``, ``speed_ms_per_image`` (see
    :func:`metrics_to_dict`) plus ``weights``, ``data``, ``split``. ``imgsz=None`` uses the training
    size stored in the checkpoint. Box matching uses ultralytics' fixed IoU thresholds (0.5:0.95;
    precision/recall/F1 at 0.5); its ``iou`` argument is an NMS threshold, which RT-DETR does not use.
    """
    weights = Path(weights)
    if not weights.is_file():
        raise ModelError(f"{weights}: detector weights not found")
    read_data_yaml(data_yaml)
    rtdetr = _import_rtdetr(config_dir)(str(weights))
    kwargs = {"data": str(Path(data_yaml).resolve()), "split": split, "batch": batch, "conf": conf,
              "device": resolve_device(device), "workers": workers, "plots": False, "verbose": False,
              "save_json": False, "exist_ok": True, "name": "val"}
    if imgsz is not None:
        kwargs["imgsz"] = imgsz
    with tempfile.TemporaryDirectory(prefix="defectfill-val-") as work:  # ultralytics' val folder: discarded
        metrics = rtdetr.val(project=work, **kwargs)
        out = metrics_to_dict(metrics)
    return {"weights": str(weights.resolve()), "data": str(Path(data_yaml).resolve()), "split": split, **out}
