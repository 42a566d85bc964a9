"""Generation with any registered generator: defect-free images + masks → a labelled dataset.

Per slot: a clean image and a mask (from a folder, or a reference mask placed at random on
fabric), the generator's `synthesize` (DefectFill: a window resized to the model resolution, K
candidates, Low-Fidelity Selection, paste-back and compositing), the label from the pixels that
visibly changed, a quality gate, and the shared `SampleWriter`. Slots are independent and seeded from (run seed, slot), so interrupted
runs resume without gaps or duplicates and `accelerate launch` shares slots across processes.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectfill.config import GenerateConfig, config_to_dict
from defectfill.data.datasets import _read_manifest, load_reference_dataset
from defectfill.data.fabric import fabric_mask, load_roi, off_fabric_fraction
from defectfill.data.placement import NoFabricPlacement, place_on_fabric
from defectfill.errors import ConfigError, DataError, check_writable, output_errors
from defectfill.formats.images import IMAGE_EXTS, image_size, open_image, read_image, read_mask
from defectfill.generation.compositing import in_mask_change, visible_change, visible_fraction
from defectfill.generation.samples import Sample, SampleWriter, coco_rle
from defectfill.generators import PlacedMask, build_generator, import_class
from defectfill.runinfo import write_run_info

# ---- small pure helpers ----

def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, slot, candidate...), stable across platforms."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] % (2**63))


def file_sha256(path: Path, length: int = 16) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:length]


def list_images(folder: str | Path, what: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"{folder}: no images in the {what} folder")
    return files


# ---- the run: plan slots, shard, resume, write ----

@dataclass
class Slot:
    index: int
    name: str
    clean_path: Path
    mask: np.ndarray
    defect_class: str
    mask_source: str
    seed: int
    clean: np.ndarray | None = None  # the clean image, read once
    valid: np.ndarray | None = None  # where fabric is (bool HxW), for placement and the off-fabric check
    placement: PlacedMask | None = None  # auto masks: the reference defect and how it was placed
    placement_info: dict | None = None


class SlotPlanner:
    """Deterministic slot → (clean image, mask, class, seed); nothing depends on other slots.

    Auto masks are a reference mask of the class (of the clean image's fabric type when the
    manifest names both and ``match_fabric``), placed where the clean image has fabric
    (``fabric_only``; ``roi_dir`` narrows it further). A clean image with no room for the shape
    passes the slot to the next clean image (counted as ``clean_retries``).
    """

    def __init__(self, cfg: GenerateConfig, meta: dict):
        self.cfg = cfg
        self.clean_files = list_images(cfg.clean_dir, "clean-image")
        self.reference = None
        if cfg.roi_dir is not None and not Path(cfg.roi_dir).is_dir():
            raise DataError(f"{cfg.roi_dir}: roi_dir folder does not exist")
        if cfg.masks == "auto":
            ref_dir = cfg.reference_dir or meta.get("data_dir")
            if not ref_dir:
                raise ConfigError("--masks auto needs reference data: set reference_dir")
            self.reference = load_reference_dataset(ref_dir, mask_threshold=cfg.mask_threshold)
            pool = [s for s in self.reference.samples if cfg.defect_type in (None, s.defect_type)]
            if not pool:
                raise DataError(f"{ref_dir}: no reference masks of class {cfg.defect_type!r} "
                                f"(available: {', '.join(self.reference.defect_types)})")
            self.pool = pool
            self.class_names = sorted({s.defect_type for s in pool})
            self.clean_fabric = self._clean_fabric_types()
        else:
            self.mask_files = list_images(cfg.masks, "mask")
            self.by_stem = {p.stem: p for p in self.mask_files}
            types = meta.get("defect_types") or []
            if import_class(cfg.generator).class_conditional and not cfg.defect_type:
                raise ConfigError("with a masks folder, name the class to generate with --defect-type "
                                  f"({cfg.generator} synthesizes one reference class per sample)")
            self.class_names = [cfg.defect_type or (types[0] if len(types) == 1 else "defect")]
        self._sizes: dict[Path, tuple[int, int]] = {}

    def _clean_fabric_types(self) -> dict[str, str]:
        """Clean image stem → fabric type, from the reference manifest or a manifest.csv beside clean_dir."""
        fabrics = dict(self.reference.fabric_types)
        read = (Path(self.reference.root) / "manifest.csv").resolve()
        for manifest in (Path(self.cfg.clean_dir) / "manifest.csv", Path(self.cfg.clean_dir).parent / "manifest.csv"):
            if manifest.is_file() and manifest.resolve() != read:  # the reference manifest is already read
                rows = _read_manifest(manifest)
                fabrics.update({i: r["fabric_type"] for i, r in rows.items() if r.get("fabric_type")})
        return fabrics

    def image_size(self, path: Path) -> tuple[int, int]:
        if path not in self._sizes:
            self._sizes[path] = image_size(path, "clean image")
        return self._sizes[path]

    def check(self) -> None:
        """Decode every clean image (and mask) up front: bad or truncated files fail before any model loads."""
        for path in self.clean_files:
            self._sizes[path] = open_image(path, "clean image").size[::-1]
        if self.reference is None:
            for i in range(min(self.cfg.num_samples, max(len(self.clean_files), len(self.mask_files)))):
                self.slot(i, read_pixels=False)
        else:
            self._check_room()

    def _check_room(self) -> None:
        """Auto masks: every clean image leaves room inside the placement border, and at least one has
        room on fabric (``valid_region``) for the smallest reference shape at the smallest scale."""
        from defectfill.data.placement import (
            PLACEMENT_BORDER,
            SCALE_RANGE,
            NoFabricPlacement,
            crop_to_bbox,
            draw_allowed_origin,
            resize_mask,
        )

        least = 2 * PLACEMENT_BORDER + 1
        for path in self.clean_files:
            height, width = self._sizes[path]
            if height < least or width < least:
                raise DataError(f"{path}: clean image {width}x{height} is too small for a placed defect mask "
                                f"(at least {least}x{least} px: {PLACEMENT_BORDER} px border on each side)")
        crop = min((crop_to_bbox(s.mask) for s in self.pool), key=lambda c: int(c.sum()))
        h, w = crop.shape
        shape = resize_mask(crop, max(1, round(h * SCALE_RANGE[0])), max(1, round(w * SCALE_RANGE[0])))
        for path in self.clean_files:
            try:
                draw_allowed_origin(shape, self.valid_region(path, read_image(path)), PLACEMENT_BORDER,
                                    np.random.default_rng(0))
                return
            except NoFabricPlacement:
                continue
        raise DataError(f"{self.cfg.clean_dir}: no clean image has room on fabric for even the smallest reference "
                        f"mask ({shape.shape[1]}x{shape.shape[0]} px); check fabric_only / roi_dir or the images")

    def valid_region(self, clean_path: Path, clean: np.ndarray) -> np.ndarray:
        """Where a mask may go on this clean image: fabric (unless ``fabric_only`` is off) ∩ its ROI mask."""
        valid = fabric_mask(clean) if self.cfg.fabric_only else np.ones(clean.shape[:2], bool)
        if self.cfg.roi_dir is not None:
            roi = Path(self.cfg.roi_dir) / f"{clean_path.stem}.png"
            if roi.is_file():
                valid &= load_roi(roi, clean.shape[:2])
        return valid

    def references_for(self, clean_path: Path) -> tuple[list, bool]:
        """The reference pool for a clean image: same fabric type when known (and any match), else all."""
        fabric = self.clean_fabric.get(clean_path.stem) if self.cfg.match_fabric else None
        same = [s for s in self.pool if fabric is not None and s.fabric_type == fabric]
        return (same, True) if same else (self.pool, False)

    def slot(self, index: int, read_pixels: bool = True) -> Slot:
        seed = derive_seed(self.cfg.seed, index, 1)
        if self.reference is not None:
            return self._auto_slot(index, seed)
        clean_path = self.clean_files[index % len(self.clean_files)]
        height, width = self.image_size(clean_path)
        mask_path = self.by_stem.get(clean_path.stem) or self.mask_files[index % len(self.mask_files)]
        mask = read_mask(mask_path, self.cfg.mask_threshold)
        if mask.shape != (height, width):
            raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                            f"clean image {clean_path.name} is {width}x{height}")
        if not mask.any():
            raise DataError(f"{mask_path}: mask is empty at threshold {self.cfg.mask_threshold}")
        if mask.all():
            raise DataError(f"{mask_path}: mask covers the whole image at threshold {self.cfg.mask_threshold}: "
                            f"nothing is left to keep clean (a defect mask marks the defect only)")
        slot = Slot(index, f"{index:06d}", clean_path, mask, self.class_names[0], str(mask_path), seed)
        if read_pixels:
            slot.clean = read_image(clean_path)
            slot.valid = self.valid_region(clean_path, slot.clean)
        return slot

    def _auto_slot(self, index: int, seed: int) -> Slot:
        rng = np.random.default_rng([self.cfg.seed, index])
        n = len(self.clean_files)
        for retry in range(n):
            clean_path = self.clean_files[(index + retry) % n]
            clean = read_image(clean_path)
            valid = self.valid_region(clean_path, clean)
            pool, fabric_match = self.references_for(clean_path)
            ref = pool[int(rng.integers(len(pool)))]
            try:
                placed = place_on_fabric([ref.mask], *clean.shape[:2], rng, valid=valid,
                                         allow_rotation=self.cfg.allow_rotation)
            except NoFabricPlacement:
                continue
            info = {"reference_id": ref.id, "reference_fabric": ref.fabric_type,
                    "clean_fabric": self.clean_fabric.get(clean_path.stem), "fabric_match": fabric_match,
                    "rejected_positions": int(placed.rejected_positions), "clean_retries": retry}
            return Slot(index, f"{index:06d}", clean_path, placed.mask, ref.defect_type, f"auto:{ref.id}", seed,
                        clean, valid, PlacedMask(ref, placed), info)
        raise DataError(f"{self.cfg.clean_dir}: slot {index}: no clean image has room on fabric for the "
                        f"reference masks drawn (last: {ref.id}); lower fabric_only strictness or add images")


def label_sample(cfg: GenerateConfig, slot: Slot, result: np.ndarray) -> tuple[np.ndarray, dict, str | None]:
    """The exported mask of a generated sample, its inspection numbers and the rejection reason (None:
    accepted). Exported mask = requested mask ∩ visibly changed pixels (`visible_change`) when
    ``label_from_change``, else the requested mask."""
    clean, requested = slot.clean, slot.mask
    change = in_mask_change(result, clean, requested)
    stats: dict = {"in_mask_change": change, "requested_pixels": int(requested.sum()),
                   "requested_mask_rle": coco_rle(requested),
                   "requested_off_fabric": off_fabric_fraction(requested, slot.valid)}
    if cfg.label_from_change:
        label, threshold, level = visible_change(clean, result, requested, k=cfg.visible_k, floor=cfg.visible_floor)
        stats.update(change_threshold=threshold, texture_level=level)
    else:
        label = requested
    stats["visible_fraction"] = visible_fraction(label, requested)
    if cfg.label_from_change and label.any():  # re-measured on the exported mask, same threshold
        again, _, _ = visible_change(clean, result, label, threshold=stats["change_threshold"])
        stats["exported_visible_fraction"] = visible_fraction(again, label)
    stats["off_fabric_fraction"] = off_fabric_fraction(label, slot.valid) if label.any() else 0.0
    reason = None
    if change < cfg.min_change:
        reason = ("low_change", f"in-mask change {change:.2f} < min_change {cfg.min_change}")
    elif stats["visible_fraction"] < cfg.min_visible_fraction or not label.any():
        reason = ("invisible", f"visible fraction {stats['visible_fraction']:.2f} < min_visible_fraction "
                               f"{cfg.min_visible_fraction}")
    elif stats["off_fabric_fraction"] > cfg.max_off_fabric:
        reason = ("off_fabric", f"{stats['off_fabric_fraction']:.1%} of the mask off fabric > max_off_fabric "
                                f"{cfg.max_off_fabric:.0%}")
    if reason:
        stats["reject_code"] = reason[0]
    return label, stats, reason[1] if reason else None


def run_generation(cfg: GenerateConfig, synthesizer_factory=None) -> dict:
    """Generate `cfg.num_samples` labelled samples into `cfg.output_dir` (resumable, shardable)
    with the generator `cfg.generator` names (or `synthesizer_factory(cfg, device)`)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cfg.validate()
    check_writable(cfg.output_dir, "output folder")
    meta = {}
    if synthesizer_factory is None:
        generator_cls = import_class(cfg.generator)
        generator_cls.check(cfg)
        meta = generator_cls.checkpoint_defaults(cfg)
    elif cfg.lora_dir:  # a custom factory over a DefectFill LoRA: its record still fills the unset keys
        meta = import_class(cfg.generator).checkpoint_defaults(cfg)
    planner = SlotPlanner(cfg, meta)
    planner.check()
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator() would read it
    out = Path(cfg.output_dir)
    existed, was_empty = out.exists(), not out.exists() or not any(out.iterdir())
    try:
        with output_errors(cfg.output_dir):
            writer = SampleWriter(cfg.output_dir, planner.class_names, min_component_area=cfg.min_component_area,
                                  contact_sheet_samples=cfg.contact_sheet_samples)
            return _generate_into(cfg, planner, state, writer, synthesizer_factory)
    except BaseException:
        if was_empty and state.is_main_process:
            remove_if_no_samples(out, keep_folder=existed)
        raise


def remove_if_no_samples(folder: Path, keep_folder: bool = False) -> bool:
    """Undo the empty layout a failed run made in ``folder`` (empty before it): when no file was written
    anywhere under it, remove its sub-folders and, unless ``keep_folder``, the folder itself. A refused
    run leaves nothing behind. Returns whether anything was removed."""
    if not folder.is_dir() or any(p.is_file() for p in folder.rglob("*")):
        return False
    if keep_folder:
        for sub in folder.iterdir():
            shutil.rmtree(sub, ignore_errors=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return True


def _generate_into(cfg: GenerateConfig, planner: SlotPlanner, state, writer, synthesizer_factory) -> dict:
    from tqdm.auto import tqdm

    mine = [i for i in range(cfg.num_samples)
            if i % state.num_processes == state.process_index and not writer.is_done(f"{i:06d}")]
    if mine:
        synth = (synthesizer_factory or build_generator)(cfg, device=state.device)
        config, about = config_to_dict(cfg), synth.metadata()
        for index in tqdm(mine, desc=f"generate [{state.process_index}]", disable=not state.is_local_main_process):
            slot = planner.slot(index)
            result, info = synth.synthesize(slot.clean, slot.mask, slot.seed, slot.defect_class, slot.placement)
            label, stats, reason = label_sample(cfg, slot, result)
            sidecar = {**about, "run_seed": cfg.seed, "slot": index, "seed": slot.seed,
                       "source_image": str(slot.clean_path), "mask_source": slot.mask_source,
                       "placement": slot.placement_info, **stats, "generator_config": config, **info}
            sample = Sample(slot.name, result, label if label.any() else slot.mask, slot.defect_class, sidecar,
                            clean=slot.clean)
            if reason:
                writer.write_rejected(sample, reason)
            else:
                writer.write(sample)
    state.wait_for_everyone()
    summary: dict = {}
    if state.is_main_process:
        summary = writer.finalize()
        summary["inspection"] = inspection_summary(writer.sidecars(rejected=False), writer.sidecars(rejected=True))
        write_run_info(cfg.output_dir, config_to_dict(cfg), cfg.seed, summary=summary,
                       num_processes=state.num_processes)
    state.wait_for_everyone()
    return summary


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "mean": float(a.mean()), "p10": float(np.percentile(a, 10)),
            "median": float(np.median(a)), "min": float(a.min()), "max": float(a.max())}


def shortfall(summary: dict, asked: int) -> str | None:
    """None when a run accepted every one of the ``asked`` samples; else one line: how many were accepted
    and why the others were rejected (the sidecars' ``reject_code`` counts)."""
    accepted = int(summary.get("samples", 0))
    if accepted >= asked:
        return None
    reasons = (summary.get("inspection") or {}).get("rejected_by_reason") or {}
    why = ", ".join(f"{code} {n}" for code, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return (f"accepted {accepted} of {asked} requested samples; rejected by reason: {why or 'none recorded'} "
            f"(see rejected/ and each sidecar's reject_code)")


def inspection_summary(accepted: list[dict], rejected: list[dict]) -> dict:
    """What a user checks before training on a generated set, from the sidecars: rejection counts by
    reason; for the requested masks of all samples, the visible fraction and off-fabric fraction;
    for the accepted, the exported masks' off-fabric fraction (and how many exceed 5 %); placement
    retries. Sidecars without these keys (older runs) are skipped key by key."""
    every = accepted + rejected

    def values(records, key):
        return [float(r[key]) for r in records if isinstance(r.get(key), (int, float))]

    placements = [r["placement"] for r in every if isinstance(r.get("placement"), dict)]
    codes: dict[str, int] = {}
    for r in rejected:
        code = r.get("reject_code", "other")
        codes[code] = codes.get(code, 0) + 1
    off = values(accepted, "off_fabric_fraction")
    return {"accepted": len(accepted), "rejected": len(rejected), "rejected_by_reason": codes,
            "visible_fraction_requested": _quantiles(values(every, "visible_fraction")),
            "visible_fraction_exported": _quantiles(values(accepted, "exported_visible_fraction")),
            "requested_off_fabric": _quantiles(values(every, "requested_off_fabric")),
            "accepted_off_fabric": _quantiles(off),
            "accepted_over_5pct_off_fabric": int(sum(v > 0.05 for v in off)),
            "placement_rejected_positions": int(sum(p.get("rejected_positions", 0) for p in placements)),
            "placement_clean_retries": int(sum(p.get("clean_retries", 0) for p in placements)),
            "fabric_matched": int(sum(bool(p.get("fabric_match")) for p in placements)),
            "placed": len(placements)}
