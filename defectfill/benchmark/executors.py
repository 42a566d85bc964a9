"""Where a benchmark's units run: this process (``local``, the default; more local processes share the
folder through its lock files) or Ray tasks (``ray``), on a local Ray or a cluster.

A unit (one generator on one fold's data of one setting, all its seeds: one fit, its generations and its
cells) is the piece of work both executors hand out, because its cells share the generator's fit. On Ray
each unit is one task, ``run_unit_named(cfg, unit_name, since, cwd)``: a plain function of picklable
arguments (any other engine can call it the same way) that claims the unit's lock and writes the same
``cells/<cell>/result.json`` as a local process. Every node must see the repository, the data and the
output folder at the same paths (a shared file system) and have the same Python environment.

    ray start --head --num-cpus 16 --num-gpus 1              # on the first machine
    ray start --address <head-ip>:6379 --num-gpus 1          # on each other machine
    defectfill benchmark --config configs/benchmark/aitex_gpu.yaml --executor ray --ray-address auto
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from defectfill.config import load_config
from defectfill.errors import ConfigError

EXECUTORS = ("local", "ray")
# passed to Ray workers: offline hubs and thread counts must hold in every task, as in a local process
FORWARDED_ENV = ("HF_HUB_OFFLINE", "YOLO_OFFLINE", "HF_HOME", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                 "CUDA_VISIBLE_DEVICES", "PYTHONHASHSEED")


@dataclass
class ExecutorConfig:
    """The benchmark's ``executor`` mapping (it changes where cells run, never their results)."""

    kind: str = "local"
    address: str | None = None  # ray: "auto", "<head-ip>:6379" or "ray://<head-ip>:10001"; None: a local Ray
    num_cpus: float | None = None  # per task; default: the benchmark's threads (1 when null)
    num_gpus: float | None = None  # per task; default: 1 when the profile puts a model on a GPU, else 0

    def validate(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"executor.kind: unknown {self.kind!r} (choose from {', '.join(EXECUTORS)})")
        for key in ("num_cpus", "num_gpus"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"executor.{key}: must be a number >= 0, got {value!r}")
        if self.kind == "local" and self.address is not None:
            raise ConfigError("executor.address is for kind: ray (a local run has no cluster to connect to)")

    def resources(self, threads: int | None, devices: list) -> dict:
        """A task's Ray resource request (``devices``: the profile's device settings)."""
        cpus = self.num_cpus if self.num_cpus is not None else float(threads or 1)
        gpus = self.num_gpus if self.num_gpus is not None else (1.0 if any(map(is_gpu, devices)) else 0.0)
        return {"num_cpus": cpus, "num_gpus": gpus}


def is_gpu(device) -> bool:
    """A torch (``cuda``, ``cuda:1``) or ultralytics (``0``, ``0,1``) GPU device setting."""
    text = str(device if device is not None else "cpu").strip().lower()
    return text.startswith("cuda") or (bool(text) and all(part.strip().isdigit() for part in text.split(",")))


def profile_devices(cfg) -> list:
    """The device settings of a benchmark profile: its own, the segmenter's and the detector's."""
    return [cfg.device, (cfg.segmenter or {}).get("device"), (cfg.detector or {}).get("device")]


def executor_config(values: dict | None) -> ExecutorConfig:
    """The ``executor`` mapping as a checked ExecutorConfig (ConfigError names the key)."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"executor: must be a mapping like {{kind: ray, address: auto}}, got {values!r}")
    try:
        exe = load_config(ExecutorConfig, **values)
    except ConfigError as exc:
        raise ConfigError(f"executor: {str(exc).removeprefix('config: ')}") from exc
    exe.validate()
    return exe


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("executor: ray needs the ray package (pip install 'defectfill[ray]')") from exc
    return ray


def _task_error(exc: BaseException) -> BaseException:
    """The exception a Ray task raised (Ray wraps it), or ``exc`` itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def ray_node_id() -> str | None:
    """The Ray node this process runs on when it is a Ray worker (None otherwise; never imports Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def run_ray(cfg, units: list, since: float, wait: bool, task: Callable, lock_state: Callable,
            stops: Callable, log: Callable, poll_s: float) -> tuple[int, list[str]]:
    """Run ``units`` as Ray tasks ``task(cfg, unit.name, since, cwd)``; the Ray session is the caller's when
    one is initialised, else ``ray.init(address)`` (a local Ray when the address is None), shut down after.

    A task returns the unit's cells run, or None when another live process holds the unit; with ``wait``,
    held units are resubmitted once ``lock_state(unit)`` says the holder is gone (units held on hosts
    this driver cannot check are left to them). A task that fails (a worker killed, an error outside
    the cells) leaves its cells without results: the run reports them and a rerun retries them; an
    output folder that cannot be written (``stops``) stops the run as locally.
    Returns (cells run, units left to other processes)."""
    ray = import_ray()
    exe = executor_config(cfg.executor)
    started = not ray.is_initialized()
    if started:
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        kwargs = {"runtime_env": {"env_vars": env}, "log_to_driver": True}
        if exe.address is None:
            kwargs["include_dashboard"] = False
        ray.init(address=exe.address, **kwargs)
    try:
        resources = exe.resources(cfg.threads, profile_devices(cfg))
        remote = ray.remote(task).options(max_retries=0, **resources)
        cwd = os.getcwd()
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        log(f"ray: {len(units)} unit(s) as tasks on {nodes} node(s), {resources} each")
        ran, waiting, todo = 0, [], list(units)
        while todo:
            refs = {remote.remote(cfg, u.name, since, cwd): u for u in todo}
            pending, todo = list(refs), []
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                unit = refs[ready[0]]
                try:
                    n = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    err = _task_error(exc)
                    if stops(err):
                        raise err  # the output folder cannot be written: as in a local run
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                    log(f"ray: unit {unit.name} failed: {type(err).__name__}: {first}")
                    continue
                if n is None:
                    waiting.append(unit)
                else:
                    ran += n
                    log(f"ray: unit {unit.name} done ({n} cell(s) run)")
            while waiting and wait:
                states = {u.name: lock_state(u) for u in waiting}
                if all(s == "remote" for s in states.values()):
                    break
                todo = [u for u in waiting if states[u.name] in (None, "dead")]
                if todo:
                    waiting = [u for u in waiting if u not in todo]
                    break
                time.sleep(poll_s)
        return ran, [u.name for u in waiting]
    finally:
        if started:
            ray.shutdown()
