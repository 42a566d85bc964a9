"""Training plumbing every trainer shares: DefectFill's, the GAN baselines' and the fabric base's.

As diffusers keeps its ``training_utils.py``: stateless per-step randomness, the one checkpoint
format (safetensors + JSON, written atomically), resume and pruning, fp32 casting of trainable
parameters. A checkpoint is a folder ``checkpoint-<step>/`` holding

- ``model.safetensors``: the tensors the trainer needs back (trainable parameters, EMA, ...),
- ``optimizer-<name>.safetensors``: each optimiser's tensors (one file per optimiser),
- ``trainer_state.json``: ``global_step``, each optimiser's ``param_groups`` and the trainer's extras.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from defectfill.errors import ConfigError
from defectfill.runinfo import atomic_directory

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
MODEL_NAME = "model.safetensors"
STATE_NAME = "trainer_state.json"


def step_rng(seed: int, micro_step: int, process_index: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent numpy and torch generators for one micro-step of one process, so that a resumed
    run replays exactly the draws an uninterrupted one would have made."""
    seq = np.random.SeedSequence([seed, micro_step, process_index])
    torch_seed = int(seq.spawn(1)[0].generate_state(1, dtype=np.uint64)[0] % (2**63))
    return np.random.default_rng(seq), torch.Generator().manual_seed(torch_seed)


def cast_training_params(models, dtype: torch.dtype = torch.float32) -> None:
    """Trainable parameters of ``models`` (a module or a list of them) to ``dtype``; frozen ones keep
    theirs (diffusers' ``cast_training_params``: fp32 master weights under mixed precision)."""
    for model in models if isinstance(models, (list, tuple)) else [models]:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(dtype)


def trainable_state(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The trainable parameters, keyed ``<model>.<name>``, as fp32 contiguous CPU tensors."""
    return {f"{prefix}.{name}": p.detach().float().cpu().contiguous()
            for prefix, model in models.items() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(models: dict[str, torch.nn.Module], state: dict[str, torch.Tensor], where: Path) -> None:
    """Copy a `trainable_state` back; a different set of tensors is a ConfigError naming ``where``."""
    expected = trainable_state(models).keys()
    if set(expected) != set(state):
        raise ConfigError(f"{where}: trainable tensors do not match this config (LoRA rank or targets changed?)")
    for prefix, model in models.items():
        params = dict(model.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                if key.startswith(prefix + "."):
                    params[key[len(prefix) + 1:]].copy_(value)


def module_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """All parameters and buffers, keyed ``<module>.<name>``, as contiguous CPU tensors."""
    return {f"{key}.{name}": t.detach().cpu().clone().contiguous()
            for key, m in modules.items() for name, t in m.state_dict().items()}


def load_module_state(modules: dict[str, torch.nn.Module], state: dict[str, torch.Tensor], where: Path) -> None:
    """Load a `module_state` strictly; a mismatch is a one-line ConfigError naming ``where``."""
    for key, m in modules.items():
        prefix = key + "."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            m.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"{where}: weights of {key!r} do not fit this config ({exc})".splitlines()[0]) from exc


def optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state as (tensors for safetensors, JSON-able ``param_groups``)."""
    sd = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, s in sd["state"].items()
               for k, v in s.items() if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """The inverse of `optimizer_tensors`."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_training_state(directory: Path, tensors: dict[str, torch.Tensor], optimizers: dict, global_step: int,
                        extra: dict | None = None, writer=None) -> None:
    """Write checkpoint folder ``directory`` atomically (temp name, then rename): ``tensors``, every
    optimiser of ``optimizers`` (name → optimiser), ``global_step`` + ``extra`` in trainer_state.json;
    ``writer(tmp)`` may add files (e.g. a LoRA export) before the rename."""
    with atomic_directory(Path(directory)) as tmp:
        save_file(tensors, str(tmp / MODEL_NAME))
        state = {"global_step": int(global_step), "optimizers": {}, **(extra or {})}
        for name, optimizer in optimizers.items():
            opt_tensors, meta = optimizer_tensors(optimizer)
            save_file(opt_tensors, str(tmp / f"optimizer-{name}.safetensors"))
            state["optimizers"][name] = meta
        (tmp / STATE_NAME).write_text(json.dumps(state, indent=2, default=str))
        if writer is not None:
            writer(tmp)


def load_training_state(directory: Path, optimizers: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a `save_training_state` folder: restore each optimiser of ``optimizers`` in place and
    return (tensors, trainer state). Missing files are a ConfigError naming them."""
    directory = Path(directory)
    for name in (MODEL_NAME, STATE_NAME, *(f"optimizer-{n}.safetensors" for n in optimizers)):
        if not (directory / name).is_file():
            raise ConfigError(f"{directory / name}: missing; not a complete checkpoint folder")
    state = json.loads((directory / STATE_NAME).read_text())
    for name, optimizer in optimizers.items():
        restore_optimizer(optimizer, load_file(str(directory / f"optimizer-{name}.safetensors")),
                          state["optimizers"][name])
    return load_file(str(directory / MODEL_NAME)), state


def list_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpoint-<step>`` folders of ``output_dir``, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))


def resolve_resume(output_dir: Path, resume: str | None) -> Path | None:
    """``latest`` → newest checkpoint in the run folder (None when there is none yet); a path → it."""
    if not resume:
        return None
    output_dir = Path(output_dir)
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        path = output_dir / resume
    if not (path / STATE_NAME).is_file():
        raise ConfigError(f"{resume}: not a checkpoint folder (no {STATE_NAME})")
    return path


def prune_checkpoints(output_dir: Path, limit: int | None) -> None:
    """Keep the newest ``limit`` checkpoints (all when ``limit`` is None)."""
    if limit is None:
        return
    found = list_checkpoints(output_dir)
    for old in found[: max(0, len(found) - limit)]:
        shutil.rmtree(old)
