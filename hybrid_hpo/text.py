"""A character-level text corpus that ships with Python: the documentation topics of ``pydoc_data``.

``pydoc_data.topics.topics`` (part of CPython's standard library, used by ``help()``) maps ~90
topic names to English documentation text, ~465k characters in all. The topics are joined in
sorted-name order, so the corpus is identical on every machine with the same Python version.

Tokens are characters; the vocabulary is the sorted set of characters of the corpus (~100), so
token ids are stable for a given corpus. The corpus is cut into non-overlapping windows of
``WINDOW`` characters: x = tokens[t : t + T], y = tokens[t + 1 : t + T + 1] (next characters).
"""
from __future__ import annotations

import functools

import numpy as np

WINDOW = 32
"""Characters per example (T)."""


@functools.lru_cache(maxsize=1)
def corpus() -> str:
    """The documentation topics of ``pydoc_data.topics``, joined with blank lines in name order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


@functools.lru_cache(maxsize=1)
def vocabulary() -> str:
    """The sorted distinct characters of :func:`corpus`; token id = position in this string."""
    return "".join(sorted(set(corpus())))


def encode(text: str) -> np.ndarray:
    """int64 token ids of ``text`` (every character must be in :func:`vocabulary`)."""
    index = {char: i for i, char in enumerate(vocabulary())}
    return np.fromiter((index[char] for char in text), dtype=np.int64, count=len(text))


def decode(tokens) -> str:
    """The text of a sequence of token ids."""
    chars = vocabulary()
    return "".join(chars[int(t)] for t in tokens)


@functools.lru_cache(maxsize=1)
def windows(length: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """All non-overlapping windows: x (N, length) and y (N, length) int64, y shifted by one."""
    tokens = encode(corpus())
    count = (len(tokens) - 1) // length
    x = tokens[: count * length].reshape(count, length)
    y = tokens[1 : count * length + 1].reshape(count, length)
    return x, y
