"""Cost of one DefectFill training step against a plain diffusers inpainting LoRA step, side by side.

DefectFill's step (`defectfill.trainer`: both branches in one UNet pass of 2B samples, attention
capture, defect + object + attention losses, LoRA on UNet and text encoder, the [V*] embedding, the
two prompts encoded in one text-encoder call, tokenised once) against the step of diffusers'
`train_dreambooth_inpaint_lora.py` over the SAME number of UNet samples (2B): VAE encodes of the
image and the masked image, noise, a text-encoder forward without gradients, UNet LoRA forward,
MSE to the target, backward, AdamW. Both on the same architecture with random weights, interleaved
in one process (one step of each per round, after warm-up), so machine noise hits both alike. FLOPs
of one step of each come from torch's `FlopCounterMode`.

    python bench/bench_train_step.py --arch sd2 --resolution 256 --rounds 3     # SD-2-inpainting architecture
    python bench/bench_train_step.py --arch tiny --rounds 2                      # smoke run

Writes bench/results/train_step_<arch>.json and .md. Target: time ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["tiny", "sd2"], default="sd2")
    p.add_argument("--model-dir", help="reuse this model folder (else one is built in a temp folder)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=1, help="examples per DefectFill step (2x UNet samples)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=None, help="output stem (default bench/results/train_step_<arch>)")
    p.add_argument("--memory", action="store_true",
                   help="peak RSS of one DefectFill step at --memory-resolution, batch 1 and 4, with and without "
                        "gradient checkpointing, each in a fresh process (instead of the timing)")
    p.add_argument("--memory-resolution", type=int, default=512)
    p.add_argument("--memory-limit-gib", type=float, default=21.0, help="address-space cap of each child")
    p.add_argument("--memory-child", nargs=2, type=int, metavar=("BATCH", "CHECKPOINTING"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def batch_for(resolution: int, batch: int, seed: int = 0):
    """A fixed batch: random images in [-1, 1], an ellipse-ish defect mask, random object boxes."""
    from defectfill.trainer import Batch

    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1
    yy, xx = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
    r = resolution / 2
    mask = (((yy - r) / (0.3 * r)) ** 2 + ((xx - r) / (0.12 * r)) ** 2 <= 1).float()
    masks = mask.expand(batch, 1, -1, -1).clone()
    boxes = torch.zeros_like(masks)
    boxes[..., resolution // 8: resolution // 2, resolution // 4: 3 * resolution // 4] = 1
    return Batch(pixels, masks, boxes, g)


class DefectFillStep:
    """The trainer's own setup and `compute_losses`, + backward and AdamW."""

    def __init__(self, model: str, resolution: int, gradient_checkpointing: bool = False,
                 device: torch.device | str = "cpu", weight_dtype: torch.dtype = torch.float32):
        from defectfill.config import DefectFillTrainConfig
        from defectfill.trainer import build_optimizer, prepare_models, tokenize_prompts

        self.cfg = DefectFillTrainConfig(model=model, resolution=resolution, crop_size=resolution,
                                         gradient_checkpointing=gradient_checkpointing)
        self.device, self.dtype = torch.device(device), weight_dtype
        self.s = prepare_models(self.cfg, model, self.device, weight_dtype)
        self.opt = build_optimizer(self.cfg, self.s.unet, self.s.text_encoder, self.s.placeholder)
        ids, self.token_index = tokenize_prompts(self.s.tokenizer, self.cfg, self.s.token_id)
        self.prompt_ids = ids.to(self.device)

    def __call__(self, batch) -> float:
        from defectfill.trainer import compute_losses

        s = self.s
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = compute_losses(s.unet, s.text_encoder, s.vae, s.noise_scheduler, s.store, self.prompt_ids,
                                 self.token_index, batch, self.cfg, self.dtype)
        out["loss"].backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(out["loss"].detach())


class PlainInpaintLoRAStep:
    """diffusers' `train_dreambooth_inpaint_lora.py` step: UNet LoRA (rank 8, attention projections),
    frozen text encoder, MSE on the noise / velocity target."""

    def __init__(self, model: str, rank: int = 8):
        from peft import LoraConfig

        from defectfill.models.pipeline import load_training_components

        p = load_training_components(model)
        self.tokenizer, self.text_encoder, self.vae, self.unet, self.sched = (p.tokenizer, p.text_encoder, p.vae,
                                                                              p.unet, p.noise_scheduler)
        for m in (self.text_encoder, self.vae, self.unet):
            m.requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                         target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        params = [q for q in self.unet.parameters() if q.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-4)
        self.prompt = "a photo of sks defect"

    def __call__(self, batch) -> float:
        import torch.nn.functional as F

        n = 2 * batch.pixel_values.shape[0]  # the same number of UNet samples as DefectFill's two branches
        pixels = torch.cat([batch.pixel_values, batch.pixel_values])
        masks = torch.cat([batch.masks, batch.box_masks])
        gen = batch.generator
        with torch.no_grad():
            scale = self.vae.config.scaling_factor
            latents = self.vae.encode(pixels).latent_dist.sample(gen) * scale
            masked = self.vae.encode(pixels * (1 - masks)).latent_dist.sample(gen) * scale
            ids = self.tokenizer([self.prompt] * n, padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
            text = self.text_encoder(ids)[0]
        m = F.interpolate(masks, size=latents.shape[-2:])
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (n,), generator=gen)
        noisy = self.sched.add_noise(latents, noise, t)
        pred = self.unet(torch.cat([noisy, m, masked], dim=1), t, text).sample
        target = self.sched.get_velocity(latents, noise, t) if self.sched.config.prediction_type == "v_prediction" \
            else noise
        loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def step_flops(step, batch) -> int:
    """Total FLOPs torch counts for one call of `step` (forward + backward + optimiser)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return int(counter.get_total_flops())


def memory_child(model: str, resolution: int, batch: int, checkpointing: bool) -> None:
    """One DefectFill step in this (fresh) process; prints its peak RSS (ru_maxrss) as JSON."""
    import resource

    step = DefectFillStep(model, resolution, gradient_checkpointing=checkpointing)
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    step(batch_for(resolution, batch))
    print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "after_load_kib": after_load, "step_s": time.perf_counter() - t}), flush=True)


def memory_table(args, model: str) -> list[dict]:
    """Peak RSS of a DefectFill step per (batch, checkpointing), each in a fresh `python` (exec'd, not
    forked from a process holding weights, so its ru_maxrss is its own), capped at --memory-limit-gib."""
    import resource
    import subprocess

    cap = int(args.memory_limit_gib * 2**30)
    rows = []
    for batch, ckpt in ((1, 0), (1, 1), (4, 0), (4, 1)):
        cmd = [sys.executable, __file__, "--arch", args.arch, "--model-dir", model, "--resolution",
               str(args.memory_resolution), "--memory-child", str(batch), str(ckpt)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
        row = {"resolution": args.memory_resolution, "batch": batch, "gradient_checkpointing": bool(ckpt),
               "wall_s": time.perf_counter() - t}
        last = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode == 0 and last:
            got = json.loads(last[-1])
            row.update(peak_rss_gib=got["peak_rss_kib"] / 2**20, after_load_gib=got["after_load_kib"] / 2**20,
                       step_s=got["step_s"])
        else:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            row["error"] = f"exit {proc.returncode}: {tail[:200]} (address space capped at {args.memory_limit_gib} GiB)"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(args) -> dict:
    from bench_lfs import build_model

    if args.memory_child:
        return memory_child(args.model_dir, args.resolution, args.memory_child[0], bool(args.memory_child[1]))
    if args.memory:
        if not args.model_dir:
            raise SystemExit("--memory needs --model-dir (built there when missing)")
        if not (Path(args.model_dir) / "model_index.json").is_file():
            build_model(args.arch, Path(args.model_dir))
        rows = memory_table(args, args.model_dir)
        stem = Path(args.out) if args.out else RESULTS / f"train_step_memory_{args.arch}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        record = {"arch": args.arch, "rows": rows, "method": "ru_maxrss of a fresh exec'd process (CPU RSS)",
                  "command": "python bench/bench_train_step.py " + " ".join(sys.argv[1:])}
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
        md = [f"# Peak memory of one DefectFill training step ({args.arch}, CPU RSS)", "",
              "| resolution | batch | gradient checkpointing | peak RSS GiB | after load GiB | step s |",
              "|---|---|---|---|---|---|"]
        for r in rows:
            md.append(f"| {r['resolution']} | {r['batch']} | {r['gradient_checkpointing']} | "
                      + (f"{r['peak_rss_gib']:.2f} | {r['after_load_gib']:.2f} | {r['step_s']:.1f} |" if "error" not in r
                         else f"failed: {r['error']} | | |"))
        md += ["", f"Command: `{record['command']}`"]
        stem.with_suffix(".md").write_text("\n".join(md) + "\n")
        return record

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_dir or str(build_model(args.arch, Path(tmp) / "model"))
        if args.model_dir and not (Path(model) / "model_index.json").is_file():
            build_model(args.arch, Path(model))
        t0 = time.perf_counter()
        steps = {"defectfill": DefectFillStep(model, args.resolution), "plain_inpaint_lora": PlainInpaintLoRAStep(model)}
        load_s = time.perf_counter() - t0
        batch = batch_for(args.resolution, args.batch)
        flops = {k: step_flops(fn, batch) for k, fn in steps.items()}  # also a warm-up
        times: dict[str, list[float]] = {k: [] for k in steps}
        for r in range(args.warmup + args.rounds):
            order = list(steps) if r % 2 == 0 else list(reversed(steps))  # alternate who goes first
            for k in order:
                b = batch_for(args.resolution, args.batch, seed=r)
                t = time.perf_counter()
                steps[k](b)
                if r >= args.warmup:
                    times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["defectfill"] / med["plain_inpaint_lora"]
    result = {"arch": args.arch, "resolution": args.resolution, "batch": args.batch,
              "unet_samples_per_step": 2 * args.batch, "rounds": args.rounds, "warmup": args.warmup,
              "threads": torch.get_num_threads(), "seconds": times, "median_s": med, "ratio": ratio,
              "target_ratio": 1.10, "flops": flops, "flop_ratio": flops["defectfill"] / flops["plain_inpaint_lora"],
              "load_seconds": load_s, "torch": torch.__version__,
              "command": "python bench/bench_train_step.py " + " ".join(sys.argv[1:])}
    stem = Path(args.out) if args.out else RESULTS / f"train_step_{args.arch}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = [f"# DefectFill training step vs a plain diffusers inpainting LoRA step ({args.arch}, CPU)", "",
          f"{args.resolution} px, {args.batch} example(s) = {2 * args.batch} UNet samples per step for both, random "
          f"weights, interleaved, {args.rounds} rounds after {args.warmup} warm-up, {torch.get_num_threads()} "
          "thread(s).", "",
          "| step | median s | FLOPs (FlopCounterMode) |", "|---|---|---|"]
    md += [f"| {k} | {med[k]:.3f} | {flops[k] / 1e12:.3f} T |" for k in steps]
    md += ["", f"Time ratio DefectFill / plain: **{ratio:.3f}** (target <= 1.10); FLOP ratio "
               f"{result['flop_ratio']:.3f}.", "", f"Command: `{result['command']}`"]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(json.dumps({k: result[k] for k in ("median_s", "ratio", "flop_ratio")}), flush=True)
    return result


if __name__ == "__main__":
    main(parse_args())
