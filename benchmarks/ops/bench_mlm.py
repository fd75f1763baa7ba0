"""mlm_mask speed: ours vs the Hugging Face DataCollatorForLanguageModeling recipe.

--device cpu (default): C++ CPU backend vs the recipe on a (64, 512) batch, tokens/s.
--device cuda: CUDA and Triton backends on a large batch, GB/s against a big
device-to-device copy (the memory-bandwidth ceiling), and tokens/s vs the recipe on GPU.
Prints one JSON object per case; --json-out appends the same lines to a file.
"""
from __future__ import annotations

import argparse
import os

import torch
from timing import emit as emit_row
from timing import error_row, sig, time_cpu_pair, time_device

from ptft_engine.ops import mlm_mask

VOCAB = 30522  # BERT-base
SPECIAL = (0, 100, 101, 102, 103)  # [PAD] [UNK] [CLS] [SEP] [MASK]
MASK_ID = 103


def peer_recipe(inputs: torch.Tensor, special: torch.Tensor, mlm_probability: float = 0.15):
    """The masking of DataCollatorForLanguageModeling.torch_mask_tokens (special-token mask via isin)."""
    labels = inputs.clone()
    inputs = inputs.clone()
    probability_matrix = torch.full(labels.shape, mlm_probability, device=inputs.device)
    probability_matrix.masked_fill_(torch.isin(labels, special), value=0.0)
    masked_indices = torch.bernoulli(probability_matrix).bool()
    labels[~masked_indices] = -100
    indices_replaced = torch.bernoulli(torch.full(labels.shape, 0.8, device=inputs.device)).bool() & masked_indices
    inputs[indices_replaced] = MASK_ID
    indices_random = (
        torch.bernoulli(torch.full(labels.shape, 0.5, device=inputs.device)).bool() & masked_indices & ~indices_replaced
    )
    random_words = torch.randint(VOCAB, labels.shape, dtype=torch.long, device=inputs.device)
    inputs[indices_random] = random_words[indices_random]
    return inputs, labels


def make_batch(rows: int, seq: int, device: str):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, VOCAB, (rows, seq), generator=g)
    ids[:, 0] = 101
    lengths = torch.randint(seq // 2, seq + 1, (rows,), generator=g)
    ids[torch.arange(seq).view(1, seq) >= lengths.view(rows, 1)] = 0  # padded tails
    return ids.to(device), torch.arange(rows, dtype=torch.int64).to(device)


def emit(case: str, ours: float, peer: float, unit: str, out, **extra) -> None:
    emit_row({"case": case, "ours": sig(ours), "peer": sig(peer), "ratio": sig(ours / peer), "unit": unit, **extra},
             out)


def ours_fn(ids, sids, backend):
    return lambda: mlm_mask(ids, seed=1234, sample_ids=sids, mask_token_id=MASK_ID, vocab_size=VOCAB,
                            special_token_ids=SPECIAL, backend=backend)


def bench_cpu(args) -> None:
    repeats = 20 if args.quick else 200
    special = torch.tensor(SPECIAL)
    shapes = [(64, 512)] if args.quick else [(64, 512), (256, 512)]
    for rows, seq in shapes:
        ids, sids = make_batch(rows, seq, "cpu")
        ours, peer = time_cpu_pair(ours_fn(ids, sids, "cpu"), lambda ids=ids: peer_recipe(ids, special), repeats,
                                   warmup=3)
        tokens = rows * seq
        emit(f"mlm_mask cpu ({rows}, {seq}) vs HF collator recipe", tokens / ours / 1e6, tokens / peer / 1e6,
             "Mtokens/s", args.json_out, threads=torch.get_num_threads())


def copy_bandwidth(nbytes: int, repeats: int, device: str) -> float:
    """GB/s of a device-to-device copy, the ceiling: it moves 2 bytes of traffic per byte copied.
    The buffers are freed when this returns."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / time_device(lambda: dst.copy_(src), repeats, device) / 1e9


def bench_cuda(args) -> None:
    """GB/s of each GPU backend against a device-to-device copy, then tokens/s against the HF recipe on the same
    device; a backend that fails is an error row and the others still run. --dry: tiny, on the CPU."""
    device = "cpu" if args.dry else "cuda"
    rows, seq = (4, 96) if args.dry else ((1024, 2048) if args.quick else (4096, 2048))
    repeats = 2 if args.dry else (10 if args.quick else 50)
    where = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)"}
    ids, sids = make_batch(rows, seq, device)
    copy_gbs = copy_bandwidth(2**20 if args.dry else 2**30, repeats, device)
    moved = 3 * ids.numel() * ids.element_size()  # read ids; write masked ids and labels
    tokens = ids.numel()
    times = {}
    for backend in ("cuda", "triton"):
        case = f"mlm_mask {backend} ({rows}, {seq}) int64 vs device copy"
        try:
            times[backend] = time_device(ours_fn(ids, sids, backend), repeats, device)
        except Exception as exc:  # noqa: BLE001 - e.g. _C built without CUDA: still measure the rest
            emit_row(error_row(case, exc, "GB/s"), args.json_out)
            continue
        emit(case, moved / times[backend] / 1e9, copy_gbs, "GB/s", args.json_out, **where)
    special = torch.tensor(SPECIAL, device=device)
    peer = time_device(lambda: peer_recipe(ids, special), repeats, device)
    for backend in times:
        emit(f"mlm_mask {backend} ({rows}, {seq}) vs HF collator recipe on GPU", tokens / times[backend] / 1e9,
             tokens / peer / 1e9, "Gtokens/s", args.json_out, **where)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller shapes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json-out", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--dry", action="store_true", help="with --device cuda: the GPU cases on the CPU, tiny, "
                        "Triton interpreted (benchmarks/gpu_check.sh's dry mode)")
    args = parser.parse_args()
    if args.dry:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not args.dry and not torch.cuda.is_available():
            raise SystemExit("bench_mlm: --device cuda but no CUDA device is available")
        bench_cuda(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
