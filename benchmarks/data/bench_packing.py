"""Packing: dropped and pad fractions of one epoch, the packing plan vs per-batch packing.

On the demo's corpus (Python's `pydoc_data` help texts, as `ptft demo` shards it: one
sample per paragraph; and one sample per file, which is what web pages, books and code
files look like), with the demo's WordPiece tokenizer (2,048 tokens). For each objective
and seq_len, one epoch on one rank through `Loader(...).stats`:

  ours = `packing: plan` (default): documents continue in the next row
  peer = `packing: batch` with docs_per_batch auto: the packer before the plan, which
         packs each batch from its own documents and drops what does not fit

dropped fraction = dropped / (placed + dropped) tokens; pad fraction = pad / (rows x seq_len).
Lower is better, so ratio = ours / peer. The plan drops nothing: the rows after the
epoch's last whole step open the next epoch (`carried` says what share of the epoch's
tokens that is; `placed + carried = plan` checks the accounting). Each line also says what the plan cost: the
tokenising pass that gives the raw-text shards' token lengths (`lengths_s`, once per
process) and building the epoch's plan (`plan_s`), beside the epoch itself (`epoch_s`).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def emit(case, ours, peer, unit, **extra):
    print(json.dumps({"case": case, "ours": round(ours, 5), "peer": round(peer, 5),
                      "ratio": round(ours / peer, 4) if peer else None, "unit": unit, **extra}), flush=True)


def epoch_stats(shards, tok, objective, seq_len, batch, packing) -> tuple[dict, dict]:
    from ptft_engine.data import DataConfig, build_loader, lengths

    lengths._CACHE.clear()  # time the tokenising pass, not the cache
    cfg = DataConfig(shards=[shards], tokenizer=tok, seq_len=seq_len, batch_size=batch, num_workers=0,
                     packing=packing, mask_in="step")
    t0 = time.perf_counter()
    loader = build_loader(cfg, objective=objective)  # plan: lengths pass + epoch 0's plan
    t1 = time.perf_counter()
    for _ in loader:
        pass
    t2 = time.perf_counter()
    timing = {"setup_s": round(t1 - t0, 3), "epoch_s": round(t2 - t1, 3)}
    if packing == "plan":
        plan0 = loader._plan(0)
        carried = int(plan0.row_fill[loader.carry:].sum()) if loader.carry is not None else 0
        timing.update(carried=round(carried / plan0.tokens, 5),
                      placed_plus_carried_equals_plan=loader.stats["tokens"] + carried == plan0.tokens)
        lengths._CACHE.clear()
        t3 = time.perf_counter()
        lens = loader._token_lengths()
        t4 = time.perf_counter()
        loader._plans.clear()
        loader._plan()
        timing.update(lengths_s=round(t4 - t3, 3), plan_s=round(time.perf_counter() - t4, 3),
                      tokens_in_corpus=int(sum(int(v.sum()) for v in lens.values())))
    return loader.stats, timing


def fractions(stats: dict) -> tuple[float, float]:
    tokens, dropped, pad = stats.get("tokens", 0), stats.get("dropped_tokens", 0), stats.get("pad_tokens", 0)
    return dropped / max(1, tokens + dropped), pad / max(1, tokens + pad)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=16, help="rows per batch (the demo's)")
    ap.add_argument("--seq-lens", default="128,512")
    args = ap.parse_args()
    from ptft_engine.data import sources
    from ptft_engine.data.shards import write_shards
    from ptft_engine.data.tokenizer import iter_texts, train_tokenizer
    from ptft_engine.demo.data import write_text_corpus

    with tempfile.TemporaryDirectory() as root:
        text = Path(root) / "text"
        write_text_corpus(text)
        shards = {}
        for unit in ("paragraph", "file"):
            shards[unit] = os.path.join(root, unit)
            write_shards([str(text)], shards[unit], sources.Options(format="text", text_unit=unit),
                         shard_bytes=256_000, workers=2, progress=False)
        tok = os.path.join(root, "tokenizer.json")
        train_tokenizer(iter_texts([shards["paragraph"]]), kind="wordpiece", vocab_size=2048,
                        lowercase=True).save(tok)
        for unit in ("paragraph", "file"):
            for seq_len in (int(s) for s in args.seq_lens.split(",")):
                for objective in ("mlm", "clm"):
                    after, timing = epoch_stats(shards[unit], tok, objective, seq_len, args.batch_size, "plan")
                    before, _ = epoch_stats(shards[unit], tok, objective, seq_len, args.batch_size, "batch")
                    (d_after, p_after), (d_before, p_before) = fractions(after), fractions(before)
                    where = dict(corpus=f"pydoc_data, one sample per {unit}", objective=objective, seq_len=seq_len,
                                 batch_size=args.batch_size)
                    emit(f"dropped_fraction_{objective}_{unit}_seq{seq_len}", d_after, d_before, "fraction",
                         **where, **timing)
                    emit(f"pad_fraction_{objective}_{unit}_seq{seq_len}", p_after, p_before, "fraction", **where)


if __name__ == "__main__":
    main()
