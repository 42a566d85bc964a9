"""Realism-free CONTROL generators for the benchmark, behind the `Generator` interface.

They answer "does the detector learn anything from synthetic defects beyond *something changed
inside the mask*?": each one changes the mask's pixels by a seeded random amount with no attempt
at looking like a real defect and no learning at all.

- `ShadeGenerator` ("shade"): every mask pixel shifted by ONE constant drawn from the seed, its
  magnitude uniform in ``amplitude`` = [low, high] grey levels, its sign random.
- `NoiseBlobGenerator` ("noise_blob"): a multi-octave Perlin noise texture (`perlin_noise`), as
  DRAEM (Zavrtanik, Kristan, Skočaj, "DRAEM - A discriminatively trained reconstruction embedding
  for surface anomaly detection", ICCV 2021) uses for its simulated anomalies, made zero-mean with
  max |value| 1 inside the mask and scaled to a peak |change| drawn uniform in ``amplitude``.

Both add their change with a feather: weight 1 on the mask, falling linearly outside it and 0
beyond ``feather`` px (`defectfill.generation.compositing.blend_weights`: ``1 − d / (feather + 1)`` at
Euclidean distance ``d <= feather``). The result is rounded and clipped to uint8; the same change is
added to every channel of an RGB image. Pixels farther than ``dilation = ceil(feather)`` from the
mask stay bit-identical (`preserves_background`); a generation run's ``dilation`` caps the feather.
The output depends only on (clean, mask, seed).

`fit` learns nothing: it writes the resolved config to ``<output_dir>/final/config.yaml`` (+
run_info.json) and returns that folder, which `from_checkpoint` reads back.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from defectfill.errors import ConfigError
from defectfill.generation.compositing import blend_weights
from defectfill.generators import Generator
from defectfill.runinfo import atomic_directory, write_run_info
from gan_baselines.copy_paste.model import bbox, check_inputs, grow

CONFIG_NAME = "config.yaml"
NO_WEIGHTS = "none: a control generator has no learned weights (a seeded random change inside the mask)"


# ---- pure helpers ----

def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade curve 6t⁵ − 15t⁴ + 10t³ (zero first and second derivative at 0 and 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_octave(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """One octave of 2-D gradient (Perlin) noise of ``shape``: random unit gradients on a lattice
    every ``scale`` px (offset by a random phase), dot products with the offsets to the 4 corners,
    blended with the quintic fade. Values lie in [−√½, √½] and are 0 on the lattice points."""
    h, w = int(shape[0]), int(shape[1])
    if scale < 1:
        raise ValueError(f"perlin noise lattice spacing must be >= 1 px, got {scale}")
    phase_y, phase_x = rng.uniform(0.0, scale, size=2)
    y = (np.arange(h) + phase_y) / scale
    x = (np.arange(w) + phase_x) / scale
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(int(y[-1]) + 2, int(x[-1]) + 2))
    grad_y, grad_x = np.sin(angles), np.cos(angles)
    y0, x0 = np.floor(y).astype(np.int64)[:, None], np.floor(x).astype(np.int64)[None, :]
    fy, fx = y[:, None] - y0, x[None, :] - x0

    def corner(dy: int, dx: int) -> np.ndarray:
        return grad_y[y0 + dy, x0 + dx] * (fy - dy) + grad_x[y0 + dy, x0 + dx] * (fx - dx)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    return top + v * (bottom - top)


def perlin_noise(shape: tuple[int, int], rng: np.random.Generator, octaves: int = 3, base_scale: float = 16.0,
                 persistence: float = 0.5) -> np.ndarray:
    """Multi-octave 2-D Perlin noise (float64, ``shape``), the texture DRAEM (Zavrtanik et al., ICCV
    2021) thresholds into anomaly masks and blends in as anomaly texture.

    Octave ``k`` has lattice spacing ``base_scale / 2**k`` px and weight ``persistence**k``; the sum
    is divided by the total weight, so values lie in [−√½, √½] ⊂ [−1, 1] with mean ≈ 0. Deterministic
    in (shape, rng state); the finest spacing must be >= 1 px."""
    if octaves < 1:
        raise ValueError(f"octaves must be >= 1, got {octaves}")
    total = np.zeros((int(shape[0]), int(shape[1])), np.float64)
    weight, amp = 0.0, 1.0
    for k in range(octaves):
        total += amp * perlin_octave(shape, base_scale / 2 ** k, rng)
        weight += amp
        amp *= persistence
    return total / weight


def shade_change(rng: np.random.Generator, amplitude: tuple[float, float]) -> float:
    """The shade control's one shift in grey levels: a random sign times a magnitude uniform in
    ``amplitude`` = (low, high). Draws the sign first, then the magnitude."""
    sign = 1.0 if rng.integers(2) else -1.0
    return sign * float(rng.uniform(amplitude[0], amplitude[1]))


def noise_change(mask: np.ndarray, rng: np.random.Generator, amplitude: tuple[float, float], octaves: int = 3,
                 base_scale: float = 16.0) -> tuple[np.ndarray, float]:
    """The noise_blob control's change field over ``mask``'s frame, in grey levels, and its peak.

    The peak |change| is drawn uniform in ``amplitude``, then `perlin_noise` of the mask's shape is
    shifted to zero mean and scaled to max |value| 1 over the mask pixels, times the peak, and
    clipped to ±peak (the feather ring never exceeds the peak). A mask whose centred noise is 0
    everywhere (a single pixel) gets a constant ±peak instead, sign from ``rng``."""
    peak = float(rng.uniform(amplitude[0], amplitude[1]))
    noise = perlin_noise(mask.shape, rng, octaves=octaves, base_scale=base_scale)
    noise = noise - noise[mask].mean()
    top = float(np.abs(noise[mask]).max())
    if top < 1e-12:
        noise, top = np.full(mask.shape, 1.0 if rng.integers(2) else -1.0), 1.0
    return np.clip(noise / top, -1.0, 1.0) * peak, peak


def add_feathered(clean: np.ndarray, mask: np.ndarray, change, feather: float) -> np.ndarray:
    """``clean + alpha * change`` rounded and clipped to uint8, alpha = ``blend_weights(mask, feather)``
    (1 on the mask, linear fall-off, 0 beyond ``feather`` px); pixels with alpha 0 are ``clean`` bit
    for bit. ``change`` is a scalar or an array of the mask's shape; RGB gets it on every channel."""
    alpha = blend_weights(mask, feather).astype(np.float64)
    delta = alpha * change
    if clean.ndim == 3:
        delta, alpha = delta[..., None], alpha[..., None]
    out = np.clip(np.rint(clean.astype(np.float64) + delta), 0, 255).astype(np.uint8)
    return np.where(alpha > 0, out, clean)


# ---- configs ----

def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class ControlConfig:
    """Settings shared by the control generators (see the module docstring)."""

    amplitude: list[float] = field(default_factory=lambda: [15.0, 40.0])  # [low, high] |change|, grey levels
    feather: float = 1.5  # px of linear fall-off outside the mask

    def validate(self) -> None:
        amp = self.amplitude
        if _number(amp):
            amp = [amp]
        if not (isinstance(amp, (list, tuple)) and len(amp) in (1, 2) and all(_number(a) for a in amp)
                and 0 < amp[0] <= amp[-1] <= 255):
            raise ConfigError(f"amplitude must be [low, high] grey levels with 0 < low <= high <= 255, "
                              f"got {self.amplitude!r}")
        self.amplitude = [float(amp[0]), float(amp[-1])]
        if not (_number(self.feather) and self.feather >= 0):
            raise ConfigError(f"feather must be a number >= 0 (px), got {self.feather!r}")
        self.feather = float(self.feather)


@dataclass
class NoiseBlobConfig(ControlConfig):
    """`ControlConfig` + the Perlin texture: ``octaves`` lattices, the coarsest every ``base_scale`` px."""

    octaves: int = 3
    base_scale: float = 16.0

    def validate(self) -> None:
        super().validate()
        if isinstance(self.octaves, bool) or not isinstance(self.octaves, int) or not 1 <= self.octaves <= 8:
            raise ConfigError(f"octaves must be an integer in 1..8, got {self.octaves!r}")
        if not (_number(self.base_scale) and self.base_scale / 2 ** (self.octaves - 1) >= 1):
            raise ConfigError(f"base_scale must be a number >= 2**(octaves - 1) = {2 ** (self.octaves - 1)} "
                              f"(finest lattice >= 1 px), got {self.base_scale!r}")
        self.base_scale = float(self.base_scale)


# ---- the generators ----

class ControlGenerator(Generator):
    """Shared machinery of the controls: config handling, the window around the mask, the feathered
    add, fit / from_checkpoint. Subclasses set `name`, `config_class` and implement `draw`."""

    name = "control"
    config_class: type[ControlConfig] = ControlConfig
    preserves_background = True
    class_conditional = False  # no defect class: a user's masks need no --defect-type

    def __init__(self, cfg: ControlConfig | None = None, checkpoint: str | os.PathLike | None = None,
                 max_dilation: int | None = None):
        self.cfg = cfg if cfg is not None else self.config_class()
        self.cfg.validate()
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        # a generation run's composite band caps the feather, so its background guarantee holds
        self.feather = self.cfg.feather if max_dilation is None else min(self.cfg.feather, float(max_dilation))
        self.dilation = math.ceil(self.feather)

    def draw(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[float | np.ndarray, dict]:
        """The change (grey levels; scalar or array of ``mask``'s shape) and what was drawn (info)."""
        raise NotImplementedError

    def synthesize(self, clean: np.ndarray, mask: np.ndarray, seed: int, defect_class: str | None = None,
                   placement=None) -> tuple[np.ndarray, dict]:
        """The seeded change added to the mask of ``clean`` (feathered); ``defect_class`` and
        ``placement`` are ignored."""
        clean, mask = check_inputs(clean, mask)
        box = bbox(mask)
        wy, wx, wh, ww = grow(box, self.dilation + 1, mask.shape)  # holds every pixel the feather reaches
        window_mask = mask[wy:wy + wh, wx:wx + ww]
        change, drawn = self.draw(window_mask, np.random.default_rng(seed))
        result = clean.copy()
        result[wy:wy + wh, wx:wx + ww] = add_feathered(clean[wy:wy + wh, wx:wx + ww], window_mask, change,
                                                       self.feather)
        y0, x0, h, w = box
        return result, {"generator": self.name, "control": True, **drawn, "feather": self.feather,
                        "bbox_xyxy": [x0, y0, x0 + w, y0 + h]}

    def metadata(self) -> dict:
        return {"generator": self.name, "control": True, "learned_weights": False, "weights": NO_WEIGHTS,
                "checkpoint": self.checkpoint, "feather_applied": self.feather, "dilation": self.dilation,
                "settings": dataclasses.asdict(self.cfg)}

    # -- config plumbing --
    @classmethod
    def make_config(cls, values: dict, where: str) -> ControlConfig:
        """``config_class`` from ``values``; unknown keys and bad values are ConfigErrors naming ``where``."""
        known = [f.name for f in dataclasses.fields(cls.config_class)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(known)})")
        try:
            cfg = cls.config_class(**values)
            cfg.validate()
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        return cfg

    @classmethod
    def from_init_args(cls, init_args: dict | None = None) -> ControlGenerator:
        """An unfitted control from its config keys (e.g. ``{amplitude: [15, 40], feather: 1.5}``)."""
        return cls(cls.make_config(dict(init_args or {}), f"{cls.name} init_args"))

    def fit(self, dataset, output_dir: str | os.PathLike, seed: int = 0) -> Path:
        """No learning: write the resolved config to ``<output_dir>/final/config.yaml`` (+ run_info.json)
        and return that folder. ``dataset`` is not read."""
        config = {"generator": self.name, **dataclasses.asdict(self.cfg)}
        final = Path(output_dir) / "final"
        with atomic_directory(final) as tmp:
            (tmp / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
            write_run_info(tmp, config, seed, weights=NO_WEIGHTS, control=True)
        write_run_info(output_dir, config, seed, weights=NO_WEIGHTS, control=True, final_dir=str(final))
        self.checkpoint = str(final)
        return final

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | None, device="cpu", dilation: int | None = None,
                        **kwargs) -> ControlGenerator:
        """Load from the ``final/`` folder `fit` wrote (or its run folder); ``kwargs`` (generator_args)
        override its keys; ``dilation`` (a generation run's band) caps the feather."""
        if checkpoint is None:
            raise ConfigError(f"{cls.name} needs checkpoint: the final/ folder its fit wrote")
        folder = Path(checkpoint)
        if not (folder / CONFIG_NAME).is_file() and (folder / "final" / CONFIG_NAME).is_file():
            folder = folder / "final"
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"{path}: missing; not a {cls.name} run folder (run its fit first)")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read ({exc})".splitlines()[0]) from exc
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        written_by = values.pop("generator", cls.name)
        if written_by != cls.name:
            raise ConfigError(f"{path}: written by generator {written_by!r}, not {cls.name}")
        cfg = cls.make_config(values, str(path))
        cfg = cls.make_config({**dataclasses.asdict(cfg), **kwargs}, f"{cls.name} generator_args")
        return cls(cfg, checkpoint=folder, max_dilation=dilation)


class ShadeGenerator(ControlGenerator):
    """Control: the whole mask shifted by one seeded constant (±uniform(amplitude) grey levels)."""

    name = "shade"
    config_class = ControlConfig

    def draw(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[float, dict]:
        shift = shade_change(rng, self.cfg.amplitude)
        return shift, {"shift": shift, "amplitude": abs(shift)}


class NoiseBlobGenerator(ControlGenerator):
    """Control: DRAEM-style multi-octave Perlin noise in the mask, peak |change| uniform(amplitude)."""

    name = "noise_blob"
    config_class = NoiseBlobConfig

    def draw(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        change, peak = noise_change(mask, rng, self.cfg.amplitude, self.cfg.octaves, self.cfg.base_scale)
        return change, {"amplitude": peak, "noise": "perlin", "octaves": self.cfg.octaves,
                        "base_scale": self.cfg.base_scale}
