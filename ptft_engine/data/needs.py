"""What an objective asks of the data stream, declared once in its spec
(`ptft_engine.objectives.<name>.SPEC.data`) and read by the loader and its builders.

The loader picks a batch builder by `kind`; the builders read the rest. A new kind (e.g.
"audio" for a speech objective) is its spec's DataNeeds plus one builder registered in
`ptft_engine.data.loader.BUILDERS` (and the kind added to DataConfig.kind).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TextLayout = Literal["causal", "segments"]


@dataclass(frozen=True)
class DataNeeds:
    """kind: the shard content (data config `kind` must match).
    tokenizer: batches carry token ids, so the data config needs `tokenizer`.
    text_layout: how text documents fill rows — "causal": one stream
    [<bos>] doc <eos> ... cut every seq_len tokens; "segments": pieces [CLS] doc [SEP].
    mlm_mask: text rows are masked for masked-LM (input_ids masked, labels added).
    image_views: augmented views drawn per image — 1: `pixel_values`, n > 1: view1..viewN
    (contrastive views, colour-jittered).
    sample_rate: audio: the rate (Hz) the objective's own features assume (None: any)."""

    kind: str
    tokenizer: bool = False
    text_layout: TextLayout | None = None
    mlm_mask: bool = False
    image_views: int = 0
    sample_rate: int | None = None

    def __post_init__(self):
        if self.kind == "text" and self.text_layout is None:
            raise ValueError("DataNeeds(kind='text') needs a text_layout: 'causal' or 'segments'")
        if self.mlm_mask and self.text_layout != "segments":
            raise ValueError("mlm_mask needs text_layout='segments' ([CLS] doc [SEP] rows)")
        if self.kind in ("image", "image_text") and self.image_views < 1:
            raise ValueError(f"DataNeeds(kind={self.kind!r}) needs image_views >= 1")

    @property
    def specials_per_doc(self) -> int:
        """Special tokens a text document adds: <eos> (causal), or [CLS] and [SEP]."""
        return 1 if self.text_layout == "causal" else 2
