"""Errors caused by the user's input rather than by a bug in segkit.

The entry points print these as one clean message (see ``segkit.cli``); anything else
keeps its traceback. ``segkit.data.io.DataError`` and ``segkit.checkpoint.CheckpointError``
are the data and checkpoint cases.
"""


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""
