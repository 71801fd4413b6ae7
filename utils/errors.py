"""Errors caused by what the user gave us (a bad file, key or value).

Entry scripts print such an error's message on one line and exit with status 2
instead of showing a traceback (see `utils.cli.run_main`). Anything else is a bug
and keeps its traceback.
"""


class GlassError(Exception):
    """A problem with the user's input; the message names the bad file, key or value."""


class ConfigError(GlassError):
    """An unknown key, a wrong type or an out-of-range value in a configuration."""


class DatasetError(GlassError):
    """A dataset on disk that does not follow the format of SPEC §1.1."""
