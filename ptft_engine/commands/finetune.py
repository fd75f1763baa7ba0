"""Fine-tune an exported (or transformers) model on a labelled task, on one device.

Tasks: sequence_classification, token_classification, regression, image_classification,
audio_classification. Strategies: full, partial (freeze embeddings / lower N blocks),
linear_probe, lora, freeze_feature_encoder (audio: wav2vec 2.0's conv stack frozen); with
warmup + decay, layer-wise lr decay (optim.layer_decay) and early stopping on a
validation metric. Data (data.format): jsonl, csv, image folders, or shards written by
`ptft shard --format images` (image classification), `ptft shard --format jsonl
--label-field F` (sequence classification, regression) or `ptft shard --format audio
--manifest labels.jsonl` (audio classification). Writes OUTPUT_DIR/best (export format + head
+ task.json + metrics.json), OUTPUT_DIR/report.json and OUTPUT_DIR/curves.png.
"""
from __future__ import annotations

EXAMPLE = """Examples:
  ptft finetune --config configs/finetune/sentiment.yaml
  ptft finetune --config configs/finetune/sentiment.yaml strategy.kind=lora optim.lr=1e-3
  ptft finetune --config configs/finetune/digits_probe.yaml data.train_fraction=0.1 output_dir=out/digits10
  ptft finetune --config configs/finetune/spoken_digits.yaml model.pretrained=exports/hubert strategy.kind=lora
"""


def add_arguments(p) -> None:
    p.add_argument("--config", "-c", required=True, help="fine-tuning YAML (see configs/finetune/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=2e-5")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    import json

    from ptft_engine.finetune import finetune, load_finetune_config

    cfg = load_finetune_config(args.config, args.overrides)
    if args.no_progress:
        cfg.progress_bar = False
    result = finetune(cfg)
    summary = {"metric": result["metric"], "initial": result["initial"].get(result["metric"]),
               "best": (result["best"] or {}).get(result["metric"]), "best_step": result["best_step"],
               "steps": result["steps"], "stopped_early": result["stopped_early"],
               "trainable_params": result["params"]["trainable_params"], "best_model": result["best_model"],
               "report": f"{cfg.output_dir}/report.json"}
    print(json.dumps(summary))
    return 0
