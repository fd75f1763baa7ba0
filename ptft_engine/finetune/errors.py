"""The fine-tuning package's error type, below its data readers so they share it without
importing each other."""
from __future__ import annotations


class FinetuneDataError(ValueError):
    """Bad fine-tuning data; the message names the file and line, or the shard and key, or the field."""
