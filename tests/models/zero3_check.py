"""Run by test_zero3.py in its own process: every arch built under deepspeed.zero.Init
(ZeRO-3, one gloo rank) keeps full-size parameters and trains a step with checkpointing."""
import os
import sys

import torch

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import importlib  # noqa: E402

import deepspeed  # noqa: E402

from ptft_engine.models import build_model, count_parameters, load_model_config  # noqa: E402
from ptft_engine.objectives import build_objective  # noqa: E402

# as engine/setup.py: skip DeepSpeed's JIT build of a CPU shared-memory op that training never uses
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
deepspeed.init_distributed(dist_backend="gloo", verbose=False)
ids = torch.randint(4, 64, (4, 12))
audio = {"input_values": torch.randn(4, 8000), "attention_mask": torch.ones(4, 8000, dtype=torch.bool)}
CASES = [  # (model preset, objective, batch)
    ("bert-tiny", "mlm", {"input_ids": ids, "labels": torch.where(torch.rand(4, 12) < 0.3, ids, -100)}),
    ("gpt2-tiny", "clm", {"input_ids": ids}),
    ("llama-tiny", "clm", {"input_ids": ids}),
    ("vit-tiny-digits", "simclr", {"view1": torch.rand(4, 1, 8, 8), "view2": torch.rand(4, 1, 8, 8)}),
    ("clip-tiny", "clip", {"pixel_values": torch.rand(4, 1, 8, 8), "input_ids": ids,
                           "attention_mask": torch.ones(4, 12, dtype=torch.bool)}),
    ("wav2vec2-tiny", {"name": "wav2vec2", "num_negatives": 5}, audio),
    # the cluster embeddings are the objective's own parameter, used in its forward (random targets here)
    ("wav2vec2-tiny", {"name": "hubert", "final_dim": 16, "unmasked_weight": 1.0}, audio),
]
root = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "models")
only = sys.argv[2:]  # names to check (default: all)
for name, objective, batch in CASES:
    if only and name not in only:
        continue
    cfg = load_model_config(os.path.join(root, f"{name}.yaml"))
    ds = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 3},
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    with deepspeed.zero.Init(config_dict_or_path=ds):
        model = build_model(cfg)
    total = sum(p.ds_numel for p in model.parameters())
    assert total == count_parameters(cfg), (name, total, count_parameters(cfg))
    task = build_objective(cfg, objective, model=model)
    task.set_gradient_checkpointing(True)
    engine, *_ = deepspeed.initialize(model=task, model_parameters=task.parameters(), config=ds)
    losses = []
    for _ in range(2):
        out = engine(batch)
        engine.backward(out["loss"])
        engine.step()
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] != losses[0], (name, losses)
    print(name, objective if isinstance(objective, str) else objective["name"], "ok", losses)

from ptft_engine.engine.rank_exit import exit_rank  # noqa: E402

exit_rank(0)  # as a launched rank ends (a finished gloo rank's teardown now and then aborts)
