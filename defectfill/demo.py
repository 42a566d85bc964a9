"""The embedded default job: tiny model, short DefectFill fine-tune, preview picture.

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

from defectfill.config import DefectFillTrainConfig, load_config
from defectfill.runinfo import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "defectfill" / "tiny.yaml"


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
    from defectfill.data.datasets import sample_defect_crop
    from defectfill.models.pipeline import load_inpaint_pipeline

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    grid.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def run_demo(output_dir: str | Path = "runs/demo", data_dir: str | Path | None = None, steps: int = 30) -> dict:
    """Build the tiny model, fine-tune DefectFill on reference defects, write a preview and summary."""
    from defectfill.data.datasets import load_reference_dataset
    from defectfill.data.procedural import make_woven_dataset
    from defectfill.models.tiny import make_tiny_pipeline
    from defectfill.trainer import train

    out = Path(output_dir)
    model_dir = out / "tiny-sd2-inpainting"
    if not (model_dir / "model_index.json").is_file():
        print(f"[1/3] writing a tiny random SD-2 inpainting model to {model_dir}")
        make_tiny_pipeline(model_dir)
    data = Path(data_dir) if data_dir else default_reference_data()
    if data is None:
        data = out / "procedural-data"
        if not (data / "images").is_dir():
            make_woven_dataset(data, seed=0)
        print(f"[2/3] AITEX not found: using procedural woven-fabric defects in {data}")
    else:
        print(f"[2/3] reference defects: {data}")
    cfg = load_config(DefectFillTrainConfig, TINY_CONFIG, model=str(model_dir), data_dir=str(data),
                      output_dir=str(out / "defectfill"), max_train_steps=steps,
                      checkpointing_steps=max(1, steps // 2))
    print(f"[3/3] fine-tuning DefectFill for {steps} steps (tiny model, {cfg.resolution} px)")
    lora_dir = train(cfg)
    dataset = load_reference_dataset(cfg.data_dir, mask_threshold=cfg.mask_threshold)
    preview = preview_grid(str(model_dir), lora_dir, dataset, cfg, out / "preview.png")
    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "logs" / "metrics.jsonl").read_text().splitlines()]
    summary = {"model": str(model_dir), "data": str(data), "lora": str(lora_dir), "preview": str(preview),
               "steps": steps, "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"]}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary
