"""The one error type of the export package: a problem the user can fix, in one line."""
from __future__ import annotations


class ExportError(ValueError):
    """Bad export input or a refused/corrupted export; the message names the file or tensor."""
