"""The downstream tasks a benchmark cell can run, behind one small interface.

A task says which metrics its cells report (``metrics``; ``headline`` first), which one is its
recall, which metrics get paired confidence intervals from per-source records (``stat_metrics``),
what it checks before any cell (``check``) and how one cell runs (``run``: a plain function of the
context, the cell and the unit's data → a result dict with ``metrics`` and ``evaluations``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class UnitData:
    """What every cell of one (unit, seed) shares: the split, its folders, the generated samples."""

    train_ids: set
    val_ids: set
    pool_dir: Path
    train_dir: Path
    unit_dir: Path
    gen_dir: Path | None = None
    cache: dict = field(default_factory=dict)  # task-private lazily loaded data (e.g. decoded images)


class Task:
    name = "task"
    metrics: tuple = ()
    headline = ""
    recall = ""
    stat_metrics: tuple = ()  # metrics with per-source records (paired bootstrap over evaluation sources)

    def check(self, cfg) -> None:
        """Cheap checks of the task's settings in the benchmark config (ConfigError naming the key)."""

    def run(self, ctx, cell, data: UnitData) -> dict:
        raise NotImplementedError

    def summary(self, metrics: dict) -> str:
        """One log line of a finished cell."""
        return f"{self.headline} {metrics.get(self.headline)}"


def registry() -> dict[str, Task]:
    from defectfill.benchmark.tasks.openset import OpenSetTask  # lazy: the task modules import Task from here
    from defectfill.benchmark.tasks.rtdetr import RTDETRTask
    from defectfill.benchmark.tasks.segmenter import SegmenterTask

    return {t.name: t for t in (SegmenterTask(), RTDETRTask(), OpenSetTask())}


TASKS = registry()


def get(name: str) -> Task:
    return TASKS[name]
