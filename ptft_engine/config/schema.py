"""The typed run config: one pydantic class per section, composed by RunConfig.

Unknown keys are an error everywhere (extra="forbid"), so a typo never silently falls back
to a default. Model, objective and data sections come from their own packages; the engine
only composes them.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from ptft_engine.data.config import DataConfig
from ptft_engine.models.config import ModelConfig
from ptft_engine.objectives.spec import ObjectiveConfig, get_spec
from ptft_engine.objectives.spec import names as spec_names


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SyntheticDataConfig(Section):
    """Deterministic generated batches shaped for the objective: runs without shards."""

    synthetic: Literal[True]
    batch_size: int = Field(8, ge=1, description="per rank, per micro step")
    seq_len: int = Field(32, ge=2)
    vocab_size: int = Field(128, ge=8)
    image_size: int = Field(16, ge=4)
    channels: int = Field(3, ge=1)
    num_samples: int = Field(100_000, ge=1, description="samples per epoch (global)")
    seed: int = 0


def _data_tag(v: Any) -> str:
    if isinstance(v, dict):
        return "synthetic" if v.get("synthetic") else "shards"
    return "synthetic" if isinstance(v, SyntheticDataConfig) else "shards"


DataSection = Annotated[
    Annotated[SyntheticDataConfig, Tag("synthetic")] | Annotated[DataConfig, Tag("shards")],
    Discriminator(_data_tag),
]


class RunSection(Section):
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 1234
    max_steps: int = Field(100, ge=1, description="optimizer steps to train for")
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0, description="0 disables periodic evaluation")
    eval_steps: int = Field(10, ge=1, description="batches per evaluation")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dist_timeout_s: float = Field(600.0, gt=0, description="collectives that wait longer abort the run")
    peak_tflops: float | None = Field(None, gt=0, description="per-device peak for MFU; auto for known GPUs")
    tensorboard: bool = True
    progress_bar: bool = True
    compile: bool = Field(False, description="torch.compile the objective's forward (model and loss)")
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field(
        "inductor", description="torch.compile backend when compile is on")


class TrainSection(Section):
    grad_accum_steps: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    clip_grad: float = Field(1.0, ge=0, description="0 disables clipping")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    activation_checkpointing: bool = False


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    zero_init: bool = Field(False, description="build the model inside deepspeed.zero.Init (stage 3)")
    passthrough: dict[str, Any] = Field(default_factory=dict, description="raw DeepSpeed keys, merged last")

    @model_validator(mode="after")
    def _offload_needs_zero(self):
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("offload_param needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        return self


class CheckpointSection(Section):
    dir: str | None = Field(None, description="default: <output_dir>/<name>/checkpoints")
    every: int = Field(0, ge=0, description="save every N steps; 0 = only on signals and at the end")
    keep_last: int = Field(3, ge=1)
    resume: str | None = Field(None, description="'auto' (newest complete), a checkpoint dir, or null")
    save_at_end: bool = True
    async_save: bool = Field(True, description="snapshot to host memory, write in the background; the step "
                                               "resumes once the snapshot is taken")
    export_hf_every: int = Field(0, ge=0, description="also write an HF-format export every N saves and at "
                                                      "the end (0: never)")


class BadStepSection(Section):
    max_consecutive: int = Field(10, ge=1, description="bad steps in a row before acting")
    action: Literal["stop", "rollback"] = "stop"
    max_rollbacks: int = Field(3, ge=0)


class RunConfig(Section):
    run: RunSection = Field(default_factory=RunSection)
    model: ModelConfig | None = None  # type: ignore[valid-type]
    objective: ObjectiveConfig | None = None  # type: ignore[valid-type]
    data: DataSection = Field(default_factory=lambda: SyntheticDataConfig(synthetic=True))
    train: TrainSection = Field(default_factory=TrainSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    bad_steps: BadStepSection = Field(default_factory=BadStepSection)

    @model_validator(mode="before")
    @classmethod
    def _shards_replace_synthetic_data(cls, tree: Any) -> Any:
        """`data.shards=...` on a recipe with synthetic data (the configs/*_tiny.yaml ones) runs on
        those shards: the keys only synthetic data has (synthetic, vocab_size, num_samples, ...)
        are dropped, the shared ones (batch_size, seq_len) stay. Shards without a `kind` hold
        what the objective reads."""
        data = tree.get("data") if isinstance(tree, dict) else None
        if isinstance(data, dict) and "synthetic" in data and "shards" in data:
            data = {k: v for k, v in data.items() if k in DataConfig.model_fields}
            tree = {**tree, "data": data}
        objective = tree.get("objective") if isinstance(tree, dict) else None
        if isinstance(data, dict) and "shards" in data and "kind" not in data and isinstance(objective, dict):
            if objective.get("name") in spec_names():  # the kind the objective reads (audio for wav2vec2)
                tree = {**tree, "data": {**data, "kind": get_spec(objective["name"]).data.kind}}
        return tree

    @model_validator(mode="after")
    def _objective_takes_data(self):
        if self.objective is not None:
            self.objective.check_data(self.data)
        return self
