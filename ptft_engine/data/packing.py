"""Pack tokenised documents into fixed (rows, seq_len) batches.

Each batch is packed from its own documents only, with no carry-over into the next
batch: the packing state is then nothing but the stream position, so a resumed run
packs exactly as an uninterrupted one. Tokens that do not fit are dropped and pads
fill the rest; both are counted so `docs_per_batch` can be tuned to the corpus.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -100


@dataclass
class PackStats:
    tokens: int = 0  # real tokens placed (incl. [CLS]/[SEP]/<eos>)
    dropped: int = 0  # document tokens that did not fit
    padded: int = 0

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "dropped_tokens": self.dropped, "pad_tokens": self.padded}


def pack_causal(docs: list[list[int]], rows: int, seq_len: int, *, eos_id: int, pad_id: int,
                bos_id: int | None = None) -> tuple[dict[str, torch.Tensor], PackStats]:
    """Concatenate-and-chunk: doc1 <eos> doc2 <eos> ... cut into rows of seq_len.

    labels equal input_ids (the model shifts them) except -100 on padding.
    """
    pieces = []
    for doc in docs:
        if bos_id is not None:
            pieces.append([bos_id])
        pieces += [doc, [eos_id]]
    stream = np.fromiter((t for p in pieces for t in p), dtype=np.int64) if pieces else np.empty(0, np.int64)
    cap = rows * seq_len
    used = stream[:cap]
    ids = np.full(cap, pad_id, dtype=np.int64)
    ids[: len(used)] = used
    real = np.zeros(cap, dtype=bool)
    real[: len(used)] = True
    input_ids = torch.from_numpy(ids.reshape(rows, seq_len))  # (B, S)
    mask = torch.from_numpy(real.reshape(rows, seq_len))
    labels = torch.where(mask, input_ids, torch.full_like(input_ids, IGNORE))
    stats = PackStats(tokens=len(used), dropped=max(0, len(stream) - cap), padded=cap - len(used))
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}, stats


def pack_segments(docs: list[list[int]], rows: int, seq_len: int, *, cls_id: int, sep_id: int,
                  pad_id: int) -> tuple[dict[str, torch.Tensor], PackStats]:
    """BERT-style packing: each document (split into pieces of seq_len - 2 tokens when
    longer) becomes [CLS] piece [SEP] with its own segment id 1, 2, ... in its row, so
    attention restricted to equal segment ids never crosses a document boundary.
    Pieces go first-fit into the rows; pad positions get segment id 0.
    """
    if seq_len < 3:
        raise ValueError(f"seq_len {seq_len} leaves no room between [CLS] and [SEP]")
    body = seq_len - 2
    ids = np.full((rows, seq_len), pad_id, dtype=np.int64)
    seg = np.zeros((rows, seq_len), dtype=np.int64)
    fill = np.zeros(rows, dtype=np.int64)  # tokens used per row
    n_seg = np.zeros(rows, dtype=np.int64)
    stats = PackStats()
    for doc in docs:
        for lo in range(0, len(doc), body):
            piece = doc[lo: lo + body]
            need = len(piece) + 2
            free = np.flatnonzero(seq_len - fill >= need)
            if len(free) == 0:
                stats.dropped += len(piece)
                continue
            r = int(free[0])
            at = int(fill[r])
            ids[r, at] = cls_id
            ids[r, at + 1: at + 1 + len(piece)] = piece
            ids[r, at + need - 1] = sep_id
            n_seg[r] += 1
            seg[r, at: at + need] = n_seg[r]
            fill[r] += need
            stats.tokens += need
    stats.padded = rows * seq_len - stats.tokens
    seg_t = torch.from_numpy(seg)
    return {"input_ids": torch.from_numpy(ids), "segment_ids": seg_t, "attention_mask": seg_t > 0}, stats
