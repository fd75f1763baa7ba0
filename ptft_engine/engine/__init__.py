"""DeepSpeed pre-training engine: trainer, atomic checkpoints, schedules, metrics."""
from ptft_engine.engine.trainer import Trainer, TrainingStopped, TrainState

__all__ = ["Trainer", "TrainingStopped", "TrainState"]
