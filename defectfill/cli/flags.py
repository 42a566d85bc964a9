"""The spellings every verb shares: one flag per concept (the underscore form is an alias, as diffusers
scripts spell it), and the old spellings, kept only to say what replaced them."""

from __future__ import annotations

import argparse

from defectfill.errors import ConfigError


def output_dir(p: argparse.ArgumentParser, help: str | None = None, **kwargs) -> None:
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", help=help, **kwargs)


def data_dir(p: argparse.ArgumentParser, help: str | None = "reference data folder (images/, masks/, good/)",
             **kwargs) -> None:
    p.add_argument("--data-dir", "--data_dir", dest="data_dir", help=help, **kwargs)


def clean_dir(p: argparse.ArgumentParser, help: str | None = "folder of defect-free images", **kwargs) -> None:
    p.add_argument("--clean-dir", "--clean_dir", dest="clean_dir", help=help, **kwargs)


def overrides(p: argparse.ArgumentParser, help: str | None = "override a config key (YAML value; repeatable)") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume_from_checkpoint", "--resume-from-checkpoint", dest="resume_from_checkpoint",
                   help="'latest' or a checkpoint folder")


class _Renamed(argparse.Action):
    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="?", help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        raise ConfigError(f"{option_string} is now {self.new} ({parser.prog})")


def renamed(p: argparse.ArgumentParser, old: str, new: str) -> None:
    """Register ``old`` (hidden): using it is a one-line error naming ``new``. Registering it also stops
    argparse from reading it as an abbreviation of another flag."""
    p.add_argument(old, action=_Renamed, new=new)
