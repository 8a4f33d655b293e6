"""The one exception type for bad data: its message names the file and line."""

from __future__ import annotations

from deeprec.errors import DataError

__all__ = ["DataError"]
