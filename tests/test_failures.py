"""A write failure in the middle of generation (disk full): one error line, nothing half-written,
and a rerun resumes to the dataset an uninterrupted run writes."""

from __future__ import annotations

import errno
import json

import numpy as np

from defectfill.config import GenerateConfig
from defectfill.errors import one_line_errors
from defectfill.generation.run import run_generation
from defectfill.generators import Generator


class Darken(Generator):
    """Darkens the mask by a seed-dependent amount: deterministic, no model."""

    name = "darken"

    def synthesize(self, clean, mask, seed, defect_class=None, placement=None):
        out = clean.copy()
        out[mask] = (out[mask] * (0.3 + (seed % 7) / 20)).astype(np.uint8)
        return out, {}


def _files(root):
    """Every output file's bytes; sidecars as JSON without the output folder they name."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in ("run_info.json", "data.yaml"):  # these name the folder
            out[str(p.relative_to(root))] = p.read_bytes()
            if p.parent.name == "sidecars":
                record = json.loads(p.read_text())
                record["generator_config"].pop("output_dir")
                out[str(p.relative_to(root))] = record
    return out


def test_disk_full_mid_generation_is_one_line_and_resumes(woven_root, tmp_path, monkeypatch, capsys):
    import defectfill.generation.samples as samples

    def cfg(out):
        return GenerateConfig(generator="darken", clean_dir=str(woven_root / "good"), masks="auto",
                              reference_dir=str(woven_root), num_samples=4, min_change=0.0, output_dir=str(out))

    factory = lambda cfg, device: Darken()  # noqa: E731
    run_generation(cfg(tmp_path / "whole"), synthesizer_factory=factory)

    real_save, calls = samples.atomic_save_image, []

    def full_disk(image, path):
        calls.append(path)
        if len(calls) == 7:  # the third sample's image (image, mask, clean per sample)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(image, path)

    monkeypatch.setattr(samples, "atomic_save_image", full_disk)
    out = tmp_path / "broken"
    assert one_line_errors(run_generation)(cfg(out), synthesizer_factory=factory) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "000002.png" in err and "free disk space" in err, err
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # nothing half-written
    assert sorted(p.stem for p in (out / "sidecars").glob("*.json")) == ["000000", "000001"]

    monkeypatch.setattr(samples, "atomic_save_image", real_save)
    run_generation(cfg(out), synthesizer_factory=factory)  # the rerun resumes
    assert _files(out) == _files(tmp_path / "whole")


def test_partial_sample_is_invisible_to_every_reader_and_the_rerun_completes_it(woven_root, tmp_path, monkeypatch,
                                                                                capsys):
    """ENOSPC at the third sample's clean/ image: its image, mask and label are written, its clean copy
    and sidecar are not. No reader lists it; the rerun rewrites it and equals an uninterrupted run."""
    from defectfill.detect.dataset import synthetic_samples
    from defectfill.downstream.tiles import images_from_synthetic
    from defectfill.generation import samples
    from defectfill.metrics.distribution import load_dataset_crops

    def cfg(out):
        return GenerateConfig(generator="darken", clean_dir=str(woven_root / "good"), masks="auto",
                              reference_dir=str(woven_root), num_samples=4, min_change=0.0, output_dir=str(out))

    factory = lambda cfg, device: Darken()
    run_generation(cfg(tmp_path / "whole"), synthesizer_factory=factory)
    real_save, calls = samples.atomic_save_image, []

    def full_disk(image, path):
        calls.append(path)
        if len(calls) == 9:  # image, mask, clean per sample: the third sample's clean copy
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(image, path)

    monkeypatch.setattr(samples, "atomic_save_image", full_disk)
    out = tmp_path / "broken"
    assert one_line_errors(run_generation)(cfg(out), synthesizer_factory=factory) == 2
    assert "clean/000002.png" in capsys.readouterr().err
    assert (out / "images" / "000002.png").is_file() and (out / "labels" / "000002.txt").is_file()
    assert not (out / "sidecars" / "000002.json").exists()
    complete = ["000000", "000001"]
    assert [r[0] for r in samples.load_yolo_dataset(out)] == complete
    assert [r["name"] for r in synthetic_samples(out)] == complete
    assert [s.id for s in images_from_synthetic(out)] == complete
    assert load_dataset_crops(out, 32).names == complete

    monkeypatch.setattr(samples, "atomic_save_image", real_save)
    run_generation(cfg(out), synthesizer_factory=factory)
    assert _files(out) == _files(tmp_path / "whole")


class Unchanged(Darken):
    """Leaves every other slot untouched (rejected as low_change); loadable by class path, no checkpoint."""

    name = "unchanged"

    @classmethod
    def from_checkpoint(cls, checkpoint, device="cpu", **kwargs):
        return cls()

    def synthesize(self, clean, mask, seed, defect_class=None, placement=None):
        if seed % 2:
            return clean.copy(), {}
        return super().synthesize(clean, mask, seed, defect_class, placement)


def _generate_argv(woven_root, out, *extra):
    return ["generate", "--generator", f"{__name__}:Unchanged", "--clean-dir", str(woven_root / "good"),
            "--data-dir", str(woven_root), "--output-dir", str(out), "--num-samples", "6", *extra]


def test_a_run_that_accepts_nothing_fails_and_one_that_accepts_fewer_says_so(woven_root, tmp_path, capsys):
    from defectfill.cli import main
    from defectfill.generation.run import derive_seed

    odd = sum(derive_seed(0, i, 1) % 2 for i in range(6))  # slots Unchanged leaves untouched
    assert 0 < odd < 6
    assert main(_generate_argv(woven_root, tmp_path / "some")) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"accepted {6 - odd} of 6 requested samples; rejected by reason: low_change {odd} "
                    f"(see rejected/ and each sidecar's reject_code)")
    assert len(list((tmp_path / "some" / "sidecars").glob("*.json"))) == 6 - odd

    assert main(_generate_argv(woven_root, tmp_path / "none", "--set", "min_change=1000")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert err == [(f"error: {tmp_path / 'none'}: accepted 0 of 6 requested samples; rejected by reason: "
                    f"low_change 6 (see rejected/ and each sidecar's reject_code)")]
    assert len(list((tmp_path / "none" / "rejected" / "sidecars").glob("*.json"))) == 6  # kept for inspection


def test_a_run_refused_before_its_first_sample_leaves_no_folder(woven_root, tmp_path):
    def broken(cfg, device):
        raise RuntimeError("weights do not load")

    for out, existed in ((tmp_path / "new" / "gen", False), (tmp_path / "kept", True)):
        if existed:
            out.mkdir()
        cfg = GenerateConfig(generator="darken", clean_dir=str(woven_root / "good"), masks="auto",
                             reference_dir=str(woven_root), num_samples=2, output_dir=str(out))
        try:
            run_generation(cfg, synthesizer_factory=broken)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the factory's error was swallowed")
        assert out.is_dir() == existed and not (existed and any(out.iterdir()))


SLOW_GENERATOR = '''
import time

import numpy as np

from defectfill.generators import Generator


class SlowDarken(Generator):
    name = "slow_darken"

    @classmethod
    def from_checkpoint(cls, checkpoint, device="cpu", **kwargs):
        return cls()

    def synthesize(self, clean, mask, seed, defect_class=None, placement=None):
        time.sleep(0.4)
        out = clean.copy()
        out[mask] = (out[mask] * (0.3 + (seed % 7) / 20)).astype(np.uint8)
        return out, {}
'''


def test_generate_killed_mid_run_resumes_to_the_uninterrupted_dataset(woven_root, tmp_path):
    """A real SIGKILL of `defectfill generate` after its second sample; the same command again finishes,
    and the dataset equals an uninterrupted run's, file for file."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    (tmp_path / "slowgen.py").write_text(SLOW_GENERATOR)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)]), "OMP_NUM_THREADS": "1"}

    def command(out):
        return [sys.executable, "-m", "defectfill", "generate", "--generator", "slowgen:SlowDarken",
                "--clean-dir", str(woven_root / "good"), "--data-dir", str(woven_root), "--output-dir", str(out),
                "--num-samples", "6", "--set", "min_change=0"]

    whole = tmp_path / "whole"
    subprocess.run(command(whole), env=env, check=True, capture_output=True, timeout=300)
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((out / "sidecars").glob("*.json"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it was killed"
    assert not (out / "data.yaml").exists() and len(list((out / "sidecars").glob("*.json"))) < 6
    res = subprocess.run(command(out), check=False, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _files(out) == _files(whole)
