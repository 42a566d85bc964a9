"""The embedded default job: DefectFill fine-tuned on the embedded fabric base, a labelled dataset.

Runs in a few minutes on a CPU anywhere: real AITEX reference defects when the folder is
present, otherwise a procedurally generated woven-fabric set made on the spot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from defectfill.config import GenerateConfig, load_config
from defectfill.data.datasets import load_reference_dataset, sample_defect_crop
from defectfill.data.procedural import make_woven_dataset
from defectfill.diffusion.config import DefectFillTrainConfig
from defectfill.diffusion.models.pipeline import FABRIC_BASE, load_inpaint_pipeline, resolve_model
from defectfill.diffusion.trainer import train
from defectfill.errors import check_writable
from defectfill.generation.run import run_generation
from defectfill.runinfo import atomic_save_image, atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "defectfill" / "fabric_base.yaml"


def default_reference_data() -> Path | None:
    """$DEFECTFILL_AITEX, else `../shared/data/aitex` beside the repository or the working folder."""
    candidates = [os.environ.get("DEFECTFILL_AITEX"), REPO_ROOT.parent / "shared" / "data" / "aitex",
                  Path.cwd().parent / "shared" / "data" / "aitex"]
    for c in candidates:
        if c and (Path(c) / "images").is_dir():
            return Path(c)
    return None


def preview_grid(model: str, lora_dir: Path, dataset, cfg: DefectFillTrainConfig, path: Path, rows: int = 4) -> Path:
    """Reference crop | mask | base-model inpainting | fine-tuned inpainting (composited into the
    reference outside the mask), one row per defect."""
    base = load_inpaint_pipeline(model)
    tuned = load_inpaint_pipeline(model, lora_dir=lora_dir)
    defect_prompt, _ = cfg.prompts()
    for pipe in (base, tuned):
        pipe.set_progress_bar_config(disable=True)
    r = cfg.resolution
    rng = np.random.default_rng(cfg.seed)
    tiles = []
    for i in range(min(rows, len(dataset.samples))):
        sample = dataset.samples[int(rng.integers(len(dataset.samples)))]
        image, mask = sample_defect_crop(sample.image, sample.mask, cfg.crop_size, r, rng)
        image_pil, mask_pil = Image.fromarray(image), Image.fromarray(mask.astype(np.uint8) * 255)
        outs = []
        for pipe, prompt in ((base, "A photo of fabric"), (tuned, defect_prompt)):
            out = pipe(prompt, image=image_pil, mask_image=mask_pil, height=r, width=r, num_inference_steps=10,
                       generator=torch.Generator().manual_seed(cfg.seed + i)).images[0]
            # the 9-channel pipeline repaints everything: keep the clean pixels outside the mask
            outs.append(Image.composite(out, image_pil, mask_pil))
        tiles.append([image_pil, mask_pil.convert("RGB"), *outs])
    cell, pad, head = max(r, 96), 4, 18
    grid = Image.new("RGB", (4 * (cell + pad) + pad, head + len(tiles) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(("reference", "mask", "base model", "DefectFill")):
        draw.text((pad + j * (cell + pad), 3), title, fill="black")
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            grid.paste(tile.convert("RGB").resize((cell, cell), Image.NEAREST),
                       (pad + j * (cell + pad), head + i * (cell + pad)))
    return atomic_save_image(grid, path)


def demo_clean_images(data: Path, out: Path, count: int = 10) -> Path:
    """Defect-free inputs for generation: the reference set's 256x256 good tiles when it has them,
    else 256-px-wide strips cut from its good images (written under `out`)."""
    tiles = data / "tiles" / "good"
    if tiles.is_dir() and any(tiles.glob("*.png")):
        return tiles if len(list(tiles.glob("*.png"))) <= count else _copy_first(tiles, out, count)
    out.mkdir(parents=True, exist_ok=True)
    goods = sorted((data / "good").glob("*.png"))
    if not goods:
        raise FileNotFoundError(f"{data}: no good/ images to generate defects on")
    for i in range(count):
        with Image.open(goods[i % len(goods)]) as im:
            x0 = (i // len(goods)) * 256 % max(1, im.width - 256)
            im.crop((x0, 0, x0 + min(256, im.width), min(256, im.height))).save(out / f"clean_{i:02d}.png")
    return out


def _copy_first(folder: Path, out: Path, count: int) -> Path:
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    for p in sorted(folder.glob("*.png"))[:count]:
        if not (out / p.name).exists():
            shutil.copy(p, out / p.name)
    return out


def run_demo(output_dir: str | Path = "runs/demo", data_dir: str | Path | None = None, steps: int | None = None,
             num_samples: int = 10) -> dict:
    """Fine-tune DefectFill on reference defects from the embedded fabric base (``fabric-base``;
    ``steps`` default: configs/defectfill/fabric_base.yaml), generate a labelled dataset."""
    out = check_writable(output_dir, "demo folder")
    model_dir = Path(resolve_model(FABRIC_BASE))
    print(f"[1/4] base model: the embedded fabric inpainting base ({model_dir}, see its model_card.md)")
    data = Path(data_dir) if data_dir else default_reference_data()
    if data is None:
        data = out / "procedural-data"
        if not (data / "images").is_dir():
            make_woven_dataset(data, seed=0)
        print(f"[2/4] AITEX not found: using procedural woven-fabric defects in {data}")
    else:
        print(f"[2/4] reference defects: {data}")
    cfg = load_config(DefectFillTrainConfig, DEMO_CONFIG, model=FABRIC_BASE, data_dir=str(data),
                      output_dir=str(out / "defectfill"), max_train_steps=steps,
                      overwrite=True)  # a rerun retrains the demo
    steps = cfg.max_train_steps
    cfg.checkpointing_steps = max(1, steps // 2)
    print(f"[3/4] fine-tuning DefectFill for {steps} steps (fabric base, {cfg.resolution} px)")
    lora_dir = train(cfg)
    dataset = load_reference_dataset(cfg.data_dir, mask_threshold=cfg.mask_threshold)
    preview = preview_grid(FABRIC_BASE, lora_dir, dataset, cfg, out / "preview.png")
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "logs" / "metrics.jsonl").read_text().splitlines()]

    clean = demo_clean_images(data, out / "clean", num_samples)
    print(f"[4/4] generating {num_samples} labelled samples (auto masks, 4 candidates + Low-Fidelity Selection)")
    gen = GenerateConfig(lora_dir=str(lora_dir), clean_dir=str(clean), output_dir=str(out / "dataset"),
                         num_samples=num_samples, candidates=4, num_inference_steps=10, reference_dir=str(data),
                         seed=cfg.seed)
    dataset_summary = run_generation(gen)
    summary = {"model": str(model_dir), "data": str(data), "lora": str(lora_dir), "preview": str(preview),
               "steps": steps, "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
               "dataset": str(out / "dataset"), "contact_sheet": str(out / "dataset" / "contact_sheet.png"),
               "samples": dataset_summary.get("samples"), "rejected": dataset_summary.get("rejected"),
               "boxes": dataset_summary.get("boxes")}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary
