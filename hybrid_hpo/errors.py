"""Errors that reach users as one line naming the field and the fix (CLI exit code 2)."""


class ConfigError(ValueError):
    """Bad user input: the message names the offending field and how to fix it, on one line."""


def first_line(error: BaseException) -> str:
    """``"<type>: <first line of its message>"`` (just the type when the message is empty), for
    one-line errors that quote an exception raised by user or library code."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
