"""Pack tokenised documents into fixed (rows, seq_len) batches.

`pack_plan_rows` (the default, `packing: plan`) fills rows as the epoch's packing plan
(data/plan.py) says: a document that does not fit continues in the next row, so no
token is lost but at most the epoch's tail. `pack_causal` / `pack_segments`
(`packing: batch`) pack each batch from its own `docs_per_batch` documents only and
drop what does not fit; they are kept for comparison. All count real, pad and dropped
tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ptft_engine.labels import IGNORE_INDEX


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
    labels = torch.where(mask, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
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


# --- rows of a packing plan (data/plan.py): nothing is dropped, the plan says what goes where
def _causal_stream(doc: np.ndarray | None, n: int, *, eos_id: int, bos_id: int | None) -> np.ndarray | None:
    """[<bos>] doc <eos> of a planned length-n document; None when the document is
    unreadable or its tokens are not the n the plan counted."""
    if doc is None or len(doc) != n:
        return None
    head = [bos_id] if bos_id is not None else []
    return np.concatenate([np.asarray(head, dtype=np.int64), np.asarray(doc, dtype=np.int64), [eos_id]])


def _causal_rows(plan, lo: int, hi: int, docs: dict, *, pad_id: int, eos_id: int,
                 bos_id: int | None) -> tuple[dict, PackStats] | None:
    """Causal rows [lo, hi) in one slice of the documents' stream, or None when a document
    is unreadable or differs from the plan (pack_plan_rows then fits it row by row)."""
    first, stop = plan.docs_of(lo, hi)
    streams = []
    for p in range(first, stop):
        n = int(plan.lengths[p])
        if n == 0:
            continue
        stream = _causal_stream(docs.get(p), n, eos_id=eos_id, bos_id=bos_id)
        if stream is None:
            return None
        streams.append(stream)
    rows, seq = hi - lo, plan.seq_len
    flat = np.concatenate(streams) if streams else np.empty(0, dtype=np.int64)
    start = int(plan.row_off[lo])
    used = flat[start: start + rows * seq]
    ids = np.full(rows * seq, pad_id, dtype=np.int64)
    ids[: len(used)] = used
    real = np.zeros(rows * seq, dtype=bool)
    real[: len(used)] = True
    input_ids, mask = torch.from_numpy(ids.reshape(rows, seq)), torch.from_numpy(real.reshape(rows, seq))
    labels = torch.where(mask, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    stats = PackStats(tokens=len(used), padded=rows * seq - len(used))
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}, stats


def pack_plan_rows(plan, lo: int, hi: int, docs: dict, *, pad_id: int, eos_id: int = 0,
                   bos_id: int | None = None, cls_id: int = 0, sep_id: int = 0) -> tuple[dict, PackStats]:
    """Rows [lo, hi) of `plan` from `docs` (epoch position -> token ids; None = unreadable).

    Causal: input_ids / labels / attention_mask as pack_causal. Masked LM: as
    pack_segments, one segment id per piece. Tokens of an unreadable document become
    padding (masked out) and count as dropped, so rows stay where the plan put them.
    """
    rows, seq = hi - lo, plan.seq_len
    if plan.layout == "causal":
        fast = _causal_rows(plan, lo, hi, docs, pad_id=pad_id, eos_id=eos_id, bos_id=bos_id)
        if fast is not None:
            return fast
    ids = np.full((rows, seq), pad_id, dtype=np.int64)
    real = np.zeros((rows, seq), dtype=bool)
    seg = np.zeros((rows, seq), dtype=np.int64)
    stats = PackStats()
    streams: dict[int, np.ndarray | None] = {}
    for r, j in enumerate(range(lo, hi)):
        at = 0
        for n_seg, (p, a, b) in enumerate(plan.spans(j), 1):
            n = int(plan.lengths[p])
            if plan.layout == "causal":
                if p not in streams:
                    streams[p] = _causal_stream(docs.get(p), n, eos_id=eos_id, bos_id=bos_id)
                stream = streams[p]
                if stream is not None:
                    ids[r, at: at + b - a] = stream[a:b]
                    real[r, at: at + b - a] = True
                else:
                    stats.dropped += b - a
                at += b - a
                continue
            doc = docs.get(p)
            need = b - a + 2
            if doc is None or len(doc) != n:
                stats.dropped += need  # the piece's place stays padding
                at += need
                continue
            ids[r, at] = cls_id
            ids[r, at + 1: at + need - 1] = doc[a:b]
            ids[r, at + need - 1] = sep_id
            real[r, at: at + need] = True
            seg[r, at: at + need] = n_seg
            at += need
    stats.tokens = int(real.sum())
    stats.padded = rows * seq - stats.tokens
    input_ids, mask = torch.from_numpy(ids), torch.from_numpy(real)
    if plan.layout == "causal":
        labels = torch.where(mask, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}, stats
    return {"input_ids": input_ids, "segment_ids": torch.from_numpy(seg), "attention_mask": mask}, stats
