"""Export a run, a checkpoint or an export to safetensors + config.json + tokenizer + manifest.

SOURCE may be a run directory (its newest complete checkpoint is used), one checkpoint
directory (any ZeRO stage, any world size: consolidated tensor by tensor from the fp32
master partitions), or an existing export / transformers directory (re-exported, e.g.
to bf16 or another layout; a fine-tuned model keeps its task head, task.json and
metrics.json). --format hf writes the transformers layout (BERT for the
encoder, GPT-2 or Llama for the decoder, Wav2Vec2 for speech, ViT for images); native keeps
engine names (any model). auto: hf for text and speech models, native for the others.
"""
from __future__ import annotations

EXAMPLE = """Examples:
  ptft export runs/bert-base exports/bert-base
  ptft export runs/gpt/checkpoints/step-00010000 exports/gpt-10k --dtype bf16 --max-shard-size 5GB
  ptft export runs/simclr exports/simclr-vit --format native
Load it:  transformers.AutoModelForMaskedLM.from_pretrained("exports/bert-base")
          transformers.Wav2Vec2Model.from_pretrained("exports/hubert")      # speech
          ptft_engine.export.load_pretrained("exports/bert-base")          # any layout
"""


def add_arguments(p) -> None:
    p.add_argument("source", help="run directory, checkpoint directory, or export directory")
    p.add_argument("out_dir", help="output directory (must be empty unless --overwrite)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--max-shard-size", default="2GB", help="shard above this size, with an index (default 2GB)")
    p.add_argument("--format", default="auto", choices=["auto", "hf", "native"],
                   help="auto: hf for text and speech models, native otherwise")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json to include (default: the run's)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--require-manifest", action="store_true",
                   help="re-exporting an export: refuse one without manifest.json (default: a warning)")


def run(args) -> int:
    import json
    from pathlib import Path

    from ptft_engine.export.zero import export_any

    manifest = export_any(Path(args.source), Path(args.out_dir), fmt=args.format, dtype=args.dtype,
                          max_shard_size=args.max_shard_size, tokenizer=args.tokenizer, overwrite=args.overwrite,
                          require_manifest=args.require_manifest)
    print(json.dumps({"out_dir": args.out_dir, "layout": manifest["layout"], "dtype": manifest["dtype"],
                      "files": sorted(manifest["files"]), "source": manifest["source"]}))
    return 0
