"""ptft_engine: pre-train, export and fine-tune Transformers and contrastive encoders."""

__version__ = "0.1.0"
