"""What the paper recipe costs on this machine: training samples/s, peak memory and fraction of the
device's bf16 peak at 512 px batch 4, generation throughput with K = 8 Low-Fidelity Selection at 30
steps, and the projected wall time of the 2000-step recipe.

    python -m bench.speed.bench_gpu --arch sd2                              # on a GPU (bf16 autocast)
    python -m bench.speed.bench_gpu --arch sd2 --channels-last --compile --features   # + each speed option on/off
                                                                  # (training: <out>_features, generation: <out>_gen_features)
    python -m bench.speed.bench_gpu --arch tiny --resolution 64 --batch 1 --train-steps 2 --gen-slots 1 --steps 2  # CPU check

The SD-2-inpainting architecture is built with random weights (no download): speed and memory do
not depend on the weights. Writes bench/results/gpu_<device>_<arch>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"
# dense bf16 tensor-core peak (TFLOPS) by device-name substring; --peak-tflops overrides
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "4090": 165.0,
                    "A10G": 70.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["tiny", "sd2"], default="sd2")
    p.add_argument("--model-dir", help="reuse this model folder (built there when missing)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=5, help="timed steps after one warm-up")
    p.add_argument("--recipe-steps", type=int, default=2000)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--channels-last", action="store_true", help="trainer option channels_last")
    p.add_argument("--compile", action="store_true", help="trainer option compile_unet (warm-up pays the compile)")
    p.add_argument("--features", nargs="*", metavar="FEATURE",
                   help="also time each training speed feature on/off on this device (bench_train_step.py "
                        "--features), at --resolution and --batch, fp32 weights, written to <out>_features; and "
                        "generation's options (bench_lfs.py --features) to <out>_gen_features")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the --features table")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds of the --features table")
    p.add_argument("--gen-slots", type=int, default=3, help="timed generation slots after one warm-up")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--steps", type=int, default=30, help="denoising steps per generation")
    p.add_argument("--peak-tflops", type=float, help="the device's bf16 peak (default: by device name)")
    p.add_argument("--out", help="output stem")
    return p.parse_args(argv)


def device_info() -> tuple[torch.device, str, float | None]:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        return torch.device("cuda"), name, peak
    return torch.device("cpu"), "cpu", None


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: this process's peak RSS


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_numbers(args, model: str, device: torch.device) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from bench.speed.bench_train_step import DefectFillStep, batch_for

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    step = DefectFillStep(model, args.resolution, gradient_checkpointing=args.gradient_checkpointing,
                          device=device, weight_dtype=dtype, channels_last=args.channels_last,
                          compile_unet=args.compile)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    counter = FlopCounterMode(display=False)
    with counter:  # also the warm-up
        step(batch_for(args.resolution, args.batch))
    flops = int(counter.get_total_flops())
    times = []
    for i in range(args.train_steps):
        b = batch_for(args.resolution, args.batch, seed=i + 1)
        sync(device)
        t = time.perf_counter()
        step(b)
        sync(device)
        times.append(time.perf_counter() - t)
    s = float(np.median(times))
    return {"step_s": s, "step_seconds": times, "examples_per_s": args.batch / s,
            "unet_samples_per_s": 2 * args.batch / s, "flops_per_step": flops, "achieved_tflops": flops / s / 1e12,
            "peak_memory_gib": peak_memory_gib(device), "mixed_precision": str(dtype).replace("torch.", ""),
            "projected_recipe_minutes": args.recipe_steps * s / 60}


def split_features(named: list[str] | None) -> tuple[list[str] | None, list[str] | None]:
    """(training features, generation options) to time for ``--features``: all of both when it is given
    empty, else the named ones of each (None: no table of that kind)."""
    from bench.speed.bench_lfs import GEN_FEATURES
    from bench.speed.bench_train_step import FEATURES

    if named is None:
        return None, None
    if not named:
        return list(FEATURES[1:]), list(GEN_FEATURES[1:])
    unknown = sorted(set(named) - set(FEATURES) - set(GEN_FEATURES))
    if unknown:
        raise SystemExit(f"unknown feature(s) {unknown}; training: {', '.join(FEATURES[1:])}; "
                         f"generation: {', '.join(GEN_FEATURES[1:])}")
    train = [f for f in named if f in FEATURES and f != "defaults"]
    gen = [f for f in named if f in GEN_FEATURES and f != "defaults"]
    return train or None, gen or None


def generation_numbers(args, model: str, device: torch.device) -> dict:
    from bench.speed.bench_lfs import untrained_lora
    from defectfill.config import GenerateConfig
    from defectfill.diffusion.synthesizer import DefectFillSynthesizer

    with tempfile.TemporaryDirectory() as tmp:
        lora = untrained_lora(Path(model), Path(tmp) / "lora", args.resolution)
        cfg = GenerateConfig(lora_dir=str(lora), clean_dir=tmp, candidates=args.candidates,
                             num_inference_steps=args.steps, crop_size=256, resolution=args.resolution,
                             mixed_precision="bf16" if device.type == "cuda" else "no")
        synth = DefectFillSynthesizer(cfg, device=device)
        rng = np.random.default_rng(0)
        clean = rng.integers(90, 160, (256, 1024), dtype=np.uint8)
        mask = np.zeros(clean.shape, bool)
        mask[100:140, 500:530] = True
        synth.synthesize(clean, mask, 0)  # warm-up
        times = []
        for i in range(args.gen_slots):
            sync(device)
            t = time.perf_counter()
            synth.synthesize(clean, mask, i + 1)
            sync(device)
            times.append(time.perf_counter() - t)
        features = None
        wanted = split_features(args.features)[1]
        if wanted is not None:  # generation's speed options on the same weights (bf16 is already on)
            from bench.speed.bench_lfs import features_table

            wanted = [f for f in wanted if not (f == "bf16" and cfg.mixed_precision == "bf16")]
            features = features_table(synth, clean, mask, wanted, args.rounds, args.warmup,
                                      sync=lambda: sync(device))
    s = float(np.median(times))
    return {"slot_s": s, "slot_seconds": times, "images_per_s": 1 / s, "candidates_per_s": args.candidates / s,
            "candidates": args.candidates, "steps": args.steps, "features": features}


def main(args) -> dict:
    from bench.speed.bench_lfs import build_model

    split_features(args.features)  # an unknown name fails here, before any model is built
    device, name, peak = device_info()
    peak = args.peak_tflops or peak
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_dir or str(Path(tmp) / "model")
        if not (Path(model) / "model_index.json").is_file():
            build_model(args.arch, Path(model))
        train = train_numbers(args, model, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        gen = generation_numbers(args, model, device)
        features = None
        train_features = split_features(args.features)[0]
        if train_features is not None:
            from bench.speed.bench_train_step import features_table

            if device.type == "cuda":
                torch.cuda.empty_cache()
            features = features_table(argparse.Namespace(**{**vars(args), "features": train_features}), model, device)
    result = {"device": name, "arch": args.arch, "resolution": args.resolution, "batch": args.batch,
              "gradient_checkpointing": args.gradient_checkpointing, "channels_last": args.channels_last,
              "compile_unet": args.compile, "bf16_peak_tflops": peak,
              "fraction_of_bf16_peak": train["achieved_tflops"] / peak if peak else None,
              "train": train, "generate": gen, "torch": torch.__version__,
              "command": "python -m bench.speed.bench_gpu " + " ".join(sys.argv[1:])}
    tag = "cpu" if device.type == "cpu" else name.replace(" ", "_").lower()
    stem = Path(args.out) if args.out else RESULTS / f"gpu_{tag}_{args.arch}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    frac = f"{result['fraction_of_bf16_peak']:.1%}" if result["fraction_of_bf16_peak"] is not None else "n/a"
    md = [f"# DefectFill cost on {name} ({args.arch})", "",
          f"Training, {args.resolution} px, batch {args.batch} ({2 * args.batch} UNet samples per step), "
          f"{train['mixed_precision']}, gradient checkpointing {args.gradient_checkpointing}, channels_last "
          f"{args.channels_last}, compiled UNet {args.compile}:", "",
          "| step s | examples/s | peak memory GiB | achieved TFLOPS | of bf16 peak | projected "
          f"{args.recipe_steps}-step recipe |", "|---|---|---|---|---|---|",
          f"| {train['step_s']:.3f} | {train['examples_per_s']:.2f} | {train['peak_memory_gib']:.2f} | "
          f"{train['achieved_tflops']:.2f} | {frac} | {train['projected_recipe_minutes']:.1f} min |", "",
          f"Generation: K = {args.candidates} candidates + Low-Fidelity Selection + composite, {args.steps} steps: "
          f"{gen['slot_s']:.2f} s per image ({gen['images_per_s']:.3f} images/s).", "",
          f"Command: `{result['command']}`"]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    if features is not None:
        from bench.speed.bench_train_step import write_features

        features.update(arch=args.arch, resolution=args.resolution, batch=args.batch, rounds=args.rounds,
                        warmup=args.warmup, threads=torch.get_num_threads(), device=name, torch=torch.__version__,
                        command=result["command"])
        write_features(args, features, stem.with_name(stem.name + "_features"))
        result["features"] = features
    if gen["features"] is not None:
        from bench.speed import bench_lfs

        gen["features"].update(arch=args.arch, resolution=args.resolution, steps=args.steps,
                               candidates=args.candidates, selection="lpips-lite0", rounds=args.rounds,
                               warmup=args.warmup, threads=torch.get_num_threads(), device=name,
                               command=result["command"])
        bench_lfs.write_features(gen["features"], stem.with_name(stem.name + "_gen_features"))
    return result


if __name__ == "__main__":
    main(parse_args())
