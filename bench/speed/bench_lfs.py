"""Cost of Low-Fidelity Selection: K = 8 candidates + selection + composite, against plain
batched sampling of 8 images with the same pipeline, side by side in one process.

    python -m bench.speed.bench_lfs --arch sd2 --resolution 256 --steps 10   # SD-2 architecture, random weights
    python -m bench.speed.bench_lfs --arch tiny                              # quick smoke run
    python -m bench.speed.bench_lfs --arch sd2 --features                    # generation speed options on/off

Writes bench/results/lfs_<arch>.json and .md (target: ratio <= 1.10); with --features,
bench/results/lfs_features_<arch>.json and .md: the time of one generation slot (K candidates +
selection + composite) per speed option, against the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RESULTS = Path(__file__).resolve().parents[1] / "results"


def sd2_inpainting_components() -> dict:
    """SD-2-inpainting's architecture (UNet 866 M, VAE, OpenCLIP-H text encoder) with random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, use_linear_projection=True)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), in_channels=3, out_channels=3, latent_channels=4,
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                                num_hidden_layers=23, projection_dim=512, hidden_act="gelu",
                                                vocab_size=1000))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": scheduler}


def build_model(arch: str, directory: Path) -> Path:
    from diffusers import StableDiffusionInpaintPipeline
    from transformers import CLIPTokenizer

    from defectfill.diffusion.models.tiny import make_tiny_pipeline, write_tiny_tokenizer

    if arch == "tiny":
        return make_tiny_pipeline(directory)
    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(directory / "tokenizer"))
    parts = sd2_inpainting_components()
    parts["text_encoder"].resize_token_embeddings(len(tokenizer))
    StableDiffusionInpaintPipeline(**parts, tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).save_pretrained(directory)
    return directory


def untrained_lora(model_dir: Path, out: Path, resolution: int) -> Path:
    """A DefectFill LoRA folder (token + adapters, rank 8) without training: same inference cost."""
    from defectfill.diffusion.models.lora import add_lora, add_placeholder_token, save_defectfill_lora
    from defectfill.diffusion.models.pipeline import load_training_components

    parts = load_training_components(str(model_dir))
    token_id = add_placeholder_token(parts.tokenizer, parts.text_encoder, "<v*>")
    add_lora(parts.unet, parts.text_encoder, rank=8)
    meta = {"base_model": str(model_dir), "defect_prompt": "A photo of <v*>", "resolution": resolution,
            "crop_size": 256, "defect_types": ["defect"], "data_dir": None}
    return save_defectfill_lora(out, parts.unet, parts.text_encoder, "<v*>", token_id, meta)


GEN_FEATURES = ("defaults", "channels_last", "compile_unet", "bf16")
GEN_FEATURE_NOTES = {
    "defaults": "GenerateConfig defaults: fp32 weights, eager UNet",
    "channels_last": "UNet and VAE in channels_last (`channels_last: true`)",
    "compile_unet": "torch.compile of the UNet (`compile_unet: true`; the warm-up slot pays the compile)",
    "bf16": "pipeline weights in bf16 (`mixed_precision: bf16`)",
}


@contextlib.contextmanager
def generation_feature(synth, feature: str, compiled: dict):
    """Switch one generation speed option on for the body, on the synthesizer's one set of weights."""
    import torch

    from defectfill.diffusion.models.pipeline import apply_speed_options

    unet, vae = synth.pipe.unet, synth.pipe.vae
    dtype = unet.dtype
    if feature == "channels_last":
        apply_speed_options(unet, vae, channels_last=True)
    elif feature == "compile_unet":
        if "forward" not in compiled:
            compiled["forward"] = torch.compile(unet.forward)
        unet.forward = compiled["forward"]  # instance attribute: Module.__call__ runs it; del restores eager
    elif feature == "bf16":
        synth.pipe.to(dtype=torch.bfloat16)
    elif feature != "defaults":
        raise SystemExit(f"unknown feature {feature!r}; choose from {', '.join(GEN_FEATURES)}")
    try:
        yield
    finally:
        if feature == "channels_last":
            unet.to(memory_format=torch.contiguous_format)
            vae.to(memory_format=torch.contiguous_format)
        elif feature == "compile_unet":
            del unet.forward
        elif feature == "bf16":
            synth.pipe.to(dtype=dtype)


def features_table(synth, clean: np.ndarray, mask: np.ndarray, features: list[str], rounds: int,
                   warmup: int = 1, sync=lambda: None) -> dict:
    """Seconds of one generation slot per speed option, one set of weights for every row, interleaved in a
    seeded random order per round (no fixed neighbours); warm-up rounds (which pay any compile) are kept
    apart as first-slot times."""
    wanted = ["defaults"] + [f for f in features if f != "defaults"]
    unknown = sorted(set(wanted) - set(GEN_FEATURES))
    if unknown:
        raise SystemExit(f"unknown feature(s) {unknown}; choose from {', '.join(GEN_FEATURES)}")
    compiled: dict = {}

    def one_slot(f: str) -> float:
        with generation_feature(synth, f, compiled):
            sync()
            t = time.perf_counter()
            synth.synthesize(clean, mask, 7)
            sync()
            return time.perf_counter() - t

    times, first = interleaved_rounds(wanted, one_slot, rounds, warmup)
    med = {f: statistics.median(v) for f, v in times.items()}
    return {"features": wanted, "seconds": times, "median_s": med, "first_slot_s": first,
            "ratio_to_defaults": {f: med[f] / med["defaults"] for f in wanted}}


def interleaved_rounds(names: list[str], time_one, rounds: int, warmup: int) -> tuple[dict, dict]:
    """Call ``time_one(name)`` (seconds) for every name, round after round, in a seeded random order per
    round (no fixed neighbours on a noisy machine); returns ({name: timed seconds}, {name: first warm-up
    seconds})."""
    times: dict[str, list[float]] = {f: [] for f in names}
    first: dict[str, float] = {}
    for r in range(warmup + rounds):
        for f in (names[i] for i in np.random.default_rng(r).permutation(len(names))):
            dt = time_one(f)
            if r < warmup:
                first.setdefault(f, dt)
            else:
                times[f].append(dt)
            print(json.dumps({"round": r, "feature": f, "seconds": round(dt, 3)}), flush=True)
    return times, first


def write_features(record: dict, stem: Path) -> str:
    from defectfill.runinfo import atomic_write_text

    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=2))
    md = [f"# DefectFill generation, speed options on/off ({record['arch']}, {record.get('device', 'cpu')})", "",
          (f"One slot = K = {record['candidates']} candidates at {record['steps']} steps, {record['resolution']} px, "
           f"+ Low-Fidelity Selection ({record['selection']}) + composite; random weights, one set of weights for "
           f"all rows, interleaved in a seeded random order, {record['rounds']} rounds after {record['warmup']} "
           f"warm-up, {record['threads']} thread(s)."), "",
          "| option | median s | / defaults | warm-up slot s | what |", "|---|---|---|---|---|"]
    for f in record["features"]:
        md.append(f"| {f} | {record['median_s'][f]:.2f} | {record['ratio_to_defaults'][f]:.3f} | "
                  f"{record['first_slot_s'].get(f, float('nan')):.1f} | {GEN_FEATURE_NOTES[f]} |")
    md += ["", f"Command: `{record['command']}`"]
    text = "\n".join(md) + "\n"
    atomic_write_text(stem.with_suffix(".md"), text)
    return text


def summarize(times: dict[str, list[float]], meta: dict) -> tuple[dict, str]:
    """Headline: ratio of the fastest runs (least disturbed by other load on a shared machine);
    the per-repeat ratios and medians are kept beside it. Writes JSON + Markdown."""
    from defectfill.runinfo import atomic_write_text

    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    pairs = [lfs / plain for plain, lfs in zip(times["plain"], times["lfs"])]
    result = {**meta, "seconds": times, "best_seconds": best, "median_seconds": med, "paired_ratios": pairs,
              "ratio_lfs_over_plain": best["lfs"] / best["plain"], "ratio_of_medians": med["lfs"] / med["plain"],
              "target": 1.10}
    stem = RESULTS / f"lfs_{meta['arch']}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2))
    md = (f"# Low-Fidelity Selection overhead ({meta['arch']}, {meta['resolution']} px, {meta['steps']} steps, "
          f"K = {meta['candidates']})\n\n| run | best s | median s | all runs (s) |\n| --- | --- | --- | --- |\n"
          + "".join(f"| {k} | {best[k]:.2f} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in times[k])} |\n"
                    for k in times)
          + f"\nratio (K candidates + selection + composite) / (plain batched sampling of {meta['candidates']}), "
          f"fastest runs: **{result['ratio_lfs_over_plain']:.3f}** (target ≤ 1.10); per repeat: "
          f"{', '.join(f'{r:.3f}' for r in pairs)}; ratio of medians {result['ratio_of_medians']:.3f}. "
          f"Selection: {meta['selection']} ({meta['lpips'] or 'no perceptual network'}). "
          f"CPU threads: {meta['threads']}.\n")
    atomic_write_text(stem.with_suffix(".md"), md)
    return result, md


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["tiny", "sd2"], default="sd2")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--selection", default="lpips-lite0",
                   help="Low-Fidelity Selection measure: lpips-lite0 (default, pretrained EfficientNet-Lite0) | "
                        "lpips (RANDOM AlexNet offline) | l1 | l2 | ssim")
    p.add_argument("--report-only", metavar="JSON", help="re-render a saved result's report, no timing")
    p.add_argument("--model-dir", help="reuse this model folder (built there when missing)")
    p.add_argument("--features", nargs="*", metavar="OPTION",
                   help="time generation speed options on/off instead of LFS vs plain; default all of: "
                        + ", ".join(GEN_FEATURES[1:]))
    p.add_argument("--rounds", type=int, default=2, help="rounds of the --features table")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds of the --features table")
    p.add_argument("--out", help="output stem of the --features table")
    args = p.parse_args(argv)
    if args.report_only:
        saved = json.loads(Path(args.report_only).read_text())
        keys = ("arch", "resolution", "steps", "candidates", "selection", "lpips", "threads", "versions")
        result, md = summarize(saved["seconds"], {k: saved[k] for k in keys})
        print(md)
        return result

    from defectfill.config import GenerateConfig
    from defectfill.diffusion.synthesizer import DefectFillSynthesizer, model_mask
    from defectfill.generation.run import derive_seed
    from defectfill.runinfo import package_versions

    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = Path(args.model_dir) if args.model_dir else tmp / "model"
        if not (model / "model_index.json").is_file():
            build_model(args.arch, model)
        lora = untrained_lora(model, tmp / "lora", args.resolution)
        cfg = GenerateConfig(lora_dir=str(lora), clean_dir=str(tmp), candidates=args.candidates,
                             num_inference_steps=args.steps, selection=args.selection, crop_size=256,
                             resolution=args.resolution)
        synth = DefectFillSynthesizer(cfg)
        rng = np.random.default_rng(0)
        clean = rng.integers(90, 160, (256, 1024), dtype=np.uint8)  # a grayscale line-scan strip
        mask = np.zeros(clean.shape, bool)
        mask[100:140, 500:530] = True
        seeds = [derive_seed(7, k) for k in range(args.candidates)]
        r = args.resolution
        window = Image.fromarray(clean[:, 384:640]).convert("RGB").resize((r, r), Image.BICUBIC)
        pipe_mask = Image.fromarray(model_mask(mask[:, 384:640], r, synth.pipe.vae_scale_factor).astype(np.uint8) * 255)

        if args.features is not None:
            record = features_table(synth, clean, mask, args.features or list(GEN_FEATURES[1:]), args.rounds,
                                    args.warmup)
            record.update(arch=args.arch, resolution=args.resolution, steps=args.steps, candidates=args.candidates,
                          selection=args.selection, rounds=args.rounds, warmup=args.warmup,
                          threads=torch.get_num_threads(), versions=package_versions(),
                          command="python -m bench.speed.bench_lfs " + " ".join(sys.argv[1:] if argv is None else argv))
            print(write_features(record, Path(args.out) if args.out else RESULTS / f"lfs_features_{args.arch}"))
            return record

        def plain():
            synth.pipe(synth.prompt, image=window, mask_image=pipe_mask, height=r, width=r,
                       num_images_per_prompt=args.candidates, num_inference_steps=args.steps,
                       generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np")

        def with_selection():
            synth.synthesize(clean, mask, 7)

        plain()  # warm-up
        times = {"plain": [], "lfs": []}
        for _ in range(args.repeats):  # interleaved, so drift on a noisy machine hits both
            for name, fn in (("plain", plain), ("lfs", with_selection)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    meta = {"arch": args.arch, "resolution": args.resolution, "steps": args.steps, "candidates": args.candidates,
            "selection": args.selection, "lpips": synth.lpips_desc, "threads": torch.get_num_threads(),
            "versions": package_versions()}
    result, md = summarize(times, meta)
    print(md)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
