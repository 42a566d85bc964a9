"""The one command line: every verb in ``defectfill --help``, one spelling per concept (hyphen form, with
the underscore form as an alias), and old spellings that fail with one line naming the new one."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from defectfill.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
VERBS = ("make-tiny-model", "make-procedural-data", "train", "fit", "generate", "detect", "benchmark",
         "pretrain-base", "demo")
# the spellings that are gone: each is a hidden flag that fails naming its replacement
OLD = {"--out": "--output-dir", "--output": "--output-dir", "--data": "--data-dir", "--reference": "--data-dir",
       "--clean": "--clean-dir", "--roi": "--roi-dir", "--eval-data": "--eval-data-dir"}
# concept -> (dest, the spellings every verb that has it accepts)
CONCEPTS = {"output_dir": ("--output-dir", "--output_dir"), "data_dir": ("--data-dir", "--data_dir"),
            "clean_dir": ("--clean-dir", "--clean_dir"), "overrides": ("--set",), "config": ("--config",),
            "resume_from_checkpoint": ("--resume_from_checkpoint", "--resume-from-checkpoint")}


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) for every parser under ``parser``: ("fit",), ("detect", "build"), ..."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "defectfill", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_help_lists_every_verb_and_the_nested_helps_work():
    res = _cli("--help")
    assert res.returncode == 0, res.stderr
    listed = res.stdout.split("positional arguments:")[1]
    for verb in VERBS:
        assert f"\n    {verb}" in listed, verb
    assert {p[0] for p, _ in _parsers(build_parser()) if p} == set(VERBS)
    for args, expect in ((("detect", "--help"), ("build", "train", "eval")),
                         (("detect", "build", "--help"), ("--data-dir", "--output-dir", "--synthetic", "--class-names")),
                         (("detect", "train", "--help"), ("--data-yaml", "--output-dir", "--epochs")),
                         (("benchmark", "--help"), ("--config", "--eval-data-dir", "--output-dir", "--report-only"))):
        res = _cli(*args)
        assert res.returncode == 0, (args, res.stderr)
        assert res.stdout.startswith(f"usage: defectfill {' '.join(a for a in args if a != '--help')} ")
        for word in expect:
            assert word in res.stdout, (args, word)


def test_in_process_help_exits_zero(capsys):
    for args in (["--help"], ["detect", "--help"], ["detect", "eval", "--help"], ["benchmark", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 0
        assert capsys.readouterr().out.startswith("usage: defectfill")


def test_one_spelling_per_concept():
    seen = {}
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            visible = action.help != argparse.SUPPRESS
            for opt in action.option_strings:
                assert not (visible and opt in OLD), f"{' '.join(path)}: {opt} is an old spelling"
                if not visible:
                    assert opt in OLD, f"{' '.join(path)}: hidden flag {opt} is not a known old spelling"
            if visible and action.dest in CONCEPTS:
                assert tuple(action.option_strings) == CONCEPTS[action.dest], (path, action.option_strings)
                seen.setdefault(action.dest, []).append(" ".join(path))
    assert len(seen["output_dir"]) >= 7 and len(seen["data_dir"]) >= 5, seen


@pytest.mark.parametrize(("argv", "old", "new"), [
    (["fit", "--generator", "shade", "--data", "D"], "--data", "--data-dir"),
    (["pretrain-base", "--output", "O"], "--output", "--output-dir"),
    (["pretrain-base", "--data", "D"], "--data", "--data-dir"),
    (["generate", "--clean", "C"], "--clean", "--clean-dir"),
    (["generate", "--reference", "R"], "--reference", "--data-dir"),
    (["generate", "--roi", "R"], "--roi", "--roi-dir"),
    (["detect", "build", "--reference", "R", "--out", "O"], "--reference", "--data-dir"),
    (["detect", "build", "--data-dir", "R", "--out", "O"], "--out", "--output-dir"),
    (["detect", "train", "--data", "d.yaml"], "--data", "--data-yaml"),
    (["detect", "eval", "--weights", "w.pt", "--data", "d.yaml"], "--data", "--data-yaml"),
    (["benchmark", "--config", "c.yaml", "--eval-data", "E"], "--eval-data", "--eval-data-dir"),
])
def test_old_spelling_is_one_line_naming_the_new(argv, old, new, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {old} is now {new} (defectfill ")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_underscore_aliases_parse_the_same():
    parser = build_parser()
    for hyphen, underscore in (
            (["fit", "--data-dir", "D", "--output-dir", "O"], ["fit", "--data_dir", "D", "--output_dir", "O"]),
            (["generate", "--clean-dir", "C", "--data-dir", "D", "--roi-dir", "R", "--output-dir", "O"],
             ["generate", "--clean_dir", "C", "--data_dir", "D", "--roi_dir", "R", "--output_dir", "O"]),
            (["train", "--config", "c", "--resume-from-checkpoint", "latest", "--max-train-steps", "3"],
             ["train", "--config", "c", "--resume_from_checkpoint", "latest", "--max_train_steps", "3"]),
            (["benchmark", "--config", "c", "--eval-data-dir", "E"], ["benchmark", "--config", "c", "--eval_data_dir", "E"]),
            (["detect", "train", "--data-yaml", "d.yaml", "--output-dir", "O"],
             ["detect", "train", "--data_yaml", "d.yaml", "--output_dir", "O"])):
        a, b = parser.parse_args(hyphen), parser.parse_args(underscore)
        assert vars(a) == vars(b), hyphen


def test_train_shim_is_the_train_verb():
    sys.path.insert(0, str(REPO / "train"))
    try:
        import train_defectfill
    finally:
        sys.path.remove(str(REPO / "train"))
    argv = ["--config", "c.yaml", "--data_dir", "D", "--output_dir", "O", "--max_train_steps", "2", "--set", "seed=1"]
    shim = vars(train_defectfill.parse_args(argv))
    verb = vars(build_parser().parse_args(["train", *argv]))
    assert {k: v for k, v in verb.items() if k not in ("command", "func")} == shim
    assert verb["func"] is train_defectfill.train_verb.run


def test_output_dir_alias_writes_there(woven_root, tmp_path, capsys):
    """``--data_dir`` / ``--output_dir`` (diffusers' spelling) run the verb into that folder."""
    out = tmp_path / "fit"
    assert main(["fit", "--generator", "shade", "--data_dir", str(woven_root), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"checkpoint: {out}") and (out / "final").is_dir()
    built = tmp_path / "det"
    assert main(["detect", "build", "--data_dir", str(woven_root), "--output_dir", str(built),
                 "--set", "val_fraction=0.5"]) == 0
    assert (built / "data.yaml").is_file() and f"dataset: {built.resolve() / 'data.yaml'}" in capsys.readouterr().out
