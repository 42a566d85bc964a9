"""Benchmark jobs that run in a child process: fit + generate one generator, train + evaluate one detector.

A child process gives each job its own peak memory (``os.wait4``'s ``ru_maxrss``) and keeps
ultralytics' process-wide state (settings, deterministic mode, loggers) out of the runner.
``python -m defectfill.benchmark.worker JOB.json`` reads a job, does it and writes ``job["out"]``
(JSON, atomically); a non-zero exit means failure and the log holds the traceback. Exit code 3
means the job could not write its output (disk full, read-only): the parent raises OutputError
and the benchmark stops. A job dies with the process that started it (Linux ``PR_SET_PDEATHSIG``),
so a killed benchmark leaves no orphan writing into a unit another process takes over.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from defectfill.config import load_config
from defectfill.errors import ConfigError, OutputError, output_errors
from defectfill.runinfo import atomic_write_text

REPO = Path(__file__).resolve().parents[2]
# The label and placement gates (label_from_change, min_visible_fraction, fabric_only, ...) keep
# GenerateConfig's defaults unless a profile sets them.
GENERATE_DEFAULTS = dict(candidates=2, num_inference_steps=2, dilation=6)
# Benchmark defaults for ultralytics: one optimiser step per batch (nbs = batch), no per-epoch
# validation (the last weights are evaluated; equal budgets, no model selection).
DETECTOR_DEFAULTS = dict(nbs=None, train_args={"val": False}, workers=0, patience=0)
# GenerateConfig keys generate_with sets itself (a generator's ``generate`` may not set them).
GENERATE_OWN_KEYS = ("generator", "checkpoint", "lora_dir", "clean_dir", "masks", "reference_dir", "num_samples",
                     "seed", "output_dir")
OUTPUT_FAILED = 3  # a job's exit code when it could not write its output
STOP_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})  # the output folder is unusable
PARENT_ENV = "DEFECTFILL_WORKER_PARENT"


class JobError(RuntimeError):
    """A child job failed: the message holds its last log line, ``log_tail`` the last 15."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


# ----------------------------------------------------------------------------- generator job


def fit_generator(spec: dict, train_dir: Path, out: Path, seed: int) -> Path:
    """``build_unfitted(class_path, init_args).fit(train data, out, seed)``: the checkpoint folder."""
    from defectfill.data.datasets import load_reference_dataset  # lazy: the child process imports only its job's side
    from defectfill.generators import build_unfitted

    generator = build_unfitted(spec["class_path"], spec.get("init_args"))
    return Path(generator.fit(load_reference_dataset(train_dir), out, seed))


def generate_with(spec: dict, generate: dict, ckpt: Path, train_dir: Path, out: Path, count: int, seed: int,
                  clean_dir: Path | None = None) -> dict:
    """Generate ``count`` samples onto ``clean_dir`` (default ``train_dir/good``) with auto masks from ``train_dir``."""
    from defectfill.config import GenerateConfig  # lazy: the child process imports only its job's side
    from defectfill.generation.run import run_generation

    values = {**GENERATE_DEFAULTS, **generate, **(spec.get("generate") or {})}
    gcfg = GenerateConfig(generator=spec["class_path"], checkpoint=str(ckpt), clean_dir=str(clean_dir or train_dir / "good"),
                          masks="auto", reference_dir=str(train_dir), num_samples=count, seed=seed,
                          output_dir=str(out), **values)
    return run_generation(gcfg)


def check_generation_settings(spec: dict, generate: dict) -> None:
    """The GenerateConfig a generator's cells will use (the benchmark's ``generate`` plus the spec's own),
    checked before any cell: a ConfigError names the generator and the key."""
    from defectfill.config import GenerateConfig  # lazy: the child process imports only its job's side

    name = spec["name"]
    values = {**GENERATE_DEFAULTS, **(generate or {}), **(spec.get("generate") or {})}
    own = sorted(k for k in values if k in GENERATE_OWN_KEYS)
    if own:
        raise ConfigError(f"generator {name!r}: generate.{own[0]} is set by the benchmark itself; remove it")
    placeholders = {"generator": spec["class_path"], "clean_dir": "clean", "checkpoint": "checkpoint"}
    try:
        load_config(GenerateConfig, **values, **placeholders)
    except ConfigError as exc:
        msg = str(exc)
        msg = msg[len("config: "):] if msg.startswith("config: ") else msg
        raise ConfigError(f"generator {name!r}: generate: {msg}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"generator {name!r}: generate: {' '.join(str(exc).split())}") from exc


FIT_DONE = "fit_done.json"  # in a fit folder: the checkpoint a finished fit returned (reused by later jobs)


def generator_job(job: dict) -> dict:
    """Fit (unless ``fit_dir`` already holds a finished fit: then it is reused) and generate."""
    t0 = time.perf_counter()
    done = Path(job["fit_dir"]) / FIT_DONE
    reused = done.is_file()
    if reused:
        ckpt = Path(json.loads(done.read_text())["checkpoint"])
    else:
        ckpt = fit_generator(job["spec"], Path(job["train_dir"]), Path(job["fit_dir"]), job["fit_seed"])
        atomic_write_text(done, json.dumps({"checkpoint": str(ckpt), "seed": job["fit_seed"],
                                            "train_dir": job["train_dir"]}))
    t1 = time.perf_counter()
    summary = generate_with(job["spec"], job["generate"], Path(ckpt), Path(job["train_dir"]), Path(job["gen_dir"]),
                            job["count"], job["seed"], Path(job["clean_dir"]) if job.get("clean_dir") else None)
    t2 = time.perf_counter()
    return {"checkpoint": str(ckpt), "fit_reused": reused, "fit_seed": job["fit_seed"],
            "generated_dir": job["gen_dir"], "generated_samples": summary.get("samples"),
            "rejected_samples": summary.get("rejected"), "inspection": summary.get("inspection"),
            "fit_seconds": t1 - t0, "generate_seconds": t2 - t1,
            "fit_generate_seconds": t2 - t0}


# ----------------------------------------------------------------------------- detector job


def detector_job(job: dict) -> dict:
    """Build the dataset (real pool, its val ids, + the first ``limit`` synthetic samples), train for
    about ``steps`` batches (whole epochs: ``round(steps / batches_per_epoch)``, at least 1), evaluate
    the LAST weights on every evaluation data.yaml.

    ``synthetic_phase`` p < 1 with synthetic samples: synthetic pretraining, then real fine-tuning, at the
    same total budget: about ``p * steps`` batches on the synthetic and good tiles only, then the rest on
    the real and good tiles only, starting from the first phase's last weights (one dataset, one class
    list, the same val split)."""
    from defectfill.detect.dataset import build_detection_dataset, train_subset_yaml
    from defectfill.detect.rtdetr import DetectorConfig, evaluate_detector, read_backbone_record, train_detector

    work = Path(job["work_dir"])
    values = {**DETECTOR_DEFAULTS, **job["detector"]}
    steps = int(values.pop("steps"))
    values.pop("eval_good_tiles_per_image", None)
    phase = float(values.pop("synthetic_phase", 1.0))
    cfg = load_config(DetectorConfig, **{k: v for k, v in values.items() if v is not None}, seed=job["seed"],
                      output_dir=str(work), name="rtdetr")
    if values.get("nbs") is None:
        cfg.nbs = cfg.batch
    data_dir = work / "dataset"
    kwargs = cfg.dataset_kwargs()
    kwargs.pop("val_fraction")
    if phase < 1:
        kwargs["synthetic_fraction"] = None  # each phase trains on one kind: no mixing cap
    manifest = build_detection_dataset(job["pool_dir"], data_dir, synthetic_dirs=job["synthetic_dirs"],
                                       synthetic_limit=job.get("limit"), val_ids=job["val_ids"], **kwargs)
    n_train = manifest["splits"]["train"]["images"]
    by_kind = manifest["splits"]["train"]["by_kind"]
    if phase < 1 and by_kind.get("synthetic"):
        plan = [("synthetic", ("synthetic", "good"), round(phase * steps)),
                ("real", ("reference", "good"), steps - round(phase * steps))]
    else:
        plan = [("all", None, steps)]
    t0 = time.perf_counter()
    phases, weights, iterations = [], None, 0
    for name, kinds, phase_steps in plan:
        data_yaml = data_dir / "data.yaml" if kinds is None else train_subset_yaml(data_dir, manifest, kinds, name)
        tiles = n_train if kinds is None else sum(by_kind.get(k, 0) for k in kinds)
        per_epoch = math.ceil(tiles / cfg.batch)
        run = replace(cfg, epochs=max(1, round(phase_steps / per_epoch)), name=f"rtdetr_{name}" if kinds else "rtdetr")
        run.close_mosaic = min(run.close_mosaic, run.epochs // 2)
        if weights is not None:  # fine-tune the previous phase's model (its YAML keeps the backbone options)
            run.model, run.backbone_pretrained, run.backbone_frozen = str(weights), None, None
        best = train_detector(run, data_yaml)
        weights = best.parent / "last.pt" if (best.parent / "last.pt").is_file() else best
        iterations += run.epochs * per_epoch
        phases.append({"phase": name, "train_kinds": list(kinds) if kinds else "all", "train_tiles": tiles,
                       "epochs": run.epochs, "batches_per_epoch": per_epoch, "target_iterations": phase_steps})
    t1 = time.perf_counter()
    evaluations = {name: evaluate_detector(weights, path, "val", batch=cfg.batch, device=cfg.device, conf=cfg.conf,
                                           workers=0, config_dir=cfg.yolo_config_dir)
                   for name, path in job["evals"].items()}
    splits = {k: {kk: v[kk] for kk in ("images", "labelled", "background", "boxes", "by_kind")}
              for k, v in manifest["splits"].items()}
    splits["synthetic_mix"] = manifest.get("synthetic_mix")
    if not job.get("keep_dataset", False):
        shutil.rmtree(data_dir, ignore_errors=True)
    first = phases[0]
    return {"config": asdict(cfg), "epochs": sum(p["epochs"] for p in phases),
            "batches_per_epoch": first["batches_per_epoch"], "iterations": iterations, "target_iterations": steps,
            "synthetic_phase": phase, "phases": phases, "train_tiles": n_train,
            "splits": splits, "weights": str(weights), "backbone": read_backbone_record(weights.parent.parent),
            "train_seconds": t1 - t0,
            "eval_seconds": time.perf_counter() - t1, "evaluations": evaluations}


JOBS = {"generator": generator_job, "detector": detector_job}


# ----------------------------------------------------------------------------- parent side


def run_job(job: dict, job_dir: Path, env: dict | None = None) -> dict:
    """Run ``job`` in a child Python; return its result plus ``wall_seconds`` and ``peak_rss_kib``.

    ``peak_rss_kib`` is the child's own ``ru_maxrss`` from ``os.wait4`` (KiB on Linux). Raises
    JobError with the tail of ``job_dir/log.txt`` when the child fails.
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    job = {**job, "out": str(job_dir / "result.json")}
    spec = job_dir / "job.json"
    atomic_write_text(spec, json.dumps(job, indent=2, default=str))
    Path(job["out"]).unlink(missing_ok=True)
    log_path = job_dir / "log.txt"
    child_env = {**os.environ, **(env or {}), PARENT_ENV: str(os.getpid())}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), child_env.get("PYTHONPATH")]))
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "defectfill.benchmark.worker", str(spec)], stdout=log,
                                stderr=subprocess.STDOUT, env=child_env, cwd=os.getcwd())
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not Path(job["out"]).is_file():
        lines = [x for x in log_path.read_text(errors="replace").splitlines() if x.strip()]
        last = lines[-1].strip() if lines else "no output"
        if proc.returncode == OUTPUT_FAILED and last.startswith("error: "):
            raise OutputError(last[len("error: "):])
        raise JobError(f"{job['kind']} job failed (exit {proc.returncode}): {last} (log {log_path})",
                       "\n".join(lines[-15:]))
    result = json.loads(Path(job["out"]).read_text())
    if result.get("vm_hwm_kib"):
        return {**result, "wall_seconds": wall, "peak_rss_kib": result["vm_hwm_kib"],
                "peak_rss_method": "VmHWM of the job's own process (/proc/self/status, KiB)"}
    return {**result, "wall_seconds": wall, "peak_rss_kib": usage.ru_maxrss,
            "peak_rss_method": "os.wait4 ru_maxrss (KiB; includes the runner's high-water mark at fork)"}


def proc_status_kib(field: str) -> int | None:
    """A KiB field of /proc/self/status (``VmRSS``, ``VmHWM``, ...); None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def own_peak_rss_kib() -> int | None:
    """This process's own peak RSS (``VmHWM`` of /proc/self/status, KiB; reset at exec). ``ru_maxrss``
    from ``wait4`` is not: Linux carries the forking parent's high-water mark into the child."""
    return proc_status_kib("VmHWM")


def _die_with_parent() -> None:
    """Linux: SIGKILL this job when the benchmark process that started it dies (also by SIGKILL)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before the prctl: nobody waits for this job
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m defectfill.benchmark.worker JOB.json", file=sys.stderr)
        return 2
    _die_with_parent()
    job = json.loads(Path(argv[0]).read_text())
    try:
        try:
            result = JOBS[job["kind"]](job)
            result["vm_hwm_kib"] = own_peak_rss_kib()
            atomic_write_text(Path(job["out"]), json.dumps(result, indent=2, default=str))
        except OSError as exc:
            if exc.errno not in STOP_ERRNOS:  # e.g. a missing input: the job failed, not the output folder
                raise
            with output_errors(Path(job["out"]).parent, "rerun the benchmark to resume"):
                raise
    except OutputError as exc:  # also the trainers' own write failures (weights, checkpoints)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return OUTPUT_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
