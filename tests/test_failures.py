"""A write failure in the middle of generation (disk full): one error line, nothing half-written,
and a rerun resumes to the dataset an uninterrupted run writes."""

from __future__ import annotations

import errno
import json

import numpy as np

from defectfill.config import GenerateConfig
from defectfill.errors import one_line_errors
from defectfill.generate import run_generation
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
    import defectfill.samples as samples

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
