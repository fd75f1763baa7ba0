"""Config loading: overrides with type coercion, one-line errors naming the key; DeepSpeed JSON."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ptft_engine.config import ConfigError, SyntheticDataConfig, load_run_config
from ptft_engine.engine.deepspeed_config import build_deepspeed_config
from ptft_engine.engine.schedules import lr_at


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("run: {max_steps: 5}\ntrain: {lr: 0.001}\ndata: {synthetic: true, batch_size: 4}\n")
    return p


def test_overrides_are_coerced_to_the_schema_types(recipe):
    cfg = load_run_config(recipe, ["train.lr=3e-4", "deepspeed.zero_stage=2", "train.betas=[0.9, 0.95]",
                                   "run.peak_tflops=null", "checkpoint.every=10", "train.precision=bf16",
                                   "deepspeed.passthrough.zero_optimization.reduce_bucket_size=1000"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.deepspeed.zero_stage == 2 and cfg.train.betas == (0.9, 0.95)
    assert cfg.run.max_steps == 5 and cfg.data.batch_size == 4
    ds = build_deepspeed_config(cfg, world_size=4)
    assert ds["train_batch_size"] == 4 * 4 and ds["bf16"] == {"enabled": True}
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["reduce_bucket_size"] == 1000  # passthrough wins


@pytest.mark.parametrize("overrides, message", [
    (["train.lrr=1"], "x.yaml: train.lrr: unknown key"),
    (["train.lr=fast"], "x.yaml: train.lr: Input should be a valid number"),
    (["deepspeed.zero_stage=4"], "x.yaml: deepspeed.zero_stage: Input should be 0, 1, 2 or 3"),
    (["data.batch_size=many"], "x.yaml: data.batch_size: Input should be a valid integer"),
    (["train.lr"], "override 'train.lr': expected dotted.key=value"),
    (["train.lr.x=1"], "override 'train.lr.x=1': train.lr is a value, not a section"),
    (["deepspeed.offload_param=true"], "x.yaml: deepspeed: offload_param needs zero_stage 3"),
])
def test_config_errors_are_one_line_naming_the_key(recipe, overrides, message):
    with pytest.raises(ConfigError) as exc:
        load_run_config(recipe, overrides)
    text = str(exc.value)
    assert "\n" not in text
    assert text.startswith(str(recipe.parent)) or text.startswith("override")
    assert message in text


def test_shards_given_on_a_synthetic_recipe_switch_it_to_the_shards(recipe, tmp_path):
    """What the README's workflow does: a *_tiny recipe (synthetic data) pointed at shards."""
    cfg = load_run_config(recipe, ["data.shards=[data/text]", "data.tokenizer=tok/tokenizer.json",
                                   "data.seq_len=64"])
    assert not isinstance(cfg.data, SyntheticDataConfig)
    assert cfg.data.shards == ["data/text"] and cfg.data.tokenizer == "tok/tokenizer.json"
    assert cfg.data.batch_size == 4 and cfg.data.seq_len == 64  # the recipe's batch size stays
    shipped = Path(__file__).resolve().parents[2] / "configs" / "mlm_tiny.yaml"
    cfg = load_run_config(shipped, ["data.shards=[data/text]", "data.tokenizer=tok/tokenizer.json"])
    assert cfg.data.shards == ["data/text"] and cfg.data.mask_prob == 0.15
    # shards without a kind hold what the objective reads; a kind given stays
    speech = shipped.parent / "wav2vec2_tiny.yaml"
    assert load_run_config(speech, ["data.shards=[data/speech]"]).data.kind == "audio"
    assert load_run_config(speech, ["data.shards=[data/speech]", "data.kind=image"]).data.kind == "image"
    # without shards a synthetic-only key on real data stays an error
    with pytest.raises(ConfigError, match="data.vocab_size: unknown key"):
        load_run_config(recipe, ["data.synthetic=false", "data.vocab_size=64"])


def test_unknown_top_level_section_and_bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("trian: {lr: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: trian: unknown key$"):
        load_run_config(p)
    p.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml.*invalid YAML"):
        load_run_config(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_config(tmp_path / "missing.yaml")


@pytest.mark.slow  # a CLI subprocess
def test_cli_prints_config_errors_as_one_line(recipe):
    out = subprocess.run([sys.executable, "-m", "ptft_engine.cli", "pretrain", "--config", str(recipe), "train.foo=1"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"ptft pretrain: error: {recipe}: train.foo: unknown key"]


def test_schedules_warmup_then_decay_to_floor():
    kw = dict(base_lr=1.0, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(60, schedule="cosine", **kw) == pytest.approx(0.55)
    assert lr_at(110, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(60, schedule="linear", **kw) == pytest.approx(0.55)
    assert lr_at(35, schedule="linear", **kw) == pytest.approx(1.0 - 0.9 * 0.25)
    assert lr_at(500, schedule="constant", **kw) == 1.0


def test_activation_checkpointing_flag_reaches_the_model():
    from ptft_engine.engine.setup import build_objective_from_config
    cfg = load_run_config(Path(__file__).parents[2] / "configs" / "clm_tiny.yaml",
                          ["train.activation_checkpointing=true"])
    objective = build_objective_from_config(cfg)
    assert objective.model.config.gradient_checkpointing is True
    assert cfg.model.gradient_checkpointing is False  # the recipe itself is left as written
