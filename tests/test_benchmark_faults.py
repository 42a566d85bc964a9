"""The benchmark under faults: a process SIGKILLed mid-unit while another shares the output folder,
a disk that fills mid-run, and the lock/temp-file bookkeeping that makes both recoverable.

After any of them, every planned cell ends with exactly one complete ``result.json``, no
``error.json`` beside it, no ``*.tmp-*`` file anywhere, and the report is written."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from defectfill.benchmark.locks import claim as _claim
from defectfill.benchmark.locks import start_ticks as _start_ticks
from defectfill.benchmark.locks import sweep
from defectfill.benchmark.runner import BenchmarkConfig, plan
from defectfill.cli import main
from defectfill.config import load_config

REPO = Path(__file__).resolve().parents[1]
SEG = {"arch": "unet", "encoder_weights": "random", "base_channels": 8, "depth": 2, "steps": 2, "size": 32,
       "crop": 32, "batch_size": 2, "log_every": 1}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "true",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> tuple[Path, Path]:
    from defectfill.data import make_woven_dataset

    root = tmp_path_factory.mktemp("bench-fault-data")
    return (make_woven_dataset(root / "data", n_defect=6, n_good=4, height=64, width=256, seed=0),
            make_woven_dataset(root / "eval", n_defect=4, n_good=2, height=64, width=256, seed=1))


def _grid(tmp_path: Path, small_data, generators) -> Path:
    data, eval_data = small_data
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data), "eval_data": str(eval_data), "output_dir": str(
        tmp_path / "out"), "tasks": ["segmenter"], "generators": generators, "synthetic_counts": [2],
        "seeds": [0, 1, 2], "segmenter": SEG, "metrics": {"crop": 32}, "max_images": None}))
    return config


def _assert_complete(config: Path, out: Path) -> None:
    """Every planned cell: one valid result.json naming it, no error.json; no temp file or lock left; a report."""
    planned = {c.name for u in plan(load_config(BenchmarkConfig, config)) for c in u.cells}
    for name in planned:
        folder = out / "cells" / name
        assert sorted(p.name for p in folder.iterdir()) == ["result.json"], (name, list(folder.iterdir()))
        assert json.loads((folder / "result.json").read_text())["cell"] == name
    assert {p.name for p in (out / "cells").iterdir()} == planned
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not list((out / "locks").glob("*.lock"))
    results = json.loads((out / "results.json").read_text())
    assert set(results["cells"]) == planned and not results["errors"]
    assert (out / "results.md").stat().st_size > 0


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group (Linux /proc)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            alive.append(int(stat.parent.name))
    return alive


def _lock_holders(out: Path) -> dict[str, int]:
    """unit name -> pid holding its lock."""
    held = {}
    for lock in (out / "locks").glob("*.lock"):
        try:
            held[lock.stem] = int(lock.read_text().split("@", 1)[0])
        except (OSError, ValueError):
            pass
    return held


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
def test_two_processes_one_killed_mid_unit_the_grid_still_completes(tmp_path, small_data):
    config = _grid(tmp_path, small_data, [{"name": "real_only", "class_path": "real_only"},
                                          {"name": "copy_paste", "class_path": "copy_paste", "init_args": {}}])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "defectfill.cli", "benchmark", "--config", str(config)]
    logs = [open(tmp_path / f"p{i}.log", "w+") for i in range(2)]  # noqa: SIM115 (closed in the finally below)
    procs = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=tmp_path,
                              start_new_session=True) for log in logs]
    victim = survivor = None
    try:
        # the victim: whichever process first holds a copy_paste unit whose generator job (a child) is running
        deadline = time.monotonic() + 240
        while victim is None and time.monotonic() < deadline:
            for unit, pid in _lock_holders(out).items():
                jobs = (out / "work" / unit.split("-")[0] / "main" / "copy_paste").glob("s*/generator_job")
                running = any((j / "log.txt").exists() and not (j / "result.json").exists() for j in jobs)
                if "copy_paste" in unit and running and len(_group_alive(pid)) > 1:
                    victim = next((p for p in procs if p.pid == pid), None)
                    break
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        assert victim is not None, "no process was caught inside a copy_paste unit"
        survivor = next(p for p in procs if p is not victim)
        held = [u for u, pid in _lock_holders(out).items() if pid == victim.pid]
        victim.kill()  # SIGKILL the benchmark process only: its job child must die with it (PDEATHSIG)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        for _ in range(100):
            if not _group_alive(victim.pid):
                break
            time.sleep(0.1)
        assert not _group_alive(victim.pid), "a child of the killed benchmark outlived it"
        assert len(held) == 1 and "copy_paste" in held[0]

        assert survivor.wait(timeout=400) == 0  # waits for, then takes over, the dead holder's unit
        survivor_log = logs[procs.index(survivor)]
        survivor_log.seek(0)
        text = survivor_log.read()
        assert f"{held[0]}.lock: holder {victim.pid}@" in text and "taking the unit over" in text, text
        assert "6 of 6 cells done, 0 failed" in text, text
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in logs:
            log.close()
    _assert_complete(config, out)
    gen_json = min((out / "work" / held[0].split("-")[0] / "main" / "copy_paste").glob("s*/generator.json"))
    gen = json.loads(gen_json.read_text())
    assert gen["generated_samples"] == len(list(Path(gen["generated_dir"], "sidecars").glob("*.json"))) == 2

    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/result.json")}
    rerun = subprocess.run(cmd, check=False, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["complete"] and summary["cells_run"] == 0 and summary["cells_skipped"] == 6
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/result.json")} == mtimes
    _assert_complete(config, out)

    # the same grid uninterrupted, in one process: every cell's metrics are identical (single-threaded CPU)
    clean = tmp_path / "clean.yaml"
    clean.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "output_dir": str(tmp_path / "clean")}))
    ref = subprocess.run([*cmd[:-1], str(clean)], check=False, capture_output=True, text=True, env=ENV,
                         cwd=tmp_path, timeout=300)
    assert ref.returncode == 0, ref.stderr
    for result in out.glob("cells/*/result.json"):
        twin = tmp_path / "clean" / "cells" / result.parent.name / "result.json"
        got, want = (json.loads(f.read_text())["metrics"] for f in (result, twin))
        assert {k: v for k, v in got.items() if k != "seconds"} == {k: v for k, v in want.items() if k != "seconds"}


@pytest.mark.parametrize("code, hint", [(errno.ENOSPC, "free disk space"),
                                        (errno.EROFS, "fix the path or its permissions")], ids=["enospc", "erofs"])
def test_write_fault_mid_run_is_one_line_and_a_rerun_resumes(code, hint, tmp_path, small_data, capsys, monkeypatch):
    """Disk full, or the file system turned read-only, at the second cell's result."""
    from defectfill.benchmark import runner

    config = _grid(tmp_path, small_data, [{"name": "real_only", "class_path": "real_only"}])
    out = tmp_path / "out"
    real_write, calls = runner.atomic_write_text, []

    def full_disk(path, text):
        if Path(path).name == "result.json":
            calls.append(path)
            if len(calls) == 2:  # the second cell's result
                raise OSError(code, os.strerror(code), str(path))
        return real_write(path, text)

    monkeypatch.setattr(runner, "atomic_write_text", full_disk)
    argv = ["benchmark", "--config", str(config)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "segmenter-main-real_only-n0-f0-s1/result.json" in errors[0] and hint in errors[0], errors
    first = out / "cells" / "segmenter-main-real_only-n0-f0-s0" / "result.json"
    assert json.loads(first.read_text())["cell"] == "segmenter-main-real_only-n0-f0-s0"
    assert not (out / "cells" / "segmenter-main-real_only-n0-f0-s1").exists()  # no error.json: not a failed cell
    assert not list((out / "locks").glob("*.lock")) and not [p for p in out.rglob("*") if ".tmp-" in p.name]

    monkeypatch.setattr(runner, "atomic_write_text", real_write)
    mtime = first.stat().st_mtime_ns
    assert main(argv) == 0  # the rerun resumes: the finished cell is kept, the rest run
    assert first.stat().st_mtime_ns == mtime
    _assert_complete(config, out)


def test_output_folder_becomes_a_file_in_the_way_is_one_line(tmp_path, small_data, capsys):
    config = _grid(tmp_path, small_data, [{"name": "real_only", "class_path": "real_only"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "cells").write_text("a file where the cells folder goes\n")
    assert main(["benchmark", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err and str(out / "cells") in errors[0], err


# ---- the bookkeeping: locks of dead holders, temp files of dead writers ----

def _exited_child() -> subprocess.Popen:
    """A child that has exited but is not reaped yet (a zombie, like a SIGKILLed runner nobody waited for)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(200):
        state = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return child
        time.sleep(0.05)
    raise AssertionError("child did not exit")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_a_lock_of_a_zombie_or_a_reused_pid_is_taken_over(tmp_path):
    host = socket.gethostname()
    lock = tmp_path / "locks" / "unit.lock"
    lock.parent.mkdir()
    child = _exited_child()
    try:
        lock.write_text(f"{child.pid}@{host}\n")
        assert _claim(lock)
    finally:
        child.wait()
    assert lock.read_text().startswith(f"{os.getpid()}@{host}\nstart=")
    assert not _claim(lock)  # ours, alive
    lock.write_text(f"{os.getpid()}@{host}\nstart={int(_start_ticks(os.getpid())) + 1}\n")  # our pid, reused
    assert _claim(lock)
    lock.write_text(f"{os.getpid()}@another-host\n")  # another host's: never taken over from here
    assert not _claim(lock)
    assert not [p for p in lock.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_sweep_removes_only_what_dead_processes_left(tmp_path):
    child = _exited_child()
    dead = child.pid
    child.wait()
    out = tmp_path / "out"
    cell = out / "cells" / "segmenter-main-real_only-n0-f0-s0"
    cell.mkdir(parents=True)
    (cell / "result.json").write_text("{}")
    (cell / "error.json").write_text("{}")  # killed between writing the result and removing the error
    (cell / f"result.json.tmp-{dead}").write_text("{")
    half = out / "work" / "s0" / "main" / f".train.tmp-{dead}"
    (half / "images").mkdir(parents=True)
    live = out / "work" / f"grid.json.tmp-{os.getpid()}"
    live.write_text("{")
    other = out / "cells" / "x" / "error.json"
    other.parent.mkdir()
    other.write_text("{}")
    removed = sweep(out)
    assert set(removed) == {cell / "error.json", cell / f"result.json.tmp-{dead}", half}
    assert live.exists() and other.exists() and (cell / "result.json").exists() and not half.exists()
    (out / "locks").mkdir()
    (out / "locks" / "s0-main-x.lock").write_text(f"{os.getpid()}@another-host\n")
    (cell / f"result.json.tmp-{dead}").write_text("{")
    assert sweep(out) == []  # a process on another host may share the folder: its pids are unknown here


def test_units_finished_by_others_are_not_announced_as_held(monkeypatch, tmp_path):
    """A unit found held in the first pass but finished before the wait: no 'waiting for' line names it;
    one still held is named, then taken once its holder lets go."""
    from defectfill.benchmark import runner

    class U:
        def __init__(self, name):
            self.name = name

    a, b, c = U("f0-main-a"), U("f0-main-b"), U("f0-main-c")
    held = {"f0-main-a": 1, "f0-main-b": 3}  # passes each unit stays held
    calls, logs = {}, []

    def fake_try(ctx, out, unit, since):
        calls[unit.name] = calls.get(unit.name, 0) + 1
        return None if calls[unit.name] <= held.get(unit.name, 0) else 2

    monkeypatch.setattr(runner, "_try_unit", fake_try)
    monkeypatch.setattr(runner, "_log", logs.append)
    monkeypatch.setattr(runner, "WAIT_POLL_S", 0)
    monkeypatch.setattr(runner, "holder", lambda lock: ("local", 123))
    ran, left = runner._run_pending(None, tmp_path, [a, b, c], 0.0, wait=True)
    assert (ran, left) == (6, [])
    waiting = [line for line in logs if line.startswith("waiting for")]
    assert waiting == ["waiting for 1 unit(s) other processes hold: f0-main-b"]
