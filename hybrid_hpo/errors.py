"""Errors that reach users as one line naming the field and the fix (CLI exit code 2)."""


class ConfigError(ValueError):
    """Bad user input: the message names the offending field and how to fix it, on one line."""
