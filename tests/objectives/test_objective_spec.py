"""The objective registry: every objective is one declared spec, and a new one is its own
file — here a toy registered inside the test, validated, synthesised, loaded and trained
without touching any other module, then unregistered."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

from ptft_engine.config import ConfigError as RunConfigError
from ptft_engine.config import load_run_config
from ptft_engine.data import DataConfig, DataError, build_loader
from ptft_engine.data.needs import DataNeeds
from ptft_engine.models.config import ARCHS, ConfigError
from ptft_engine.objectives import (
    ObjectiveConfigBase,
    ObjectiveSpec,
    get_spec,
    names,
    parse_objective_config,
    register,
    unregister,
)
from ptft_engine.objectives.base import Objective

MODELS = Path(__file__).parents[2] / "configs" / "models"


class ToyConfig(ObjectiveConfigBase):
    name: Literal["toy"] = "toy"
    scale: float = Field(1.0, gt=0)


class ToyObjective(Objective):
    """Next-token loss on `toy_ids`, a key only the toy's synthetic batch makes."""

    def __init__(self, model, cfg: ToyConfig):
        super().__init__(model)
        self.cfg = cfg

    def forward(self, batch):
        ids = batch["toy_ids"]  # (B, S)
        logits = self.model.lm_logits(self.model.encode(ids)[:, :-1])  # (B, S-1, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten()) * self.cfg.scale
        return {"loss": loss, "num_samples": ids.shape[0]}


def toy_batch(cfg, g):
    start = torch.randint(0, cfg.vocab_size, (cfg.batch_size, 1), generator=g)
    return {"toy_ids": (start + torch.arange(cfg.seq_len)) % cfg.vocab_size}  # (B, S)


TOY_FLOPS = 1e6  # per sample


@pytest.fixture
def toy():
    spec = register(ObjectiveSpec(
        name="toy", config=ToyConfig, arch="decoder", data=DataNeeds(kind="text", text_layout="causal"),
        synthetic_batch=toy_batch, unit="samples", flops_per_unit=lambda objective, seq_len: TOY_FLOPS,
        build=ToyObjective))
    try:
        yield spec
    finally:
        unregister("toy")


def test_builtin_specs_declare_arch_data_and_unit():
    builtin = ("mlm", "clm", "simclr", "clip", "wav2vec2", "hubert")
    assert names()[:6] == builtin
    got = {n: (get_spec(n).arch, get_spec(n).data.kind, get_spec(n).data.tokenizer, get_spec(n).unit)
           for n in builtin}
    assert got == {"mlm": ("encoder", "text", True, "tokens"), "clm": ("decoder", "text", True, "tokens"),
                   "simclr": ("vit", "image", False, "samples"),
                   "clip": ("dual_encoder", "image_text", True, "samples"),
                   "wav2vec2": ("wav2vec2", "audio", False, "samples"),
                   "hubert": ("wav2vec2", "audio", False, "samples")}
    assert get_spec("mlm").data.mlm_mask and not get_spec("clm").data.mlm_mask
    assert get_spec("simclr").data.image_views == 2 and get_spec("clip").data.image_views == 1
    assert all(get_spec(n).arch in ARCHS for n in names())


def test_specs_refuse_what_cannot_work(toy):
    with pytest.raises(ValueError, match="already registered"):
        register(dataclasses.replace(toy, unit="tokens"))
    with pytest.raises(ValueError, match="arch 'rnn' is not one of"):
        dataclasses.replace(toy, arch="rnn")
    with pytest.raises(ValueError, match="unit must be 'tokens' or 'samples'"):
        dataclasses.replace(toy, unit="pixels")
    with pytest.raises(ValueError, match="ToyConfig.name defaults to 'toy', not 'other'"):
        dataclasses.replace(toy, name="other")
    with pytest.raises(ValueError, match="mlm_mask needs text_layout='segments'"):
        DataNeeds(kind="text", text_layout="causal", mlm_mask=True)


def test_config_errors_name_the_key_and_the_registered_names(toy):
    assert parse_objective_config("toy") == ToyConfig()
    assert parse_objective_config({"name": "toy", "scale": 2}).scale == 2.0
    for data, expect in [
        ({"name": "byol"}, "objective.name: must be one of mlm, clm, simclr, clip, wav2vec2, hubert, toy, got 'byol'"),
        ({"scale": 2}, "objective.name: missing; choose one of mlm, clm, simclr, clip, wav2vec2, hubert, toy"),
        ({"name": "toy", "scael": 2}, "objective.scael: unknown key"),
        ({"name": "toy", "scale": 0}, "objective.scale: "),
        (3, "objective: expected a mapping with name: one of mlm, clm, simclr, clip, wav2vec2, hubert, toy, got int"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_objective_config(data)
        assert str(info.value).startswith(expect) and "\n" not in str(info.value), str(info.value)
    cfg = load_run_config(None, ["objective.name=toy", "objective.scale=3"])
    assert cfg.objective == ToyConfig(scale=3) and cfg.model_dump()["objective"] == {"name": "toy", "scale": 3.0}
    unregister("toy")
    with pytest.raises(ConfigError,
                       match="objective.name: must be one of mlm, clm, simclr, clip, wav2vec2, hubert, got 'toy'"):
        parse_objective_config({"name": "toy"})
    with pytest.raises(RunConfigError, match="objective"):
        load_run_config(None, ["objective.name=toy"])


def test_the_loader_reads_data_needs_from_the_spec(toy, tmp_path):
    with pytest.raises(DataError,
                       match="objective 'toy' needs data kind 'text', but the data config says kind 'image'"):
        build_loader(DataConfig(shards=[str(tmp_path)], kind="image"), objective="toy")
    with pytest.raises(DataError,
                       match="unknown objective 'byol'; choose one of mlm, clm, simclr, clip, wav2vec2, hubert, toy"):
        build_loader(DataConfig(shards=[str(tmp_path)]), objective="byol")


@pytest.mark.slow  # a training run through DeepSpeed
def test_a_registered_toy_is_synthesised_and_trained_with_its_unit_and_flops(toy, tmp_path):
    from ptft_engine.engine import Trainer

    recipe = tmp_path / "toy.yaml"
    recipe.write_text(f"model: {MODELS / 'gpt2-tiny.yaml'}\n")
    cfg = load_run_config(recipe, [
        "objective.name=toy", "objective.scale=2", "data.synthetic=true",
        "data.batch_size=4", "data.seq_len=16", "run.max_steps=3", "run.log_every=1", "run.peak_tflops=1",
        "run.progress_bar=false", "run.tensorboard=false", "run.device=cpu", f"run.output_dir={tmp_path}",
        "run.name=toy", "checkpoint.save_at_end=false", "train.lr=1e-2"])
    trainer = Trainer(cfg)
    try:
        assert isinstance(trainer.objective, ToyObjective) and trainer.objective.cfg.scale == 2.0
        trainer.fit()
    finally:
        trainer.close()
    train = [r for r in map(json.loads, (tmp_path / "toy" / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert len(train) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
    assert all("samples_per_s" in r and "tokens_per_s" not in r for r in train)
    for r in train:  # MFU from the spec's FLOPs per sample at the logged rate, on a 1-TFLOPS peak
        assert r["mfu"] == pytest.approx(TOY_FLOPS * r["samples_per_s"] / 1e12)
