"""Text batches: decode -> tokenise -> pack -> (MLM) mask, all inside a loader worker."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from ptft_engine.data.config import DataConfig
from ptft_engine.data.errors import BadSamples
from ptft_engine.data.needs import DataNeeds
from ptft_engine.data.packing import pack_causal, pack_plan_rows, pack_segments
from ptft_engine.data.tokenizer import TokenizerInfo

RECENT_DOCS = 8  # tokenised long documents kept per worker


def mask_seed(seed: int, epoch: int) -> int:
    """A 64-bit mask seed per (seed, epoch): each epoch masks the same text differently."""
    words = np.random.SeedSequence([seed, epoch, 0x6D6C6D]).generate_state(2, dtype=np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


def cpu_mask_backend(requested: str | None) -> str | None:
    """The mlm_mask backend for CPU tensors in loader workers.

    A run-wide PTFT_KERNEL_BACKEND=cuda/triton is meant for the step on the GPU; the
    workers' CPU tensors then fall back to the C++ backend (or the reference) instead
    of failing. An explicit `mask_backend` in the data config is honoured as given.
    """
    if requested is not None:
        return requested
    from ptft_engine.ops import registry

    cpu = torch.device("cpu")
    try:
        return registry.choose("mlm_mask", torch.empty(0, dtype=torch.int64), None)  # the choice for CPU ids
    except registry.BackendUnavailable:
        return next((b for b in ("cpu", "reference") if registry.generic_reason(b, cpu) is None), "reference")


class TextBuilder:
    def __init__(self, cfg: DataConfig, needs: DataNeeds, tok: TokenizerInfo):
        self.cfg, self.needs, self.tok = cfg, needs, tok
        self._backend: str | None = None
        self.id_shards: dict[str, str] = {}  # pre-tokenised shard path -> dtype of its .ids members
        # a document longer than a batch is read by every batch it spans: tokenise it once per worker
        self._recent: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def texts(self, records, bad: BadSamples) -> tuple[list[str], list[int]]:
        field = self.cfg.text_field
        texts, kept = [], []
        for pos, shard, key, members in records:
            data = members.get(field)
            if data is None:
                bad.skip(shard, key, f"no .{field} member")
                continue
            try:
                texts.append(data.decode("utf-8"))
            except UnicodeDecodeError as exc:
                bad.skip(shard, key, f".{field} is not UTF-8 ({exc.reason})")
                continue
            kept.append(pos)
        return texts, kept

    def build(self, records, *, epoch: int, first_pos: int, bad: BadSamples) -> tuple[dict, dict, list[int]]:
        cfg, tok = self.cfg, self.tok
        texts, kept = self.texts(records, bad)
        docs = tok.encode_batch(texts) if texts else []
        rows, seq = cfg.batch_size, cfg.seq_len
        if self.needs.text_layout == "causal":
            batch, stats = pack_causal(docs, rows, seq, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                       bos_id=tok.bos_id if cfg.add_bos else None)
            return batch, stats.as_dict(), kept
        batch, stats = pack_segments(docs, rows, seq, cls_id=tok.cls_id, sep_id=tok.sep_id, pad_id=tok.pad_id)
        if not self.needs.mlm_mask:
            return batch, stats.as_dict(), kept
        # Row ids are unique per (batch start, row), so the mask depends only on the
        # stream position: a resumed run masks exactly as an uninterrupted one.
        batch["mlm_sample_ids"] = first_pos * rows + torch.arange(rows, dtype=torch.int64)
        return self._mask(batch, epoch), stats.as_dict(), kept

    def _mask(self, batch: dict, epoch: int) -> dict:
        if self.cfg.mask_in == "step":
            return batch  # the step masks it on its device: apply_mlm_mask
        if self._backend is None:
            self._backend = cpu_mask_backend(self.cfg.mask_backend)
        return apply_mlm_mask(batch, **self.mask_kwargs(epoch), backend=self._backend)

    def doc_tokens(self, records, bad: BadSamples) -> dict[int, np.ndarray]:
        """Epoch position -> token ids: a pre-tokenised shard's .ids member as stored,
        the text of any other shard tokenised now."""
        out, to_encode = {}, []
        for rec in records:
            pos, shard, key, members = rec
            dtype = self.id_shards.get(shard)
            raw = members.get("ids") if dtype else None
            if raw is None and (shard, key) in self._recent:
                out[pos] = self._recent[(shard, key)]
            elif raw is None:
                to_encode.append(rec)
            elif len(raw) % np.dtype(dtype).itemsize:
                bad.skip(shard, key, f".ids holds {len(raw)} bytes, not a whole number of {dtype} ids")
            else:
                out[pos] = np.frombuffer(raw, dtype=dtype)
        texts, kept = self.texts(to_encode, bad)
        for pos, ids in zip(kept, self.tok.encode_batch(texts) if texts else []):
            out[pos] = np.asarray(ids, dtype=np.int64)
        # keep the batch's last documents: the only ones the next batches may continue
        for pos, shard, key, _ in records[-2:]:
            if pos in out and len(out[pos]) > self.cfg.seq_len and shard not in self.id_shards:
                self._recent[(shard, key)] = out[pos]
        while len(self._recent) > RECENT_DOCS:
            self._recent.popitem(last=False)
        return out

    def pack_rows(self, plan, lo: int, hi: int, records, bad: BadSamples) -> tuple[dict, dict]:
        """Rows [lo, hi) of a packing plan from the records of their documents (unmasked)."""
        tok = self.tok
        batch, stats = pack_plan_rows(plan, lo, hi, self.doc_tokens(records, bad), pad_id=tok.pad_id,
                                      eos_id=tok.eos_id, bos_id=tok.bos_id if self.cfg.add_bos else None,
                                      cls_id=tok.cls_id, sep_id=tok.sep_id)
        return batch, stats.as_dict()

    def finish_rows(self, batch: dict, row_ids: torch.Tensor, epoch: int) -> dict:
        """MLM: mask packed rows keyed by their row index in the epoch, so the masks are a
        pure function of (seed, epoch, row, position) on any world size, worker count or resume."""
        if not self.needs.mlm_mask:
            return batch
        batch["mlm_sample_ids"] = row_ids
        return self._mask(batch, epoch)

    def mask_kwargs(self, epoch: int) -> dict:
        cfg, tok = self.cfg, self.tok
        return dict(seed=mask_seed(cfg.seed, epoch), mask_token_id=tok.mask_id, vocab_size=tok.vocab_size,
                    special_token_ids=tok.special_ids, mask_prob=cfg.mask_prob, replace_prob=cfg.replace_prob,
                    random_prob=cfg.random_prob)


def apply_mlm_mask(batch: dict, *, backend: str | None = None, **mask_kwargs) -> dict:
    """Mask a packed MLM batch in place of its input_ids and add labels.

    With `mask_in: step` the loader leaves this to the training step, which calls it
    on device tensors with `loader.mask_kwargs()`; the masks are the same bit for bit
    as the workers would have drawn (the op is one contract on every backend).
    """
    from ptft_engine.ops import mlm_mask

    sample_ids = batch.pop("mlm_sample_ids")
    batch["input_ids"], batch["labels"] = mlm_mask(batch["input_ids"], sample_ids=sample_ids, backend=backend,
                                                   **mask_kwargs)
    return batch
