"""Make ultralytics run without network access: offline flag, private config dir, local fonts.

Import nothing from ultralytics at module level: :func:`prepare_ultralytics_offline` must run
before the first ``import ultralytics`` because ultralytics reads ``YOLO_OFFLINE`` and
``YOLO_CONFIG_DIR`` once, at import time.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")  # what ultralytics' check_font() would download
_TRUTHY = {"1", "true", "yes", "on", "y", "t"}  # ultralytics.utils.env_bool


def default_config_dir() -> Path:
    """``$XDG_CACHE_HOME/defectfill/ultralytics`` (default ``~/.cache/defectfill/ultralytics``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "defectfill" / "ultralytics"


def local_font() -> Path:
    """matplotlib's DejaVuSans.ttf, found without importing matplotlib when possible."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return path
    try:
        from matplotlib import font_manager

        path = Path(font_manager.findfont("DejaVu Sans", fallback_to_default=False))
    except (ImportError, ValueError) as e:
        raise RuntimeError(f"no local TTF font for ultralytics (need matplotlib's DejaVuSans.ttf): {e}") from e
    if not path.is_file():
        raise RuntimeError(f"no local TTF font for ultralytics: {path} does not exist")
    return path


def install_fonts(folder: Path, font: Path | None = None) -> list[Path]:
    """Copy a local TTF into ``folder`` as each of :data:`FONT_NAMES` (temp file + rename)."""
    font = local_font() if font is None else Path(font)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in FONT_NAMES:
        dest = folder / name
        if not (dest.is_file() and dest.stat().st_size == font.stat().st_size):
            tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
            shutil.copyfile(font, tmp)
            os.replace(tmp, dest)
        out.append(dest)
    return out


def prepare_ultralytics_offline(config_dir: str | os.PathLike | None = None) -> Path:
    """Set ``YOLO_OFFLINE=true`` and a private ``YOLO_CONFIG_DIR``, install fonts, disable settings sync.

    The config dir is ``config_dir``, else an already-set ``$YOLO_CONFIG_DIR``, else
    :func:`default_config_dir`. ultralytics keeps its settings and fonts in ``<dir>/Ultralytics``.
    Raises RuntimeError when ultralytics was imported before without ``YOLO_OFFLINE`` (it would
    believe it is online), or with another config dir than the one asked for. Returns the dir.
    """
    if "ultralytics" in sys.modules:
        return _already_imported(config_dir)
    folder = Path(config_dir or os.environ.get("YOLO_CONFIG_DIR") or default_config_dir()).expanduser().resolve()
    os.environ["YOLO_OFFLINE"] = "true"
    os.environ["YOLO_CONFIG_DIR"] = str(folder)
    install_fonts(folder / "Ultralytics")
    utils = importlib.import_module("ultralytics.utils")
    _finish(utils)
    return folder


def _already_imported(config_dir) -> Path:
    """Accept an ultralytics imported earlier only if it was imported offline (and into ``config_dir``)."""
    utils = importlib.import_module("ultralytics.utils")
    flag = os.environ.get("YOLO_OFFLINE", "")
    if flag.strip().lower() not in _TRUTHY or getattr(utils, "ONLINE", True):
        raise RuntimeError(
            "ultralytics was imported before YOLO_OFFLINE was set (YOLO_OFFLINE="
            f"{flag!r}); call defectfill.detect.prepare_ultralytics_offline() before importing ultralytics")
    user_dir = Path(utils.USER_CONFIG_DIR).resolve()
    if config_dir is not None and user_dir != Path(config_dir).expanduser().resolve() / "Ultralytics":
        raise RuntimeError(f"ultralytics was already imported with config dir {user_dir}, not {config_dir}")
    _finish(utils)
    return user_dir.parent


def _finish(utils) -> None:
    """Fonts into the config dir ultralytics really uses (it may fall back to /tmp); sync off."""
    install_fonts(Path(utils.USER_CONFIG_DIR))
    if utils.SETTINGS.get("sync", False):
        utils.SETTINGS.update({"sync": False})


def check_dataset_offline(data_yaml: str | os.PathLike, config_dir: str | os.PathLike | None = None) -> dict:
    """ultralytics' own ``check_det_dataset`` on ``data_yaml``, offline and without auto-download."""
    path = Path(data_yaml)
    if not path.is_file():
        raise FileNotFoundError(f"dataset YAML not found: {path}")
    prepare_ultralytics_offline(config_dir)
    from ultralytics.data.utils import check_det_dataset

    return check_det_dataset(str(path), autodownload=False)
