"""``defectfill fit``: fit any registered generator (class_path + init_args YAML) on reference data."""

from __future__ import annotations

import argparse

from defectfill.cli import flags


def add_parser(sub) -> None:
    p = sub.add_parser("fit", help="fit any registered generator (class_path + init_args YAML) on reference data")
    p.add_argument("--config", help="YAML: class_path, init_args, data_dir, output_dir, seed (configs/generators/)")
    p.add_argument("--generator", help="class_path: defectfill | copy_paste | multistage | dgt | r3gan | package.module:Class")
    flags.data_dir(p, help="reference data folder (images/, masks/, good/, manifest.csv)")
    flags.output_dir(p)
    p.add_argument("--seed", type=int)
    flags.overrides(p, help="an init_args value (YAML), e.g. --set max_steps=200")
    flags.renamed(p, "--data", "--data-dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import yaml

    from defectfill.config import load_config
    from defectfill.errors import ConfigError
    from defectfill.generators import FitConfig, fit_generator

    cfg = load_config(FitConfig, args.config, class_path=args.generator, data_dir=args.data_dir,
                      output_dir=args.output_dir, seed=args.seed)
    init_args = dict(cfg.init_args or {})
    for item in args.overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (an init_args key)")
        init_args[key.strip()] = yaml.safe_load(raw)
    cfg.init_args = init_args
    print(f"checkpoint: {fit_generator(cfg)}")
