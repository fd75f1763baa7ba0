"""The packing plan of an epoch: which document tokens fill each row (sequence).

Built from the token lengths of the documents in epoch order (as Megatron builds its
sample index), so row j of the epoch is a known span from (document position, token
offset) to the next row's start. Nothing carries over between batches at run time:
the loader's state stays a position — now a row index — and any process can build
any row, whatever the world size. Only the last, partly filled row has padding in a
causal plan; a masked-LM row pads at most the 2 positions that could not hold a
[CLS] x [SEP] piece.

Causal LM: the epoch is one stream  [<bos>] doc <eos> [<bos>] doc <eos> ...  cut every
seq_len tokens (offsets count in that stream, <bos>/<eos> included).
Masked LM: rows fill greedily with pieces [CLS] tokens [SEP]; a document that does not
fit continues in the next row (offsets count document tokens).
"""
from __future__ import annotations

import numpy as np


class PackingPlan:
    """row_pos[j], row_off[j]: where row j starts (j < n_rows); entry n_rows is (docs, 0),
    the end. row_fill[j]: real tokens (specials included) in row j."""

    def __init__(self, lengths: np.ndarray, seq_len: int, layout: str, *, add_bos: bool = False):
        """layout: "causal" or "segments" (a DataNeeds.text_layout)."""
        if seq_len < 3:
            raise ValueError(f"seq_len {seq_len} leaves no room between [CLS] and [SEP]")
        self.lengths = np.asarray(lengths, dtype=np.int64)  # document tokens per epoch position
        if layout not in ("causal", "segments"):
            raise ValueError(f"text layout must be 'causal' or 'segments', got {layout!r}")
        self.seq_len, self.layout = seq_len, layout
        self.extra = (1 + int(add_bos)) if layout == "causal" else 2  # specials added per doc / piece
        if layout == "causal":
            self._plan_causal()
        else:
            self._plan_segments()
        self.n_rows = len(self.row_fill)

    def _plan_causal(self) -> None:
        ext = np.where(self.lengths > 0, self.lengths + self.extra, 0)  # an empty doc adds no <eos>
        self.cum = np.concatenate([[0], np.cumsum(ext)])
        total = int(self.cum[-1])
        n_rows = -(-total // self.seq_len)
        starts = np.arange(n_rows, dtype=np.int64) * self.seq_len
        pos = np.searchsorted(self.cum, starts, side="right") - 1  # the doc holding each row's first token
        self.row_pos = np.append(pos, len(self.lengths))
        self.row_off = np.append(starts - self.cum[pos], 0)
        self.row_fill = np.minimum(total - starts, self.seq_len)

    def _plan_segments(self) -> None:
        seq = self.seq_len
        row_pos, row_off, fill_of = [], [], []
        fill = seq  # no row open yet
        for p, n in enumerate(self.lengths.tolist()):
            off = 0
            while off < n:
                if seq - fill < 3:  # not even [CLS] x [SEP] fits: start the next row here
                    if row_pos:
                        fill_of.append(fill)
                    row_pos.append(p)
                    row_off.append(off)
                    fill = 0
                take = min(n - off, seq - fill - 2)
                off += take
                fill += take + 2
        if row_pos:
            fill_of.append(fill)
        self.row_pos = np.array(row_pos + [len(self.lengths)], dtype=np.int64)
        self.row_off = np.array(row_off + [0], dtype=np.int64)
        self.row_fill = np.array(fill_of, dtype=np.int64)

    @property
    def tokens(self) -> int:
        """Real tokens of the whole plan (specials included)."""
        return int(self.row_fill.sum())

    def docs_of(self, lo: int, hi: int) -> tuple[int, int]:
        """Epoch positions [first, stop) of the documents rows [lo, hi) draw from."""
        stop = int(self.row_pos[hi]) + (1 if self.row_off[hi] > 0 else 0)
        return int(self.row_pos[lo]), min(stop, len(self.lengths))

    def spans(self, j: int) -> list[tuple[int, int, int]]:
        """Row j as (position, from, to) spans: causal spans count in the doc's stream
        ([<bos>] doc <eos>), masked-LM spans in the doc's tokens (one piece each)."""
        p, off = int(self.row_pos[j]), int(self.row_off[j])
        end_p, end_off = int(self.row_pos[j + 1]), int(self.row_off[j + 1])
        out = []
        while p < end_p or (p == end_p and off < end_off):
            n = int(self.lengths[p])
            size = n + self.extra if (self.layout == "causal" and n > 0) else n
            stop = end_off if p == end_p else size
            if stop > off:
                out.append((p, off, stop))
            p, off = p + 1, 0
        return out
