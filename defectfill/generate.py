"""DefectFill generation: fine-tuned LoRA + defect-free images + masks → a labelled dataset.

Per slot: a clean image and a mask (from a folder, or a reference mask placed at random), a
window around the mask resized to the model resolution, K candidates inpainted in one batched
pipeline call, Low-Fidelity Selection, the chosen one pasted back and composited so that pixels
outside a dilation of the mask stay bit-identical to the clean image, a quality gate, and the
shared `SampleWriter`. Slots are independent and seeded from (run seed, slot), so interrupted
runs resume without gaps or duplicates and `accelerate launch` shares slots across processes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from defectfill.config import GenerateConfig, config_to_dict
from defectfill.errors import ConfigError, DataError
from defectfill.generators import Generator, build_generator

GENERATOR_NAME = "defectfill"


# ---- small pure helpers ----

def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, slot, candidate...), stable across platforms."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] % (2**63))


def mask_window(mask: np.ndarray, crop_size: int) -> tuple[int, int, int, int]:
    """(y0, x0, h, w): a window around the mask's bounding box, `crop_size` square when the image
    allows (larger if the defect is), centred on the defect and clamped inside the image."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("empty mask")
    side = max(crop_size, ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    h, w = min(side, height), min(side, width)
    cy, cx = (ys.min() + ys.max() + 1) // 2, (xs.min() + xs.max() + 1) // 2
    y0 = int(np.clip(cy - h // 2, 0, height - h))
    x0 = int(np.clip(cx - w // 2, 0, width - w))
    return y0, x0, int(h), int(w)


def blend_weights(mask: np.ndarray, dilation: int) -> np.ndarray:
    """Alpha in [0, 1]: 1 on the mask, falling linearly to 0 across a `dilation`-pixel band,
    exactly 0 beyond it (Euclidean distance)."""
    if dilation == 0:
        return mask.astype(np.float32)
    distance = ndimage.distance_transform_edt(~mask)
    alpha = np.clip(1.0 - distance / (dilation + 1), 0.0, 1.0)
    alpha[distance > dilation] = 0.0
    return alpha.astype(np.float32)


def composite(clean: np.ndarray, generated: np.ndarray, mask: np.ndarray, dilation: int) -> np.ndarray:
    """Background fidelity: the result equals `clean` bit for bit wherever the blend weight is 0
    (outside the mask dilated by `dilation`); the 9-channel pipeline itself repaints everything."""
    alpha = blend_weights(mask, dilation)
    a = alpha if clean.ndim == 2 else alpha[..., None]
    mixed = np.rint(a * generated.astype(np.float32) + (1 - a) * clean.astype(np.float32))
    inside = alpha > 0 if clean.ndim == 2 else (alpha > 0)[..., None]
    return np.where(inside, np.clip(mixed, 0, 255).astype(np.uint8), clean)


def in_mask_change(result: np.ndarray, clean: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute change inside the mask, on the 0..255 scale (the quality gate's measure)."""
    diff = np.abs(result.astype(np.float32) - clean.astype(np.float32))
    if diff.ndim == 3:
        diff = diff.mean(axis=2)
    return float(diff[mask].mean())


def file_sha256(path: Path, length: int = 16) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:length]


def read_image(path: Path) -> np.ndarray:
    """uint8 HxW for grayscale files, HxWx3 otherwise; errors name the file."""
    try:
        with Image.open(path) as im:
            im.load()
            gray = im.mode in ("L", "LA", "I", "I;16", "1", "F")
            return np.asarray(im.convert("L" if gray else "RGB"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})".splitlines()[0]) from exc


def list_images(folder: str | Path, what: str) -> list[Path]:
    from defectfill.data.datasets import IMAGE_EXTS

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"{folder}: no images in the {what} folder")
    return files


# ---- the synthesizer ----

class DefectFillSynthesizer(Generator):
    """A fine-tuned DefectFill pipeline that turns (clean image, mask, seed) into a defect image."""

    name = GENERATOR_NAME
    preserves_background = True

    def __init__(self, cfg: GenerateConfig, device: torch.device | str = "cpu"):
        from defectfill.models.lora import EMBEDS_NAME, read_lora_metadata
        from defectfill.models.pipeline import load_inpaint_pipeline

        self.cfg = cfg
        self.dilation = cfg.dilation
        self.meta = read_lora_metadata(cfg.lora_dir)
        self.model = cfg.model or self.meta["base_model"]
        self.prompt = cfg.prompt or self.meta["defect_prompt"]
        self.resolution = cfg.resolution or int(self.meta["resolution"])
        self.crop_size = cfg.crop_size or int(self.meta["crop_size"])
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision)
        kwargs = {"torch_dtype": dtype} if dtype else {}
        self.pipe = load_inpaint_pipeline(self.model, lora_dir=cfg.lora_dir, **kwargs).to(device)
        if cfg.enable_xformers:
            self.pipe.enable_xformers_memory_efficient_attention()
        self.pipe.set_progress_bar_config(disable=True)
        weights = Path(cfg.lora_dir) / "pytorch_lora_weights.safetensors"
        self.lora_hash = file_sha256(weights) + "+" + file_sha256(Path(cfg.lora_dir) / EMBEDS_NAME)
        self.lpips_model, self.lpips_desc = None, None
        if cfg.selection == "lpips":
            from defectfill.selection import load_lpips

            self.lpips_model, self.lpips_desc = load_lpips(cfg.lpips_net, cfg.lpips_weights, device=device)

    def metadata(self) -> dict:
        return {"generator": self.name, "base_model": self.model, "lora_dir": str(self.cfg.lora_dir),
                "lora_hash": self.lora_hash, "prompt": self.prompt}

    def candidates(self, window: np.ndarray, window_mask: np.ndarray, seeds: list[int]) -> np.ndarray:
        """K inpainted candidates (K, R, R, 3) in [0, 1] from one batched pipeline call on a
        window already at the model resolution (uint8 RGB) and its mask."""
        r = self.resolution
        image = Image.fromarray(window)
        mask = latent_safe(window_mask, self.pipe.vae_scale_factor)
        out = self.pipe(
            self.prompt, image=image, mask_image=Image.fromarray(mask.astype(np.uint8) * 255),
            height=r, width=r, num_images_per_prompt=len(seeds), num_inference_steps=self.cfg.num_inference_steps,
            guidance_scale=self.cfg.guidance_scale, negative_prompt=self.cfg.negative_prompt,
            generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np",
        )
        return out.images

    def synthesize(self, clean: np.ndarray, mask: np.ndarray, seed: int,
                   defect_class: str | None = None) -> tuple[np.ndarray, dict]:
        """Generate K candidates in a window around `mask`, keep the least clean-like one inside
        the mask (Low-Fidelity Selection), and composite it into `clean`."""
        from defectfill.selection import low_fidelity_selection

        seeds = [derive_seed(seed, k) for k in range(self.cfg.candidates)]
        info: dict = {"candidate_seeds": seeds}

        def pick(window_r: np.ndarray, mask_r: np.ndarray) -> np.ndarray:
            cands = self.candidates(window_r, mask_r, seeds)
            chosen, scores = low_fidelity_selection(
                torch.from_numpy(cands).permute(0, 3, 1, 2).float(),
                torch.from_numpy(window_r.astype(np.float32) / 255).permute(2, 0, 1),
                torch.from_numpy(mask_r), measure=self.cfg.selection, lpips_model=self.lpips_model)
            info["selection"] = {"measure": self.cfg.selection, "scores": [float(s) for s in scores],
                                 "chosen": int(chosen), "lpips": self.lpips_desc}
            return (cands[chosen] * 255).round().astype(np.uint8)

        result, window = windowed(clean, mask, self.crop_size, self.resolution, self.cfg.dilation, pick)
        return result, {"window_yxhw": list(window), **info}


def windowed(clean: np.ndarray, mask: np.ndarray, crop_size: int, resolution: int, dilation: int,
             make) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Shared by every generator: cut a window around `mask` (see `mask_window`), resize it to
    `resolution` (RGB uint8) with its mask, let `make(window_r, mask_r)` return the generated
    window (R, R, 3) uint8, resize it back, match grayscale inputs, and composite it into `clean`
    so pixels farther than `dilation` from the mask stay bit-identical. Returns (result, window)."""
    y0, x0, h, w = mask_window(mask, crop_size)
    window, window_mask = clean[y0:y0 + h, x0:x0 + w], mask[y0:y0 + h, x0:x0 + w]
    window_r = np.asarray(Image.fromarray(window).convert("RGB").resize((resolution,) * 2, Image.BICUBIC))
    made = Image.fromarray(make(window_r, resize_mask(window_mask, resolution))).resize((w, h), Image.BICUBIC)
    if clean.ndim == 2:
        made = made.convert("L")
    result = clean.copy()
    result[y0:y0 + h, x0:x0 + w] = composite(window, np.asarray(made), window_mask, dilation)
    return result, (y0, x0, h, w)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Square resize where any covered pixel counts (area resampling, > 0): thin defects survive."""
    area = Image.fromarray(mask.astype(np.float32)).resize((size, size), Image.BOX)
    return np.asarray(area) > 0


def latent_safe(mask: np.ndarray, latent_factor: int) -> np.ndarray:
    """Dilate by one latent cell so the pipeline's nearest-neighbour downsampling to the latent
    grid cannot drop a thin defect."""
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=max(1, latent_factor))


def model_mask(mask: np.ndarray, size: int, latent_factor: int) -> np.ndarray:
    """The mask given to the pipeline: resized to the model resolution, then `latent_safe`."""
    return latent_safe(resize_mask(mask, size), latent_factor)


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


class SlotPlanner:
    """Deterministic slot → (clean image, mask, class, seed); nothing depends on other slots."""

    def __init__(self, cfg: GenerateConfig, meta: dict):
        self.cfg = cfg
        self.clean_files = list_images(cfg.clean_dir, "clean-image")
        self.reference = None
        if cfg.masks == "auto":
            from defectfill.data.datasets import load_reference_dataset

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
        else:
            self.mask_files = list_images(cfg.masks, "mask")
            self.by_stem = {p.stem: p for p in self.mask_files}
            types = meta.get("defect_types") or []
            if cfg.generator != "defectfill" and not cfg.defect_type:
                raise ConfigError("with a masks folder, name the class to generate with --defect-type "
                                  "(baselines synthesize one reference class)")
            self.class_names = [cfg.defect_type or (types[0] if len(types) == 1 else "defect")]
        self._sizes: dict[Path, tuple[int, int]] = {}

    def image_size(self, path: Path) -> tuple[int, int]:
        if path not in self._sizes:
            try:
                with Image.open(path) as im:
                    self._sizes[path] = (im.height, im.width)
            except OSError as exc:
                raise DataError(f"{path}: cannot read image ({exc})".splitlines()[0]) from exc
        return self._sizes[path]

    def check(self) -> None:
        """Open every clean image (and mask) header up front: bad files fail before any model loads."""
        for path in self.clean_files:
            self.image_size(path)
        if self.reference is None:
            for i in range(min(self.cfg.num_samples, max(len(self.clean_files), len(self.mask_files)))):
                self.slot(i)

    def slot(self, index: int) -> Slot:
        from defectfill.data.masks import binarize_mask

        clean_path = self.clean_files[index % len(self.clean_files)]
        height, width = self.image_size(clean_path)
        rng = np.random.default_rng([self.cfg.seed, index])
        if self.reference is not None:
            from defectfill.data.placement import place_reference_mask

            ref = self.pool[int(rng.integers(len(self.pool)))]
            mask = place_reference_mask([ref.mask], height, width, rng, allow_rotation=self.cfg.allow_rotation)
            source, cls = f"auto:{ref.id}", ref.defect_type
        else:
            mask_path = self.by_stem.get(clean_path.stem) or self.mask_files[index % len(self.mask_files)]
            with Image.open(mask_path) as im:
                mask = binarize_mask(im, self.cfg.mask_threshold)
            if mask.shape != (height, width):
                raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                                f"clean image {clean_path.name} is {width}x{height}")
            if not mask.any():
                raise DataError(f"{mask_path}: mask is empty at threshold {self.cfg.mask_threshold}")
            source, cls = str(mask_path), self.class_names[0]
        return Slot(index, f"{index:06d}", clean_path, mask, cls, source, derive_seed(self.cfg.seed, index, 1))


def run_generation(cfg: GenerateConfig, synthesizer_factory=None) -> dict:
    """Generate `cfg.num_samples` labelled samples into `cfg.output_dir` (resumable, shardable)
    with the generator `cfg.generator` names (or `synthesizer_factory(cfg, device)`)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    from tqdm.auto import tqdm

    from defectfill.models.lora import read_lora_metadata
    from defectfill.runinfo import write_run_info
    from defectfill.samples import Sample, SampleWriter

    cfg.validate()
    meta = read_lora_metadata(cfg.lora_dir) if cfg.lora_dir else {}
    planner = SlotPlanner(cfg, meta)
    planner.check()
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator() would read it
    writer = SampleWriter(cfg.output_dir, planner.class_names, min_component_area=cfg.min_component_area,
                          contact_sheet_samples=cfg.contact_sheet_samples)
    mine = [i for i in range(cfg.num_samples)
            if i % state.num_processes == state.process_index and not writer.is_done(f"{i:06d}")]
    if mine:
        synth = (synthesizer_factory or build_generator)(cfg, device=state.device)
        config, about = config_to_dict(cfg), synth.metadata()
        for index in tqdm(mine, desc=f"generate [{state.process_index}]", disable=not state.is_local_main_process):
            slot = planner.slot(index)
            clean = read_image(slot.clean_path)
            result, info = synth.synthesize(clean, slot.mask, slot.seed, slot.defect_class)
            change = in_mask_change(result, clean, slot.mask)
            sidecar = {**about, "run_seed": cfg.seed, "slot": index, "seed": slot.seed,
                       "source_image": str(slot.clean_path), "mask_source": slot.mask_source,
                       "in_mask_change": change, "generator_config": config, **info}
            sample = Sample(slot.name, result, slot.mask, slot.defect_class, sidecar, clean=clean)
            if change < cfg.min_change:
                writer.write_rejected(sample, f"in-mask change {change:.2f} < min_change {cfg.min_change}")
            else:
                writer.write(sample)
    state.wait_for_everyone()
    summary: dict = {}
    if state.is_main_process:
        summary = writer.finalize()
        write_run_info(cfg.output_dir, config_to_dict(cfg), cfg.seed, summary=summary,
                       num_processes=state.num_processes)
    state.wait_for_everyone()
    return summary
