"""One rank of a tiny 2-rank DeepSpeed pre-training run (launched by test_zero.py).

usage: zero_rank.py RUN_DIR STAGE [PRECISION]; env RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
Trains a tiny GPT-2-style decoder with the causal-LM objective for a few steps on synthetic
data, checkpoints at the end, then writes the live (gathered) weights to
RUN_DIR/live_weights.safetensors for the test to compare the consolidated export against.
"""
import os
import sys

import torch

from ptft_engine.engine.rank_exit import exit_rank


def main(run_dir: str, stage: int, precision: str = "fp32") -> int:
    torch.set_num_threads(1)
    os.environ.setdefault("LOCAL_RANK", os.environ.get("RANK", "0"))
    from ptft_engine.config import load_run_config
    from ptft_engine.engine import Trainer

    cfg = load_run_config(None, [
        "data.synthetic=true", "data.batch_size=2", "data.seq_len=16", "data.vocab_size=64",
        "model.arch=decoder", "model.vocab_size=64", "model.hidden_size=24", "model.num_hidden_layers=2",
        "model.num_attention_heads=2", "model.max_position_embeddings=16", "model.intermediate_size=40",
        "objective.name=clm", f"deepspeed.zero_stage={stage}", f"train.precision={precision}",
        "run.max_steps=3", "run.log_every=1", "run.device=cpu", "run.tensorboard=false", "run.progress_bar=false",
        f"run.output_dir={os.path.dirname(run_dir)}", f"run.name={os.path.basename(run_dir)}",
        "train.lr=0.01", "train.warmup_steps=0",
    ])
    trainer = Trainer(cfg)
    try:
        trainer.fit()
        import deepspeed

        module = trainer.engine.module.model
        params = list(module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=stage == 3):
            if trainer.rank == 0:
                from safetensors.torch import save_file

                state = {k: v.detach().float().clone() for k, v in module.state_dict().items()}
                save_file(state, os.path.join(run_dir, "live_weights.safetensors"))
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    exit_rank(main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:]))  # as a launched rank ends
