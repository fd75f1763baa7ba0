"""Typed configuration of the data stream; unknown keys are an error naming the key."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class DataConfig(BaseModel):
    """Where the shards are and how the stream turns them into batches.

    `shards`: paths, globs, directories or index files (`index.json` written by
    `ptft shard`), brace ranges (shard-{000000..000127}.tar), or the same at
    http(s)://, s3://, gs:// or behind `pipe:CMD`; each entry is one *source* for
    weighted mixing. Remote shards are read through the node-local cache (`cache_*`).
    `batch_size` is per rank. Text batches hold batch_size rows of seq_len tokens packed
    as the epoch's packing plan says (`packing: plan`, the default): a document that does
    not fit continues in the next row, and the rows after the epoch's last whole step open
    the next epoch. `packing: batch` packs each batch from its own `docs_per_batch`
    documents and drops what does not fit ("auto" sizes it from the corpus's first
    documents). The token,
    pad and dropped counts are in `loader.stats`. Image batches hold batch_size images,
    audio batches batch_size clips (`audio_*` keys). `shuffle_buffer` is the size of the
    blocks whose order is shuffled after the shard order is (bigger = better mixed, still
    local reads).
    """

    model_config = ConfigDict(extra="forbid")

    shards: list[str] = Field(min_length=1)
    eval_shards: list[str] | None = None
    kind: Literal["text", "image", "image_text", "audio"] = "text"

    # text
    tokenizer: str | None = None
    seq_len: int = Field(128, ge=4)
    packing: Literal["plan", "batch"] = "plan"
    docs_per_batch: int | Literal["auto"] = "auto"  # packing: batch only
    mask_prob: float = Field(0.15, ge=0.0, le=1.0)
    replace_prob: float = Field(0.8, ge=0.0, le=1.0)
    random_prob: float = Field(0.1, ge=0.0, le=1.0)
    mask_backend: str | None = None
    mask_in: Literal["worker", "step"] = "worker"  # step: the trainer masks on its device (Loader.on_device)
    add_bos: bool = False
    text_field: str = "txt"

    # images
    image_size: int = Field(224, ge=8)
    image_channels: Literal[1, 3] = 3  # 1: luminance, for grayscale models such as the digits ViT
    crop_scale: tuple[float, float] = (0.2, 1.0)
    color_jitter: float = Field(0.4, ge=0.0, le=1.0)
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)

    # audio (data/audio.py): a random window of audio_crop_samples frames per clip, drawn from
    # (seed, epoch, position); shorter clips and, without a crop, all clips are padded to the
    # batch's longest. audio_sample_rate: the rate the shards must have (None: any, all equal)
    audio_crop_samples: int | None = Field(None, ge=1)
    audio_normalize: bool = True  # zero mean, unit variance per clip over its real frames
    audio_sample_rate: int | None = Field(None, ge=1)

    # stream
    batch_size: int = Field(8, ge=1)
    num_workers: int = Field(2, ge=0)
    prefetch_factor: int = Field(2, ge=1)
    seed: int = Field(0, ge=0)
    shuffle: bool = True
    shuffle_buffer: int = Field(10_000, ge=1)
    resample: bool = False
    samples_per_epoch: int | None = Field(None, ge=1)
    weights: list[float] | None = None
    strict: bool = False
    emit_sample_index: bool = False  # add "sample_index": the batch's global positions (packed text: rows)

    # remote sources (http(s)://, s3://, gs://, pipe:) and the node-local shard cache
    cache_dir: str | None = None  # default: $PTFT_CACHE_DIR, else ~/.cache/ptft/shards
    cache_max_gb: float = Field(100.0, gt=0)
    # shards each worker opens (downloads, verifies) ahead of its batches; "auto": those one
    # shuffle block spans, plus 2, as a new block needs all of its shards at once
    prefetch_shards: int | Literal["auto"] = "auto"
    fetch_retries: int = Field(3, ge=0)
    fetch_timeout_s: float = Field(60.0, gt=0)  # a download with no byte for this long is retried

    @field_validator("shards", "eval_shards", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v  # `shards: data/wiki` in YAML means one source

    @field_validator("shards", "eval_shards", mode="after")
    @classmethod
    def _no_credentials(cls, v):
        from ptft_engine.data.remote import has_user_info, redact

        for spec in v or []:
            if has_user_info(spec):  # it would be saved with the run's config.yaml
                raise ValueError(f"shard source {redact(spec)!r} carries credentials in the URL; put them in the "
                                 "environment or the tool's config (~/.netrc, ~/.aws, gcloud) instead")
        return v

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.weights is not None:
            if len(self.weights) != len(self.shards):
                raise ValueError(f"weights has {len(self.weights)} entries but shards has {len(self.shards)} sources")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be non-negative with a positive sum")
        if self.replace_prob + self.random_prob > 1.0:
            raise ValueError("replace_prob + random_prob must be <= 1")
        if isinstance(self.prefetch_shards, int) and self.prefetch_shards < 0:
            raise ValueError("prefetch_shards must be >= 0 (0: no prefetch) or \"auto\"")
        if isinstance(self.docs_per_batch, int) and self.docs_per_batch < 1:
            raise ValueError("docs_per_batch must be at least 1 (or \"auto\")")
        if self.kind != "text" and self.docs_per_batch != "auto":
            raise ValueError("docs_per_batch is for text data; image and audio batches hold batch_size samples")
        if self.packing == "plan" and self.docs_per_batch != "auto":
            raise ValueError("docs_per_batch is for packing: batch; packing: plan fills batch_size rows "
                             "from as many documents as they hold")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        return self
