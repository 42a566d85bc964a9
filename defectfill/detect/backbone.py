"""The pretrained EfficientNet-Lite0 (:mod:`defectfill.backbones`) as an ultralytics YAML layer.

A model YAML names it like any ultralytics layer, and three ``Index`` layers pick P3/P4/P5::

    - [-1, 1, EfficientNetLite0, [True, True]]  # 0: args [pretrained, frozen]
    - [0, 1, Index, [40, 0]]                     # 1: P3/8   40 ch
    - [0, 1, Index, [112, 1]]                    # 2: P4/16 112 ch
    - [0, 1, Index, [320, 2]]                    # 3: P5/32 320 ch

Facts of ultralytics 8.4 this module is shaped by:

* its YAML parser looks layer names up in ``ultralytics.nn.tasks``' globals: :func:`register` puts
  :class:`EfficientNetLite0` there (call it after ``prepare_ultralytics_offline``);
* ``train()`` rebuilds the model from the YAML, so the ImageNet weights are loaded in ``__init__``
  (from the registry package, offline), and :func:`backbone_callbacks` checks them on the rebuilt model;
* the trainer turns ``requires_grad`` back on for every parameter not in its ``freeze`` argument:
  a frozen backbone is frozen through ``freeze=[layer index]`` (:func:`frozen_layers`), which also
  keeps its BatchNorm statistics in eval mode.

Checkpoints (ultralytics' pickled ``.pt``) store this class by its import path, so loading one needs
``defectfill`` importable; the weights then come from the checkpoint, not the package.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defectfill.backbones import Backbone, efficientnet_lite0
from defectfill.errors import ModelError

LAYER_NAME = "EfficientNetLite0"
LEVELS = (2, 3, 4)  # strides 8/16/32: RT-DETR's P3/P4/P5
INFO_FILE = "backbone.json"


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 features at strides 8/16/32 (40/112/320 channels) as a list, for ``Index`` layers.

    ``pretrained``: ImageNet weights from the package (else timm's seeded random init, named so).
    ``frozen``: BatchNorm stays in eval mode; pair it with the trainer's ``freeze`` for the gradients.
    The ImageNet head (conv_head, bn2, classifier) is dropped: the detector never uses it.
    """

    feature_cache: FeatureCache | None = None  # set on the trained model only (enable_feature_cache)

    def __init__(self, pretrained: bool = True, frozen: bool = True) -> None:
        super().__init__()
        self.body = Backbone(pretrained=bool(pretrained), levels=LEVELS, frozen=bool(frozen))
        net = self.body.net
        net.conv_head, net.bn2, net.classifier = nn.Identity(), nn.Identity(), nn.Identity()
        self.pretrained, self.frozen, self.name = bool(pretrained), bool(frozen), self.body.name

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.feature_cache is None:
            return self.body(x)
        return self.feature_cache(x, self.body)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("feature_cache", None)  # never pickled into a checkpoint or copied into the EMA
        return state


class FeatureCache:
    """The frozen backbone's features per distinct input image, computed once.

    A frozen backbone (eval-mode BatchNorm, no gradient) maps an image to the same features every epoch, so
    with augmentations that only flip (no mosaic, scaling, translation or colour jitter) a training set of N
    tiles shows the backbone at most 4N distinct inputs. Keys are a digest of each image's bytes; a batch
    runs the backbone on its misses only. ``hits``/``misses`` count images.
    """

    def __init__(self) -> None:
        self.store: dict[bytes, list[torch.Tensor]] = {}
        self.hits = self.misses = 0

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        return hashlib.blake2b(image.detach().contiguous().cpu().numpy().tobytes(), digest_size=16).digest()

    def __call__(self, x: torch.Tensor, body: nn.Module) -> list[torch.Tensor]:
        keys = [self.key(img) for img in x]
        todo = list({k: i for i, k in reversed(list(enumerate(keys))) if k not in self.store}.values())[::-1]
        if todo:
            with torch.no_grad():
                feats = body(x[todo])
            for j, i in enumerate(todo):
                self.store[keys[i]] = [f[j].clone() for f in feats]
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        return [torch.stack([self.store[k][level] for k in keys]) for level in range(len(LEVELS))]

    def info(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self.store)}


def feature_cache_callbacks() -> dict:
    """ultralytics callbacks that give the TRAINED model's frozen backbone a :class:`FeatureCache` at the start
    of training and drop it at the end (the EMA copy and checkpoints never hold one), recording its counts in
    ``backbone.json`` (key ``feature_cache``). ModelError when the backbone is missing or not frozen."""
    state: dict[str, Any] = {}

    def on_train_start(trainer) -> None:
        found = find_backbone(trainer.model)
        if found is None or not found[1].frozen:
            raise ModelError("cache_backbone needs the model's EfficientNet-Lite0 layer, frozen")
        state["layer"] = found[1]
        found[1].feature_cache = FeatureCache()

    def on_train_end(trainer) -> None:
        layer = state.get("layer")
        if layer is None or layer.feature_cache is None:
            return
        info = layer.feature_cache.info()
        layer.feature_cache = None
        path = Path(trainer.save_dir) / INFO_FILE
        record = json.loads(path.read_text()) if path.is_file() else {}
        record["feature_cache"] = info
        path.write_text(json.dumps(record, indent=1) + "\n")

    return {"on_train_start": on_train_start, "on_train_end": on_train_end}


def register() -> None:
    """Make ``EfficientNetLite0`` a layer name ultralytics' YAML parser knows (idempotent)."""
    import ultralytics.nn.tasks as tasks

    setattr(tasks, LAYER_NAME, EfficientNetLite0)


def layer_args(model_yaml: dict) -> dict[int, list]:
    """Layer index -> args of every ``EfficientNetLite0`` layer in an ultralytics model dict."""
    rows = list(model_yaml.get("backbone") or []) + list(model_yaml.get("head") or [])
    return {i: list(row[3]) for i, row in enumerate(rows) if row[2] == LAYER_NAME}


def frozen_layers(model_yaml: dict) -> list[int]:
    """Indices of the backbone layers whose ``frozen`` arg (the second; default True) is set."""
    return [i for i, args in layer_args(model_yaml).items() if len(args) < 2 or bool(args[1])]


def with_backbone(model_yaml: dict, pretrained: bool | None, frozen: bool | None) -> dict:
    """A copy of ``model_yaml`` with the backbone layers' args replaced where not None."""
    out = {**model_yaml, "backbone": [list(r) for r in model_yaml.get("backbone") or []],
           "head": [list(r) for r in model_yaml.get("head") or []]}
    rows = out["backbone"] + out["head"]
    for i, args in layer_args(model_yaml).items():
        args = (args + [True, True])[:2]
        rows[i][3] = [args[0] if pretrained is None else bool(pretrained), args[1] if frozen is None else bool(frozen)]
    return out


def find_backbone(model: nn.Module) -> tuple[str, EfficientNetLite0] | None:
    """(qualified name, module) of the first :class:`EfficientNetLite0` inside ``model``, or None."""
    for name, module in model.named_modules():
        if isinstance(module, EfficientNetLite0):
            return name, module
    return None


def packaged_state() -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights in the keys of ``EfficientNetLite0.body.net`` (head dropped)."""
    return {k: v for k, v in efficientnet_lite0(pretrained=True).state_dict().items()
            if not k.startswith(("conv_head.", "bn2.", "classifier."))}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a - b| over the tensors of ``a`` (0.0: identical), in float32."""
    return max((float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel()), default=0.0)


def max_abs_diff_to_package(layer: EfficientNetLite0) -> float | None:
    """Largest |difference| between the layer's weights/BN statistics and the packaged ones (0.0: identical).

    None for a random backbone when the package is not installed (a pretrained one cannot exist then).
    """
    try:
        ref = packaged_state()
    except ModelError:
        if layer.pretrained:
            raise
        return None
    own = layer.body.net.state_dict()
    if set(own) != set(ref):
        raise ModelError(f"backbone keys differ from the packaged EfficientNet-Lite0: "
                         f"{sorted(set(own) ^ set(ref))[:3]}...")
    return _max_diff(own, ref)


def backbone_info(model: nn.Module) -> dict[str, Any] | None:
    """What a detector's backbone is: name, pretrained, frozen, and its distance to the packaged weights.

    None when ``model`` has no :class:`EfficientNetLite0` (e.g. ``rtdetr-l`` or our small ResNet YAML).
    """
    found = find_backbone(model)
    if found is None:
        return None
    name, layer = found
    params = list(layer.parameters())
    return {"layer": name, "name": layer.name, "pretrained": layer.pretrained, "frozen": layer.frozen,
            "trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "params": sum(p.numel() for p in params), "max_abs_diff_to_package": max_abs_diff_to_package(layer)}


def backbone_callbacks(from_yaml: bool) -> dict:
    """ultralytics callbacks that check and record the backbone of the model the trainer really trains.

    ``on_train_start``: the rebuilt model's backbone must hold the packaged weights when it is
    pretrained and built from a YAML (``from_yaml``), and a frozen one must have no trainable
    parameter, else ModelError. ``on_train_end``: a frozen backbone must be bit-identical to its
    state at the start. Both write ``<save_dir>/backbone.json`` (keys ``start`` and ``end``; ``end``
    adds ``max_abs_change_in_training``).
    """
    record: dict[str, Any] = {}
    start_state: dict[str, torch.Tensor] = {}

    def write(trainer) -> None:
        path = Path(trainer.save_dir) / INFO_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")

    def on_train_start(trainer) -> None:
        found = find_backbone(trainer.model)
        if found is None:
            return
        record["start"] = info = backbone_info(trainer.model)
        start_state.update({k: v.detach().clone() for k, v in found[1].state_dict().items()})
        write(trainer)
        if from_yaml and info["pretrained"] and info["max_abs_diff_to_package"] != 0.0:
            raise ModelError(f"the trained model's backbone is not the packaged ImageNet EfficientNet-Lite0 (max "
                             f"|diff| {info['max_abs_diff_to_package']:.3g}): the weights were lost in the rebuild")
        if info["frozen"] and info["trainable_params"]:
            raise ModelError(f"backbone {info['layer']} is marked frozen but {info['trainable_params']} of its "
                             "parameters train: pass its layer index in the trainer's freeze argument")

    def on_train_end(trainer) -> None:
        found = find_backbone(trainer.model)
        if found is None or not start_state:
            return
        record["end"] = {**backbone_info(trainer.model),
                         "max_abs_change_in_training": _max_diff(found[1].state_dict(), start_state)}
        write(trainer)
        if record["start"]["frozen"] and record["end"]["max_abs_change_in_training"] != 0.0:
            raise ModelError(f"the frozen backbone changed during training "
                             f"(max |change| {record['end']['max_abs_change_in_training']:.3g})")

    return {"on_train_start": on_train_start, "on_train_end": on_train_end}
