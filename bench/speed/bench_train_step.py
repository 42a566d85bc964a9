"""Cost of one DefectFill training step against a plain diffusers inpainting LoRA step, side by side.

DefectFill's step (`defectfill.diffusion.trainer`: both branches in one UNet pass of 2B samples, attention
capture, defect + object + attention losses, LoRA on UNet and text encoder, the [V*] embedding, the
two prompts encoded in one text-encoder call, tokenised once) against the step of diffusers'
`train_dreambooth_inpaint_lora.py` over the SAME number of UNet samples (2B): VAE encodes of the
image and the masked image, noise, a text-encoder forward without gradients, UNet LoRA forward,
MSE to the target, backward, AdamW. Both on the same architecture with random weights, interleaved
in one process (one step of each per round, after warm-up), so machine noise hits both alike. FLOPs
of one step of each come from torch's `FlopCounterMode`.

    python -m bench.speed.bench_train_step --arch sd2 --resolution 256 --rounds 3     # SD-2-inpainting architecture
    python -m bench.speed.bench_train_step --arch tiny --rounds 2                      # smoke run

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

RESULTS = Path(__file__).resolve().parents[1] / "results"


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
    p.add_argument("--features", nargs="*", metavar="FEATURE",
                   help="time the DefectFill step with each speed feature on/off against the defaults, interleaved "
                        f"(instead of the comparison with plain diffusers); default all of: {', '.join(FEATURES[1:])}")
    p.add_argument("--memory-dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: frozen weights in bf16 and bf16 autocast, as the trainer runs with mixed_precision bf16")
    p.add_argument("--memory-rows", nargs="+", default=["1:0", "1:1", "4:0", "4:1"], metavar="BATCH:CKPT",
                   help="(batch, gradient checkpointing 0/1) pairs of the memory table")
    p.add_argument("--count-flops", action="store_true",
                   help="FLOPs of one DefectFill step at --resolution, batch 1, with and without gradient "
                        "checkpointing, and the 2000-step batch-4 recipe's projected time on a GPU at given "
                        "fractions of its bf16 peak (instead of the timing)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak for --count-flops (H100/H200)")
    p.add_argument("--memory-child", nargs=2, type=int, metavar=("BATCH", "CHECKPOINTING"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def batch_for(resolution: int, batch: int, seed: int = 0):
    """A fixed batch: random images in [-1, 1], an ellipse-ish defect mask, random object boxes."""
    from defectfill.diffusion.trainer import Batch

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
                 device: torch.device | str = "cpu", weight_dtype: torch.dtype = torch.float32, **config):
        from defectfill.diffusion.config import DefectFillTrainConfig
        from defectfill.diffusion.trainer import build_optimizer, prepare_models, tokenize_prompts

        self.cfg = DefectFillTrainConfig(model=model, resolution=resolution, crop_size=resolution,
                                         gradient_checkpointing=gradient_checkpointing, **config)
        self.device, self.dtype = torch.device(device), weight_dtype
        self.s = prepare_models(self.cfg, model, self.device, weight_dtype)
        self.opt = build_optimizer(self.cfg, self.s.unet, self.s.text_encoder, self.s.placeholder)
        ids, self.token_index = tokenize_prompts(self.s.tokenizer, self.cfg, self.s.token_id)
        self.prompt_ids = ids.to(self.device)

        self.latent_cache = None
        self._compiled_unet = None

    def __call__(self, batch, feature: str | None = None) -> float:
        """One step; `feature` switches one speed feature against the trainer's defaults (FEATURES)."""
        from defectfill.diffusion.trainer import ReferenceLatentCache, compute_losses, tokenize_prompts

        s, ids, unet, cache = self.s, self.prompt_ids, self.s.unet, None
        autocast = self.dtype if self.dtype != torch.float32 else None
        if feature == "cached_reference_latents":
            if self.latent_cache is None:
                self.latent_cache = ReferenceLatentCache()
            cache = self.latent_cache
        elif feature == "no_fused_text_encoding":  # one text-encoder row per UNet sample
            b = batch.pixel_values.shape[0]
            ids = ids[[0] * b + [1] * b]
        elif feature == "retokenise_each_step":
            ids = tokenize_prompts(s.tokenizer, self.cfg, s.token_id)[0].to(self.device)
        elif feature == "compile_unet":
            if self._compiled_unet is None:
                self._compiled_unet = torch.compile(s.unet)
            unet = self._compiled_unet
        elif feature == "bf16_autocast":
            autocast = torch.bfloat16
        with torch.autocast(self.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            out = compute_losses(unet, s.text_encoder, s.vae, s.noise_scheduler, s.store, ids,
                                 self.token_index, batch, self.cfg, self.dtype, cache)
        out["loss"].backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(out["loss"].detach())

    def memory_format(self, fmt: torch.memory_format) -> None:
        self.s.unet.to(memory_format=fmt)
        self.s.vae.to(memory_format=fmt)


# Each measured against the trainer's defaults ("defaults": fused prompt encoding, tokenised once, no
# latent cache, contiguous tensors, eager, fp32); the first two are defaults, measured switched off.
FEATURES = ("defaults", "cached_reference_latents", "channels_last", "compile_unet", "no_fused_text_encoding",
            "retokenise_each_step", "bf16_autocast")


class PlainInpaintLoRAStep:
    """diffusers' `train_dreambooth_inpaint_lora.py` step: UNet LoRA (rank 8, attention projections),
    frozen text encoder, MSE on the noise / velocity target."""

    def __init__(self, model: str, rank: int = 8):
        from peft import LoraConfig

        from defectfill.diffusion.models.pipeline import load_training_components

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


class TensorMemoryPeak:
    """Peak bytes of live tensor storages during a block: what a GPU's `max_memory_allocated` would
    report, up to allocator rounding. `resident` (weights, optimiser state) counts from the start;
    every storage an op creates inside the block (forward, backward, optimiser) counts until freed.
    Hand-written because torch's MemTracker requires each root module to run once per iteration
    and every parameter to be trainable (the step encodes twice with the frozen VAE)."""

    def __init__(self, *resident: torch.nn.Module | torch.optim.Optimizer):
        tensors = [t for m in resident if isinstance(m, torch.nn.Module) for t in (*m.parameters(), *m.buffers())]
        tensors += [v for o in resident if isinstance(o, torch.optim.Optimizer) for st in o.state.values()
                    for v in st.values() if torch.is_tensor(v)]
        self.live = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        self.resident = self.current = self.peak = sum(self.live.values())

    def _free(self, ptr: int) -> None:
        self.current -= self.live.pop(ptr, 0)

    def __enter__(self):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and not t.is_meta:
                        st = t.untyped_storage()
                        ptr = st.data_ptr()
                        if ptr and ptr not in tracker.live:
                            tracker.live[ptr] = st.nbytes()
                            tracker.current += st.nbytes()
                            tracker.peak = max(tracker.peak, tracker.current)
                            weakref.finalize(st, tracker._free, ptr)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


def memory_child(model: str, resolution: int, batch: int, checkpointing: bool, dtype: str = "fp32") -> None:
    """One DefectFill step in this (fresh) process; prints as JSON its peak RSS (ru_maxrss, over the
    whole process), the peak RSS of the step alone (VmHWM reset after loading) and the peak tensor
    memory of the step (`TensorMemoryPeak`: resident weights + optimiser, and the step's own)."""
    import resource

    from defectfill.benchmark.worker import proc_status_kib

    step = DefectFillStep(model, resolution, gradient_checkpointing=checkpointing,
                          weight_dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_after_load = proc_status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
    except OSError:
        pass
    b = batch_for(resolution, batch)
    tracker = TensorMemoryPeak(step.s.unet, step.s.text_encoder, step.s.vae, step.opt)
    t = time.perf_counter()
    with tracker:
        step(b)
    step_s = time.perf_counter() - t
    peak = {"Total": tracker.peak, "resident": tracker.resident, "step": tracker.peak - tracker.resident}
    print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "after_load_kib": after_load, "rss_after_load_kib": rss_after_load,
                      "step_peak_rss_kib": proc_status_kib("VmHWM"), "tensor_peak_bytes": {k: int(v) for k, v in peak.items()},
                      "step_s": step_s}), flush=True)


def memory_table(args, model: str) -> list[dict]:
    """Peak RSS of a DefectFill step per (batch, checkpointing), each in a fresh `python` (exec'd, not
    forked from a process holding weights, so its ru_maxrss is its own), capped at --memory-limit-gib."""
    import resource
    import subprocess

    cap = int(args.memory_limit_gib * 2**30)
    rows = []
    for batch, ckpt in (tuple(int(v) for v in row.split(":")) for row in args.memory_rows):
        cmd = [sys.executable, "-m", "bench.speed.bench_train_step", "--arch", args.arch, "--model-dir", model, "--resolution",
               str(args.memory_resolution), "--memory-dtype", args.memory_dtype, "--memory-child", str(batch), str(ckpt)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[2],
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
        row = {"resolution": args.memory_resolution, "batch": batch, "gradient_checkpointing": bool(ckpt),
               "dtype": args.memory_dtype,
               "wall_s": time.perf_counter() - t}
        last = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode == 0 and last:
            got = json.loads(last[-1])
            row.update(peak_rss_gib=got["peak_rss_kib"] / 2**20, after_load_gib=got["after_load_kib"] / 2**20,
                       step_s=got["step_s"], step_peak_rss_gib=got["step_peak_rss_kib"] / 2**20,
                       rss_after_load_gib=got["rss_after_load_kib"] / 2**20,
                       tensor_peak_gib={k: v / 2**30 for k, v in got["tensor_peak_bytes"].items()})
        else:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            row["error"] = f"exit {proc.returncode}: {tail[:200]} (address space capped at {args.memory_limit_gib} GiB)"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def features_table(args, model: str, device: torch.device | str = "cpu") -> dict:
    """Median step time of the DefectFill step per speed feature, all sharing one set of (fp32)
    weights and interleaved per round in a seeded random order, after a warm-up round that also pays
    any compile."""
    from bench.speed.bench_lfs import interleaved_rounds

    wanted = ["defaults"] + [f for f in (args.features or FEATURES[1:]) if f != "defaults"]
    unknown = sorted(set(wanted) - set(FEATURES))
    if unknown:
        raise SystemExit(f"unknown feature(s) {unknown}; choose from {', '.join(FEATURES)}")
    device = torch.device(device)
    step = DefectFillStep(model, args.resolution, device=device)
    crop_keys = [("bench", i) for i in range(args.batch)]  # the same crops (seed 0) every round: keys are true

    def one_step(f: str) -> float:
        b = batch_for(args.resolution, args.batch, seed=0)
        b.crop_keys = crop_keys
        if f == "channels_last":
            step.memory_format(torch.channels_last)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step(b, None if f in ("defaults", "channels_last") else f)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        if f == "channels_last":
            step.memory_format(torch.contiguous_format)
        return dt

    times, first = interleaved_rounds(wanted, one_step, args.rounds, args.warmup)
    med = {f: statistics.median(v) for f, v in times.items()}
    return {"features": wanted, "seconds": times, "median_s": med, "first_step_s": first,
            "ratio_to_defaults": {f: med[f] / med["defaults"] for f in wanted}}


FEATURE_NOTES = {
    "defaults": "trainer defaults: prompts tokenised once, both encoded in one text-encoder call, eager, fp32",
    "cached_reference_latents": "VAE posteriors of the crop and defect-masked crop cached (steady state: every "
                                "crop seen); used when every reference fits in one crop",
    "channels_last": "UNet and VAE in channels_last",
    "compile_unet": "torch.compile of the UNet (first step pays the compile)",
    "no_fused_text_encoding": "OFF: one text-encoder row per UNet sample instead of the two prompts once",
    "retokenise_each_step": "OFF: both prompts tokenised again every step",
    "bf16_autocast": "bf16 autocast",
}


def write_features(args, record: dict, stem: Path | None = None) -> None:
    stem = stem or (Path(args.out) if args.out else RESULTS / f"train_step_features_{args.arch}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    md = [f"# DefectFill training step, speed features on/off ({args.arch}, {record['device']})", "",
          (f"{args.resolution} px, {args.batch} example(s) = {2 * args.batch} UNet samples per step, random weights, "
           f"one set of weights for all rows, interleaved, {args.rounds} rounds after {args.warmup} warm-up, "
           f"{record['threads']} thread(s)."), "",
          "| feature | median s | / defaults | first step s | what |", "|---|---|---|---|---|"]
    for f in record["features"]:
        md.append(f"| {f} | {record['median_s'][f]:.3f} | {record['ratio_to_defaults'][f]:.3f} | "
                  f"{record['first_step_s'].get(f, float('nan')):.1f} | {FEATURE_NOTES[f]} |")
    md += ["", f"Command: `{record['command']}`"]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")


def recipe_projection(flops_per_example: float, peak_tflops: float, batch: int = 4, steps: int = 2000,
                      fractions=(0.15, 0.3, 0.45)) -> dict[str, float]:
    """Minutes for `steps` steps of `batch` examples at each fraction of the device's peak (FLOPs are
    per example: every op of the step but the two-row prompt encoding scales with the batch)."""
    total = flops_per_example * batch * steps
    return {f"{f:.0%}": total / (f * peak_tflops * 1e12) / 60 for f in fractions}


def count_flops(args, model: str) -> dict:
    per_example = {}
    for ckpt in (False, True):
        step = DefectFillStep(model, args.resolution, gradient_checkpointing=ckpt)
        per_example[ckpt] = step_flops(step, batch_for(args.resolution, 1))
        del step
    rows = [{"gradient_checkpointing": c, "tflop_per_example": f / 1e12,
             "projected_minutes": recipe_projection(f, args.peak_tflops)} for c, f in per_example.items()]
    record = {"arch": args.arch, "resolution": args.resolution, "peak_tflops": args.peak_tflops,
              "recipe": "2000 steps x batch 4", "rows": rows,
              "command": "python -m bench.speed.bench_train_step " + " ".join(sys.argv[1:])}
    stem = Path(args.out) if args.out else RESULTS / f"train_step_flops_{args.arch}_{args.resolution}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
    fracs = list(rows[0]["projected_minutes"])
    md = [f"# FLOPs of one DefectFill step ({args.arch}, {args.resolution} px) and the recipe's projected time", "",
          f"torch FlopCounterMode, one example (forward, backward, AdamW); projected minutes of 2000 steps at batch 4 "
          f"on a device with a {args.peak_tflops:g} TFLOPS bf16 peak, at a fraction of that peak:", "",
          "| gradient checkpointing | TFLOP per example | " + " | ".join(f"min at {f}" for f in fracs) + " |",
          "|---|---|" + "---|" * len(fracs)]
    for r in rows:
        md.append(f"| {r['gradient_checkpointing']} | {r['tflop_per_example']:.2f} | "
                  + " | ".join(f"{r['projected_minutes'][f]:.1f}" for f in fracs) + " |")
    md += ["", f"Command: `{record['command']}`"]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    return record


def main(args) -> dict:
    from bench.speed.bench_lfs import build_model

    if args.count_flops:
        with tempfile.TemporaryDirectory() as tmp:
            model = args.model_dir or str(build_model(args.arch, Path(tmp) / "model"))
            if args.model_dir and not (Path(model) / "model_index.json").is_file():
                build_model(args.arch, Path(model))
            return count_flops(args, model)

    if args.features is not None:
        with tempfile.TemporaryDirectory() as tmp:
            model = args.model_dir or str(build_model(args.arch, Path(tmp) / "model"))
            if args.model_dir and not (Path(model) / "model_index.json").is_file():
                build_model(args.arch, Path(model))
            torch.manual_seed(0)
            record = features_table(args, model)
        record.update(arch=args.arch, resolution=args.resolution, batch=args.batch, rounds=args.rounds,
                      warmup=args.warmup, threads=torch.get_num_threads(), device="CPU", torch=torch.__version__,
                      command="python -m bench.speed.bench_train_step " + " ".join(sys.argv[1:]))
        write_features(args, record)
        print(json.dumps(record["ratio_to_defaults"]), flush=True)
        return record
    if args.memory_child:
        return memory_child(args.model_dir, args.resolution, args.memory_child[0], bool(args.memory_child[1]),
                            args.memory_dtype)
    if args.memory:
        if not args.model_dir:
            raise SystemExit("--memory needs --model-dir (built there when missing)")
        if not (Path(args.model_dir) / "model_index.json").is_file():
            build_model(args.arch, Path(args.model_dir))
        rows = memory_table(args, args.model_dir)
        suffix = "" if args.memory_dtype == "fp32" else f"_{args.memory_dtype}"
        stem = Path(args.out) if args.out else RESULTS / f"train_step_memory_{args.arch}{suffix}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        record = {"arch": args.arch, "rows": rows, "dtype": args.memory_dtype,
                  "method": "fresh exec'd process per row: ru_maxrss, VmHWM reset after loading, TensorMemoryPeak",
                  "command": "python -m bench.speed.bench_train_step " + " ".join(sys.argv[1:])}
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2))
        md = [f"# Peak memory of one DefectFill training step ({args.arch}, {args.memory_dtype})", "",
              "| resolution | batch | gradient checkpointing | peak tensor memory GiB | of which weights + "
              "optimiser GiB | peak RSS of the step GiB | step s |",
              "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                md.append(f"| {r['resolution']} | {r['batch']} | {r['gradient_checkpointing']} | failed: {r['error']} "
                          "| | | |")
                continue
            peak = r["tensor_peak_gib"]
            md.append(f"| {r['resolution']} | {r['batch']} | {r['gradient_checkpointing']} | {peak['Total']:.2f} | "
                      f"{peak['resident']:.2f} | {r['step_peak_rss_gib']:.2f} | {r['step_s']:.1f} |")
        md += ["", "Peak tensor memory: live tensor storages at the step's peak (weights, optimiser state and "
               "everything the step allocates, tracked op by op with a TorchDispatchMode): the figure a GPU's "
               "`max_memory_allocated` would show, up to allocator rounding (autocast's CPU and CUDA op lists differ "
               "slightly). RSS also counts the Python process, libraries and memory-mapped weight files.", "",
               f"Command: `{record['command']}`"]
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
              "command": "python -m bench.speed.bench_train_step " + " ".join(sys.argv[1:])}
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
