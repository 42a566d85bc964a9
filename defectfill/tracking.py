"""A dependency-free Accelerate tracker writing one JSON line per logged step."""

from __future__ import annotations

import json
import os
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process

from defectfill.errors import output_errors
from defectfill.runinfo import atomic_write_text


def truncate_metrics(path: str | os.PathLike, step: int) -> int:
    """Keep the lines of ``path`` (a metrics.jsonl) whose ``step`` is <= ``step``; returns how many
    were dropped. Atomic (temp file + rename). Lines that are not a JSON object with a step (the
    half-written last line of a killed run) are dropped too. A missing file is left missing."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            keep = isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step
        except ValueError:
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += line.strip() != ""
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped


class JSONLTracker(GeneralTracker):
    """`log_with=[JSONLTracker(dir)]`: appends `{"step": n, ...values}` to `dir/metrics.jsonl`.

    A failed write (disk full, read-only) is one OutputError naming the file; a line half-written
    then is dropped by `truncate_metrics` when the run resumes.
    """

    name = "jsonl"
    requires_logging_directory = False

    def __init__(self, logging_dir: str | Path, resume_hint: str = "rerun the same command to resume"):
        super().__init__()
        self.path = Path(logging_dir) / "metrics.jsonl"
        self.resume_hint = resume_hint

    @property
    def tracker(self):
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict):
        with output_errors(self.path.parent, self.resume_hint):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path.parent / "hparams.json", json.dumps(values, indent=2, default=str))

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        line = json.dumps({"step": step, **values}, default=float) + "\n"
        with output_errors(self.path, self.resume_hint):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(line)
