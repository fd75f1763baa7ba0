"""Lightweight fine-tuning on one device (plain PyTorch; no DeepSpeed needed).

    cfg = load_finetune_config("configs/finetune/sentiment.yaml", ["strategy.kind=lora"])
    result = finetune(cfg)                     # best model in <output_dir>/best, report.json, curves.png
    model, info = load_task_model("out/best")  # for inference
"""
from ptft_engine.finetune.config import FinetuneConfig, load_finetune_config, parse_finetune_config
from ptft_engine.finetune.loop import finetune
from ptft_engine.finetune.lora import LoRALinear, apply_lora, merge_lora, merged_state_dict
from ptft_engine.finetune.saved import load_task_model, save_task_model
from ptft_engine.finetune.tasks import TaskModel

__all__ = ["FinetuneConfig", "LoRALinear", "TaskModel", "apply_lora", "finetune", "load_finetune_config",
           "load_task_model", "merge_lora", "merged_state_dict", "parse_finetune_config", "save_task_model"]
