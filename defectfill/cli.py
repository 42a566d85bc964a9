"""The `defectfill` command line."""

from __future__ import annotations

import argparse
import sys

from defectfill.errors import one_line_errors


def _make_tiny_model(args: argparse.Namespace) -> None:
    from defectfill.diffusion.models.tiny import make_tiny_pipeline

    print(f"tiny inpainting pipeline: {make_tiny_pipeline(args.directory)}")


def _make_procedural_data(args: argparse.Namespace) -> None:
    from defectfill.data.procedural import make_woven_dataset

    print(f"procedural woven dataset: {make_woven_dataset(args.directory, seed=args.seed)}")


def _train(args: argparse.Namespace) -> None:
    from defectfill.config import load_config
    from defectfill.diffusion.config import DefectFillTrainConfig
    from defectfill.diffusion.trainer import train

    cfg = load_config(DefectFillTrainConfig, args.config, args.overrides, overwrite=True if args.overwrite else None)
    print(f"LoRA weights: {train(cfg, resume_from_checkpoint=args.resume_from_checkpoint)}")


def _generate(args: argparse.Namespace) -> None:
    from defectfill.config import GenerateConfig, load_config
    from defectfill.errors import GenerationError
    from defectfill.generation.run import run_generation, shortfall

    cfg = load_config(GenerateConfig, args.config, args.overrides, generator=args.generator,
                      checkpoint=args.checkpoint, model=args.model, lora_dir=args.lora,
                      clean_dir=args.clean, masks=args.masks, num_samples=args.num_samples,
                      candidates=args.candidates, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      seed=args.seed, output_dir=args.output_dir, selection=args.selection,
                      defect_type=args.defect_type, reference_dir=args.reference, roi_dir=args.roi)
    summary = run_generation(cfg)
    if not summary:  # not the main process
        return
    print(f"dataset: {cfg.output_dir}  {summary}")
    short = shortfall(summary, cfg.num_samples)
    if short and not summary["samples"]:
        raise GenerationError(f"{cfg.output_dir}: {short}")
    if short:
        print(short)


def _fit(args: argparse.Namespace) -> None:
    import yaml

    from defectfill.config import load_config
    from defectfill.errors import ConfigError
    from defectfill.generators import FitConfig, fit_generator

    cfg = load_config(FitConfig, args.config, class_path=args.generator, data_dir=args.data,
                      output_dir=args.output_dir, seed=args.seed)
    init_args = dict(cfg.init_args or {})
    for item in args.overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (an init_args key)")
        init_args[key.strip()] = yaml.safe_load(raw)
    cfg.init_args = init_args
    print(f"checkpoint: {fit_generator(cfg)}")


def _pretrain_base(args: argparse.Namespace) -> None:
    from defectfill.config import load_config
    from defectfill.diffusion.base.train import PretrainBaseConfig, pretrain_base

    cfg = load_config(PretrainBaseConfig, args.config, args.overrides, data_dir=args.data, output_dir=args.output)
    out = pretrain_base(cfg, overwrite=args.overwrite)
    if not args.no_card:
        from defectfill.diffusion.base.card import write_model_card

        command = " ".join(["defectfill pretrain-base"] + [f"--{k} {v}" for k, v in
                                                           (("config", args.config), ("data", args.data),
                                                            ("output", args.output)) if v]
                           + [f"--set {o}" for o in args.overrides])
        card = write_model_card(out, cfg, command=command)
        print(f"model card: {card}")
    print(f"base model: {out}")


def _demo(args: argparse.Namespace) -> None:
    from defectfill.demo import run_demo

    run_demo(args.output_dir, data_dir=args.data_dir, steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="defectfill", description="Realistic defect images for visual inspection.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-model", help="write a tiny random SD-2 inpainting pipeline (for tests / CPU demo)")
    p.add_argument("directory")
    p.set_defaults(func=_make_tiny_model)

    p = sub.add_parser("make-procedural-data", help="write a small procedural woven-fabric reference dataset")
    p.add_argument("directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_procedural_data)

    p = sub.add_parser("train", help="fine-tune DefectFill (same as train/train_defectfill.py)")
    p.add_argument("--config", required=True)
    p.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in output_dir (its checkpoints, logs and LoRA are removed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_train)

    p = sub.add_parser("fit", help="fit any registered generator (class_path + init_args YAML) on reference data")
    p.add_argument("--config", help="YAML: class_path, init_args, data_dir, output_dir, seed (configs/generators/)")
    p.add_argument("--generator", help="class_path: defectfill | copy_paste | multistage | dgt | r3gan | package.module:Class")
    p.add_argument("--data", help="reference data folder (images/, masks/, good/, manifest.csv)")
    p.add_argument("--output-dir", "--output_dir", dest="output_dir")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an init_args value (YAML), e.g. --set max_steps=200")
    p.set_defaults(func=_fit)

    p = sub.add_parser("generate", help="generate a labelled defect dataset with a fitted generator (default DefectFill)")
    p.add_argument("--config", help="optional YAML (GenerateConfig keys); flags override it")
    p.add_argument("--generator", help="defectfill (default) | copy_paste | multistage | dgt | r3gan | package.module:Class")
    p.add_argument("--lora", help="DefectFill: LoRA folder written by training (…/lora); same as --checkpoint")
    p.add_argument("--checkpoint", help="the folder `defectfill fit` printed (a baseline's final/, DefectFill's lora/)")
    p.add_argument("--clean", help="folder of defect-free images")
    p.add_argument("--masks", help="folder of masks, or 'auto' (placed reference masks; default)")
    p.add_argument("--model", help="base model hub id or folder (default: the LoRA's base model)")
    p.add_argument("--reference", help="reference data for --masks auto (default: the LoRA's training data)")
    p.add_argument("--defect-type", help="restrict auto masks to one defect class")
    p.add_argument("--roi", help="folder of ROI masks (<clean image stem>.png, non-zero = a defect may go there)")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--candidates", type=int, help="K candidates per slot for Low-Fidelity Selection (default 8)")
    p.add_argument("--steps", type=int, help="denoising steps (default 30)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--selection", help="lpips-lite0 (default: pretrained EfficientNet-Lite0 features) | lpips | l1 | l2 | ssim")
    p.add_argument("--seed", type=int)
    p.add_argument("--output-dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_generate)

    p = sub.add_parser("detect", add_help=False,
                       help="RT-DETR on real (+ synthetic) data: build | train | eval (offline ultralytics)")
    p.add_argument("detect_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)

    p = sub.add_parser("benchmark", add_help=False,
                       help="compare generators by what they add to a downstream model (segmenter for now)")
    p.add_argument("benchmark_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=None)

    p = sub.add_parser("pretrain-base", help="train a small SD-style inpainting base from scratch on clean fabric")
    p.add_argument("--config", help="YAML of PretrainBaseConfig keys (configs/base/fabric_cpu.yaml)")
    p.add_argument("--data", help="reference data folder (good/ and images/ + masks/)")
    p.add_argument("--output", help="folder for the diffusers pipeline (training/ inside holds checkpoints)")
    p.add_argument("--overwrite", action="store_true", help="train again over a finished base in --output")
    p.add_argument("--no-card", action="store_true", help="skip the model card measurements")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_pretrain_base)

    p = sub.add_parser("demo", help="the embedded default: DefectFill fine-tuned on the embedded fabric base")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--data-dir", default=None, help="reference data (default: ../shared/data/aitex if present)")
    p.add_argument("--steps", type=int, default=None, help="fine-tune steps (default: configs/defectfill/fabric_base.yaml)")
    p.set_defaults(func=_demo)
    return parser


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["detect"]:  # its own sub-commands and help
        from defectfill.detect.rtdetr import detect_main

        return detect_main(argv[1:])
    if argv[:1] == ["benchmark"]:
        from defectfill.benchmark.runner import benchmark_main

        return benchmark_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
