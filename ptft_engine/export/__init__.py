"""Export engine models to safetensors (Hugging Face or native layout) and load them back.

    export_model(model, "out/")                     # live model -> export dir
    export_checkpoint("runs/x", "out/")             # DeepSpeed run/checkpoint -> export dir
    model = load_pretrained("out/")                 # export or transformers dir -> engine model
    load_pretrained("out/", require_manifest=True)  # refuse a directory without manifest.json

A fine-tuned model (finetune.save_task_model) is an export whose head is saved as the
transformers task class that reproduces it (task_heads.py); `ptft export` keeps it.
"""
from ptft_engine.export.errors import ExportError
from ptft_engine.export.loader import LoadedExport, load_export, load_pretrained
from ptft_engine.export.writer import export_model, export_tensors


def export_checkpoint(source, out_dir, **kwargs):
    """Consolidate a run directory or checkpoint (any ZeRO stage, any world size) into an export."""
    from ptft_engine.export.zero import export_checkpoint as _export

    return _export(source, out_dir, **kwargs)


__all__ = ["ExportError", "LoadedExport", "export_checkpoint", "export_model", "export_tensors", "load_export",
           "load_pretrained"]
