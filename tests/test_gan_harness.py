"""The shared GAN training harness (gan_baselines/harness.py) on a toy conditional GAN (8x8 images):
training progress, safetensors-only checkpoints and pruning, bit-exact resume, the final folder,
Accelerate state between runs, and sample grids."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from defectfill.errors import ConfigError
from defectfill.training_utils import module_state
from gan_baselines.harness import GANHarness, GANTrainConfig, image_grid, read_final
from gan_baselines.losses import discriminator_loss, generator_loss

Z, CLASSES, SIDE, BATCH = 4, 2, 8, 8
# one fixed 8x8 pattern per class: a checkerboard of ±0.5, and its negative
_CHECKER = (torch.arange(SIDE)[:, None] + torch.arange(SIDE)[None]) % 2 * 1.0 - 0.5
PATTERNS = torch.stack([_CHECKER, -_CHECKER])[:, None]  # (K, 1, 8, 8)


class ToyG(nn.Module):
    """x = tanh(Linear([z, onehot(class)])) as a (1, 8, 8) image."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(Z + CLASSES, SIDE * SIDE)

    def forward(self, z, onehot):
        return torch.tanh(self.fc(torch.cat([z, onehot], 1))).view(-1, 1, SIDE, SIDE)


class ToyD(nn.Module):
    """Projection-free conditional critic: Linear([flatten(x), onehot(class)]) → one logit."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(SIDE * SIDE + CLASSES, 1)

    def forward(self, x, onehot):
        return self.fc(torch.cat([x.flatten(1), onehot], 1)).squeeze(1)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts and ends without a shared AcceleratorState (a failed test cannot leak one)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def make_cfg(out: Path, **kw) -> GANTrainConfig:
    base = {"output_dir": str(out), "max_steps": 6, "batch_size": BATCH, "checkpointing_steps": 2,
            "checkpoints_total_limit": None, "log_every": 1, "sample_every": 1000, "lr_g": 1e-2, "lr_d": 1e-2,
            "seed": 3}
    return GANTrainConfig(**{**base, **kw})


def make_harness(cfg: GANTrainConfig, init_seed: int = 0) -> GANHarness:
    torch.manual_seed(init_seed)
    g, d = ToyG(), ToyD()
    opts = {"G": torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2)),
            "D": torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2))}
    return GANHarness(cfg, {"G": g, "D": d}, opts, name="toy")


def train(h: GANHarness, on_step=None, global_rng: bool = False) -> list[float]:
    """The toy baseline's loop; the reconstruction loss ||G(z, c) − real||² is the simple objective.
    All randomness comes from `h.rng()` unless `global_rng` (a deliberate bug, for a negative control)."""
    g, d = h.modules["G"], h.modules["D"]
    opt_g, opt_d = h.optimizers["G"], h.optimizers["D"]
    recon_history = []
    for step in h.steps():
        if on_step is not None:
            on_step(step)
        _, gen = h.rng()
        labels = torch.randint(0, CLASSES, (BATCH,), generator=gen)
        onehot = F.one_hot(labels, CLASSES).float()
        real = PATTERNS[labels] + 0.05 * torch.randn(BATCH, 1, SIDE, SIDE, generator=gen)
        z = torch.randn(BATCH, Z) if global_rng else torch.randn(BATCH, Z, generator=gen)
        fake = g(z, onehot)

        def critic(x, onehot=onehot):  # this step's labels
            return d(x, onehot)

        loss_d, info = discriminator_loss(h.cfg.loss, critic, real, fake, h.gamma())
        opt_d.zero_grad()
        h.backward(loss_d)
        opt_d.step()
        recon = F.mse_loss(fake, real)
        loss_g = recon + 0.1 * generator_loss(h.cfg.loss, critic, real, fake)
        opt_g.zero_grad()
        h.backward(loss_g)
        opt_g.step()
        recon_history.append(recon.item())
        h.log({"recon": recon.item(), **info})
    return recon_history


def weights(h: GANHarness) -> dict[str, torch.Tensor]:
    """A copy of the modules' tensors (`module_state` aliases the live CPU parameters)."""
    return {k: v.clone() for k, v in module_state(h.plain).items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        assert torch.equal(value, b[key]), f"{key} differs"


# ---- (a) training makes progress, and is logged ----

def test_simple_objective_goes_down_and_is_logged(tmp_path):
    h = make_harness(make_cfg(tmp_path / "run", max_steps=40, checkpointing_steps=1000))
    recon = train(h)
    h.finish()
    assert len(recon) == 40
    assert np.mean(recon[-5:]) < 0.3 * np.mean(recon[:5])
    lines = [json.loads(s) for s in (tmp_path / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 41))
    assert [r["recon"] for r in lines] == pytest.approx(recon)
    assert {"loss_d"} <= set(lines[0])


# ---- (b) checkpoints: safetensors + json only, pruned to the limit ----

def test_checkpoints_are_safetensors_and_json_and_pruned(tmp_path):
    out = tmp_path / "run"
    h = make_harness(make_cfg(out, max_steps=8, checkpoints_total_limit=2))
    seen = {}

    def watch(step):
        seen[step] = sorted(p.name for p in out.glob("checkpoint-*"))

    train(h, on_step=watch)
    assert seen[1] == [] and seen[2] == ["checkpoint-2"]  # written after step 2 ...
    assert seen[5] == ["checkpoint-2", "checkpoint-4"]
    assert seen[7] == ["checkpoint-4", "checkpoint-6"]  # ... pruned to the newest 2
    # no checkpoint at the last step (final/ is written instead)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    for ckpt in out.glob("checkpoint-*"):
        names = sorted(p.name for p in ckpt.iterdir())
        assert names == ["model.safetensors", "optimizer-D.safetensors", "optimizer-G.safetensors",
                         "trainer_state.json"], names
        assert not [p for p in ckpt.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state["global_step"] == int(ckpt.name.split("-")[1])
        assert set(load_file(str(ckpt / "model.safetensors"))) == {"G.fc.weight", "G.fc.bias", "D.fc.weight",
                                                                     "D.fc.bias"}
    h.finish()


# ---- (c) resume exactness ----

def run_with_snapshot(out: Path, snapshot: Path, global_rng: bool = False, **kw) -> dict[str, torch.Tensor]:
    """6 steps; right after checkpoint-4 is written, copy the run folder (a killed run's disk state)."""
    h = make_harness(make_cfg(out, **kw))

    def copy_at_4(step):
        if step == 4:
            shutil.copytree(out, snapshot)

    train(h, on_step=copy_at_4, global_rng=global_rng)
    state = weights(h)
    h.finish()
    return state


def resume_snapshot(snapshot: Path, global_rng: bool = False, **kw) -> tuple[GANHarness, dict, dict]:
    h = make_harness(make_cfg(snapshot, **kw), init_seed=99)  # different init: weights must come from disk
    before = weights(h)
    h.resume("latest")
    assert h.step == 4
    train(h, global_rng=global_rng)
    state = weights(h)
    h.finish()
    return h, before, state


@pytest.mark.parametrize("loss", ["bce", "r3gan"])
def test_resume_from_latest_is_bit_identical(tmp_path, loss):
    full = run_with_snapshot(tmp_path / "full", tmp_path / "resumed", loss=loss)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    _, before, resumed = resume_snapshot(tmp_path / "resumed", loss=loss)
    assert not torch.equal(before["G.fc.weight"], full["G.fc.weight"])
    assert_same_state(resumed, full)
    # the final folders and the metric logs (steps 1-4 from the snapshot, 5-6 resumed) agree too
    assert_same_state(load_file(str(tmp_path / "resumed" / "final" / "weights.safetensors")),
                      load_file(str(tmp_path / "full" / "final" / "weights.safetensors")))
    assert ((tmp_path / "resumed" / "logs" / "metrics.jsonl").read_text()
            == (tmp_path / "full" / "logs" / "metrics.jsonl").read_text())


def test_resume_check_catches_randomness_outside_h_rng(tmp_path):
    """Negative control: the same comparison fails when the loop draws from the global RNG."""
    full = run_with_snapshot(tmp_path / "full", tmp_path / "resumed", global_rng=True)
    _, _, resumed = resume_snapshot(tmp_path / "resumed", global_rng=True)
    assert not torch.equal(resumed["G.fc.weight"], full["G.fc.weight"])


def test_rng_is_a_function_of_seed_and_step(tmp_path):
    def draws(seed, name):
        h = make_harness(make_cfg(tmp_path / name, max_steps=4, seed=seed))
        out = []
        for _ in h.steps():
            rng, gen = h.rng()
            out.append((float(rng.random()), float(torch.rand(1, generator=gen))))
        h.finish()
        return out

    a, b, c = draws(3, "a"), draws(3, "b"), draws(4, "c")
    assert a == b  # same seed, same step: same draws
    assert len(set(a)) == 4  # a new stream every step
    assert not set(a) & set(c)  # another seed: other draws


def test_resume_latest_without_checkpoints_starts_from_scratch(tmp_path):
    h = make_harness(make_cfg(tmp_path / "run"))
    before = weights(h)
    h.resume("latest")
    assert h.step == 0
    assert_same_state(weights(h), before)
    h.finish()


# ---- (d) the final folder ----

def test_finish_writes_final_folder_that_read_final_reads(tmp_path):
    out = tmp_path / "run"
    h = make_harness(make_cfg(out, max_steps=3))
    train(h)
    trained = weights(h)
    final = h.finish({"image_size": 8, "defect_types": ["a", "b"]})
    assert final == out / "final"
    assert sorted(p.name for p in final.iterdir()) == ["config.yaml", "run_info.json", "weights.safetensors"]
    config, saved = read_final(final)
    assert config["baseline"] == "toy" and config["image_size"] == 8 and config["defect_types"] == ["a", "b"]
    assert config["max_steps"] == 3 and config["seed"] == 3 and config["loss"] == "bce"
    assert_same_state(saved, trained)
    info = json.loads((final / "run_info.json").read_text())
    assert info["seed"] == 3 and info["global_step"] == 3 and info["config"]["baseline"] == "toy"
    assert json.loads((out / "run_info.json").read_text())["final_dir"] == str(final)


def test_read_final_errors_name_the_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path / "nope" / "config.yaml")):
        read_final(tmp_path / "nope")
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.yaml").write_text("baseline: toy\n")
    with pytest.raises(ConfigError, match=str(half / "weights.safetensors")):
        read_final(half)


# ---- (e) several harnesses in one process ----

def test_harnesses_with_different_mixed_precision_do_not_clash(tmp_path):
    precisions = ["no", "bf16", "no"]
    for i, precision in enumerate(precisions):
        h = make_harness(make_cfg(tmp_path / f"run{i}", max_steps=2, mixed_precision=precision))
        assert h.accelerator.mixed_precision == precision
        before = weights(h)
        train(h)
        after = weights(h)
        assert not torch.equal(before["G.fc.weight"], after["G.fc.weight"])
        assert after["G.fc.weight"].dtype == torch.float32
        h.finish()


def test_without_finish_a_second_precision_clashes(tmp_path):
    """Negative control for the test above: the shared Accelerate state is what finish() resets."""
    make_harness(make_cfg(tmp_path / "a", mixed_precision="no"))
    with pytest.raises(ValueError, match="bf16"):
        make_harness(make_cfg(tmp_path / "b", mixed_precision="bf16"))


# ---- (f) sample grids ----

def test_image_grid_size_cells_and_mask_row(tmp_path):
    cell, pad = 16, 2
    white = torch.ones(3, 8, 8)
    black = -torch.ones(3, 8, 8)
    mask = torch.zeros(1, 8, 8)
    mask[:, :, 4:] = 1.0  # right half set
    quarter = torch.full((1, 8, 8), 0.25)
    path = image_grid([[white, black], [mask, quarter, white]], tmp_path / "sub" / "grid.png", cell=cell)
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == (3 * (cell + pad) + pad, 2 * (cell + pad) + pad)  # (W, H) = (56, 38)
        a = np.asarray(im)

    def at(row, col, dy=cell // 2, dx=cell // 2):
        return tuple(a[pad + row * (cell + pad) + dy, pad + col * (cell + pad) + dx])

    assert at(0, 0) == (255, 255, 255) and at(0, 1) == (0, 0, 0)
    assert at(0, 2) == (40, 40, 40)  # row 0 has two cells: the third is background
    assert at(1, 0, dx=2) == (0, 0, 0) and at(1, 0, dx=cell - 2) == (255, 255, 255)  # mask row, 1 channel
    assert at(1, 1) == (64, 64, 64)  # 0.25 · 255 = 63.75 → 64
    assert tuple(a[0, 0]) == (40, 40, 40)  # padding


def test_save_grid_names_the_step(tmp_path):
    h = make_harness(make_cfg(tmp_path / "run", max_steps=1))
    path = h.save_grid([[torch.zeros(3, 8, 8)]], "samples")
    assert path == tmp_path / "run" / "samples" / "samples-000001.png" and path.is_file()
    h.finish()
