"""Errors raised for bad user input, caught by the CLI and printed as one line."""


class DefectfillError(Exception):
    """Base class: a problem with the user's input, reported before heavy work starts."""


class DataError(DefectfillError):
    """A reference-data file is missing or invalid; the message names the file."""


class ModelError(DefectfillError):
    """A model folder or hub id cannot be used; the message names it."""


class ConfigError(DefectfillError):
    """A config file or value is invalid; the message names the key or file."""
