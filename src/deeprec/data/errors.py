"""The one exception type for bad data: its message names the file and line."""

from __future__ import annotations


class DataError(ValueError):
    """A ratings/titles file or dataset request that cannot be used, as one line."""
