"""The benchmark on Ray: each unit a Ray task on a local Ray (2 CPUs), the same cells and grid as a local run."""

import json
import os
from pathlib import Path

import pytest

from defectfill.benchmark.executors import ExecutorConfig, executor_config, profile_devices
from defectfill.benchmark.runner import BenchmarkConfig
from defectfill.cli import benchmark_main
from defectfill.config import load_config
from defectfill.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SEG = {"steps": 4, "size": 64, "crop": 64, "batch_size": 4, "log_every": 2}


def _profile(tmp_path: Path, data: Path, out: Path) -> Path:
    import yaml

    profile = tmp_path / f"{out.name}.yaml"
    profile.write_text(yaml.safe_dump({
        "data_dir": str(data), "output_dir": str(out), "folds": 2, "seeds": [0, 1], "val_fraction": 0,
        "tasks": ["segmenter"], "threads": 1, "generation_metrics": False, "synthetic_counts": [2],
        "generators": [{"name": "real_only", "class_path": "real_only"},
                       {"name": "copy_paste", "class_path": "copy_paste"}],
        "segmenter": SEG, "stats": {"n_boot": 50}}))
    return profile


def _cells(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((out / "cells").glob("*/result.json"))}


def _scores(cell: dict) -> dict:
    return {k: v for k, v in cell["metrics"].items() if "seconds" not in k}


def test_ray_executor_writes_the_cells_and_grid_a_local_run_writes(woven_root, tmp_path, monkeypatch):
    import ray

    # Ray runs its workers at niceness 15; on a shared CI box other jobs would starve them
    monkeypatch.setenv("RAY_worker_niceness", "0")

    local, remote = tmp_path / "local", tmp_path / "ray"
    assert benchmark_main(["--config", str(_profile(tmp_path, woven_root, local))]) == 0
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert benchmark_main(["--config", str(_profile(tmp_path, woven_root, remote)), "--executor", "ray"]) == 0
    finally:
        ray.shutdown()
    a, b = _cells(local), _cells(remote)
    # 2 generators x 2 folds x 2 seeds
    assert sorted(a) == sorted(b) and len(a) == 8
    for name in a:
        assert _scores(b[name]) == _scores(a[name]), name
        assert b[name]["train_ids"] == a[name]["train_ids"]
    assert json.loads((remote / "grid.json").read_text()) == json.loads((local / "grid.json").read_text())
    # local cells ran in this process, Ray's in its worker processes
    assert {c["runtime"]["pid"] for c in a.values()} == {os.getpid()}
    assert os.getpid() not in {c["runtime"]["pid"] for c in b.values()}
    # the run's resolved config records where it ran
    assert json.loads((remote / "benchmark_config.json").read_text())["config"]["executor"] == {"kind": "ray"}
    # a rerun finds every cell done and runs nothing, without starting Ray
    assert benchmark_main(["--config", str(_profile(tmp_path, woven_root, remote)), "--executor", "ray"]) == 0
    assert _cells(remote) == b
    assert not ray.is_initialized()


def test_executor_settings_are_checked(tmp_path, capsys):
    assert executor_config(None) == ExecutorConfig()
    assert ExecutorConfig(kind="ray").resources(2, ["cpu", None, None]) == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert ExecutorConfig(kind="ray").resources(None, ["cpu", "cuda", None]) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert ExecutorConfig(kind="ray").resources(1, ["cpu", None, "0"])["num_gpus"] == 1.0  # ultralytics' spelling
    assert ExecutorConfig(kind="ray", num_cpus=4, num_gpus=0.5).resources(1, ["cuda:1"]) == {"num_cpus": 4,
                                                                                               "num_gpus": 0.5}
    gpu = load_config(BenchmarkConfig, REPO / "configs" / "benchmark" / "aitex_gpu.yaml")
    assert ExecutorConfig(kind="ray").resources(gpu.threads, profile_devices(gpu))["num_gpus"] == 1.0
    for bad, says in (({"kind": "slurm"}, "executor.kind"), ({"kind": "ray", "num_gpus": -1}, "executor.num_gpus"),
                      ({"address": "auto"}, "executor.address"), ({"nodes": 3}, "executor: ")):
        with pytest.raises(ConfigError, match=says):
            load_config(BenchmarkConfig, seeds=[0, 1], executor=bad)
    profile = tmp_path / "p.yaml"
    profile.write_text(f"data_dir: {tmp_path}\nseeds: [0, 1]\n")
    assert benchmark_main(["--config", str(profile), "--ray-address", "auto"]) == 2
    assert "--ray-address needs --executor ray" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_cluster_of_two_nodes_by_address(woven_root, tmp_path, monkeypatch):
    """A two-node Ray cluster (two raylets on this machine, 1 CPU each) joined by address, as on several
    machines: the driver connects with --ray-address, units run on both nodes, cells equal a local run's."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_worker_niceness", "0")
    local, remote = tmp_path / "local", tmp_path / "cluster"
    assert benchmark_main(["--config", str(_profile(tmp_path, woven_root, local))]) == 0
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        address = cluster.address
        assert benchmark_main(["--config", str(_profile(tmp_path, woven_root, remote)), "--executor", "ray",
                               "--ray-address", address]) == 0
        node_ids = {n.node_id for n in cluster.list_all_nodes()}
    finally:
        cluster.shutdown()
    a, b = _cells(local), _cells(remote)
    assert sorted(a) == sorted(b) and len(a) == 8
    for name in a:
        assert _scores(b[name]) == _scores(a[name]), name
    # two units at a time on two 1-CPU nodes: both nodes ran cells; local cells name no Ray node
    assert {c["runtime"]["ray_node"] for c in b.values()} == node_ids and len(node_ids) == 2
    assert {c["runtime"]["ray_node"] for c in a.values()} == {None}
    config = json.loads((remote / "benchmark_config.json").read_text())["config"]["executor"]
    assert config == {"kind": "ray", "address": address}
