"""A dependency-free Accelerate tracker writing one JSON line per logged step."""

from __future__ import annotations

import json
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process


class JSONLTracker(GeneralTracker):
    """`log_with=[JSONLTracker(dir)]`: appends `{"step": n, ...values}` to `dir/metrics.jsonl`."""

    name = "jsonl"
    requires_logging_directory = False

    def __init__(self, logging_dir: str | Path):
        super().__init__()
        self.path = Path(logging_dir) / "metrics.jsonl"

    @property
    def tracker(self):
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        (self.path.parent / "hparams.json").write_text(json.dumps(values, indent=2, default=str))

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}, default=float) + "\n")
