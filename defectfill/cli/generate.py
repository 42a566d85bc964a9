"""``defectfill generate``: a labelled defect dataset from a fitted generator (default DefectFill)."""

from __future__ import annotations

import argparse

from defectfill.cli import flags


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate a labelled defect dataset with a fitted generator (default DefectFill)")
    p.add_argument("--config", help="optional YAML (GenerateConfig keys); flags override it")
    p.add_argument("--generator", help="defectfill (default) | copy_paste | multistage | dgt | r3gan | package.module:Class")
    p.add_argument("--lora", help="DefectFill: LoRA folder written by training (…/lora); same as --checkpoint")
    p.add_argument("--checkpoint", help="the folder `defectfill fit` printed (a baseline's final/, DefectFill's lora/)")
    flags.clean_dir(p)
    p.add_argument("--masks", help="folder of masks, or 'auto' (placed reference masks; default)")
    p.add_argument("--model", help="base model hub id or folder (default: the LoRA's base model)")
    flags.data_dir(p, help="reference data for --masks auto (default: the LoRA's training data)")
    p.add_argument("--defect-type", help="restrict auto masks to one defect class")
    p.add_argument("--roi-dir", "--roi_dir", dest="roi_dir",
                   help="folder of ROI masks (<clean image stem>.png, non-zero = a defect may go there)")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--candidates", type=int, help="K candidates per slot for Low-Fidelity Selection (default 8)")
    p.add_argument("--steps", type=int, help="denoising steps (default 30)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--selection", help="lpips-lite0 (default: pretrained EfficientNet-Lite0 features) | lpips | l1 | l2 | ssim")
    p.add_argument("--seed", type=int)
    flags.output_dir(p)
    flags.overrides(p)
    flags.renamed(p, "--clean", "--clean-dir")
    flags.renamed(p, "--reference", "--data-dir")
    flags.renamed(p, "--roi", "--roi-dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from defectfill.config import GenerateConfig, load_config
    from defectfill.errors import GenerationError
    from defectfill.generation.run import run_generation, shortfall

    cfg = load_config(GenerateConfig, args.config, args.overrides, generator=args.generator,
                      checkpoint=args.checkpoint, model=args.model, lora_dir=args.lora,
                      clean_dir=args.clean_dir, masks=args.masks, num_samples=args.num_samples,
                      candidates=args.candidates, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      seed=args.seed, output_dir=args.output_dir, selection=args.selection,
                      defect_type=args.defect_type, reference_dir=args.data_dir, roi_dir=args.roi_dir)
    summary = run_generation(cfg)
    if not summary:  # not the main process
        return
    print(f"dataset: {cfg.output_dir}  {summary}")
    short = shortfall(summary, cfg.num_samples)
    if short and not summary["samples"]:
        raise GenerationError(f"{cfg.output_dir}: {short}")
    if short:
        print(short)
