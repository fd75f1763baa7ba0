"""Objective losses against hand computations; configs and build errors."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ptft_engine.models import ConfigError, load_model_config
from ptft_engine.objectives import build_objective, parse_objective_config
from ptft_engine.objectives.clm import shifted_targets

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "models"


def preset(name):
    return load_model_config(PRESETS / f"{name}.yaml")


def test_mlm_loss_is_mean_ce_over_selected_tokens():
    task = build_objective(preset("bert-tiny"), {"name": "mlm"}).eval()
    ids = torch.randint(4, 128, (2, 10))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 0], labels[1, 7] = 5, 9, 11
    out = task({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids, dtype=torch.bool)})
    logits = task.model(ids)
    sel = labels != -100
    expect = F.cross_entropy(logits[sel], labels[sel])
    torch.testing.assert_close(out["loss"], expect, rtol=1e-5, atol=1e-6)
    assert out["num_tokens"] == 20 and int(out["num_targets"]) == 3
    assert not out["accuracy"].requires_grad and out["loss"].requires_grad


def test_mlm_batch_without_selected_tokens_gives_zero_not_nan():
    task = build_objective(preset("bert-tiny"), "mlm")
    ids = torch.randint(4, 128, (2, 6))
    out = task({"input_ids": ids, "labels": torch.full_like(ids, -100)})
    assert out["loss"].item() == 0.0


def test_clm_targets_skip_document_boundaries_and_padding():
    labels = torch.tensor([[10, 11, 12, 20, 21, 0]])
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    assert shifted_targets(labels, seg, mask).tolist() == [[11, 12, -100, 21, -100]]


def test_clm_loss_is_next_token_ce_and_packing_matches_separate_rows():
    task = build_objective(preset("gpt2-tiny"), {"name": "clm"}).eval()
    a, b = torch.randint(0, 128, (1, 7)), torch.randint(0, 128, (1, 5))
    out_a, out_b = task({"input_ids": a, "labels": a}), task({"input_ids": b, "labels": b})
    logits = task.model(a)
    torch.testing.assert_close(out_a["loss"], F.cross_entropy(logits[0, :-1], a[0, 1:]), rtol=1e-5, atol=1e-6)
    packed = task({"input_ids": torch.cat([a, b], 1), "segment_ids": torch.tensor([[0] * 7 + [1] * 5])})
    expect = (out_a["loss"] * 6 + out_b["loss"] * 4) / 10  # token-weighted mean over both documents
    torch.testing.assert_close(packed["loss"], expect, rtol=1e-5, atol=1e-6)
    assert int(packed["num_targets"]) == 10


def test_objective_and_model_must_match():
    with pytest.raises(ConfigError,
                       match=r"^objective.name: clm trains a model with arch: decoder, but model.arch is encoder$"):
        build_objective(preset("bert-tiny"), {"name": "clm"})


def test_objective_config_errors_are_one_line_naming_the_key():
    for data, expect in [
        ({"name": "simclr", "temprature": 0.1}, "objective.temprature: unknown key"),
        ({"name": "mlm", "gather": True}, "objective.gather: unknown key"),
        ({"name": "clip", "gather": "maybe"}, "objective.gather: "),
        ({"name": "byol"}, "objective.name: must be one of mlm, clm, simclr, clip, wav2vec2, hubert, got 'byol'"),
        ({"name": "simclr", "temperature": -1}, "objective.temperature: "),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_objective_config(data)
        assert str(info.value).startswith(expect) and "\n" not in str(info.value)


def test_missing_batch_key_is_named():
    task = build_objective(preset("vit-tiny-digits"), {"name": "simclr"})
    with pytest.raises(KeyError, match="simclr batch lacks view2"):
        task({"view1": torch.rand(2, 1, 8, 8)})


def test_flops_estimates():
    cfg = preset("gpt2-tiny")
    task = build_objective(cfg, "clm")
    n = sum(p.numel() for p in task.model.parameters()) - 64 * 32  # without position table
    assert task.flops_per_token(seq_len=64) == 6 * n + 12 * 2 * 32 * 64
    llama = build_objective(preset("llama-tiny"), "clm")  # untied: the input table is a lookup, not a matmul
    n = sum(p.numel() for p in llama.model.parameters()) - 128 * 32
    assert llama.flops_per_token(seq_len=16) == 6 * n + 12 * 2 * 32 * 16


def _measured_flops(task, batch):
    """FLOPs that PyTorch itself counts for one forward + backward (plain-PyTorch attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ptft_engine.ops import registry

    with registry.use_backend("reference"), FlopCounterMode(display=False) as counter:
        task(batch)["loss"].backward()
    return counter.get_total_flops()


def test_flops_estimates_match_what_pytorch_counts():
    # the estimates also count biases and norms as matmul weights: a few % above the count
    n = 8
    cases = [
        ("gpt2-tiny", "clm", {"input_ids": torch.randint(0, 100, (n, 64))},
         lambda t: t.flops_per_token(seq_len=64) * n * 64),
        ("vit-tiny-digits", "simclr", {"view1": torch.rand(n, 1, 8, 8), "view2": torch.rand(n, 1, 8, 8)},
         lambda t: t.flops_per_sample() * n),
        ("clip-tiny", "clip", {"pixel_values": torch.rand(n, 1, 8, 8), "input_ids": torch.randint(0, 64, (n, 16)),
                               "attention_mask": torch.ones(n, 16, dtype=torch.bool)},
         lambda t: t.flops_per_sample() * n),
    ]
    for name, objective, batch, estimate in cases:
        task = build_objective(preset(name), objective)
        ratio = estimate(task) / _measured_flops(task, batch)
        assert 1.0 <= ratio <= 1.1, (name, ratio)


BATCHES = {
    "mlm": ("bert-tiny", lambda ids: {"input_ids": ids, "labels": torch.where(ids % 3 == 0, ids, -100),
                                      "attention_mask": torch.ones_like(ids, dtype=torch.bool)}),
    "clm": ("llama-tiny", lambda ids: {"input_ids": ids}),
    "simclr": ("vit-tiny-digits", lambda ids: {"view1": torch.rand(4, 1, 8, 8), "view2": torch.rand(4, 1, 8, 8)}),
    "clip": ("clip-tiny", lambda ids: {"pixel_values": torch.rand(4, 1, 8, 8), "input_ids": ids % 64,
                                       "attention_mask": torch.ones_like(ids, dtype=torch.bool)}),
}


@pytest.mark.parametrize("objective", list(BATCHES))
def test_bf16_weights_with_fp32_inputs_train(objective):
    """What DeepSpeed bf16 does: bf16 parameters, data as the pipeline made it (fp32 pixels)."""
    name, make = BATCHES[objective]
    task = build_objective(preset(name), objective).to(torch.bfloat16)
    out = task(make(torch.randint(4, 128, (4, 12))))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in task.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)


def test_clm_leaves_the_batch_untouched_and_takes_int32():
    task = build_objective(preset("gpt2-tiny"), "clm")
    seg = torch.tensor([[0] * 4 + [1] * 4] * 2)
    for dtype in (torch.int64, torch.int32):
        ids = torch.randint(0, 128, (2, 8), dtype=dtype)
        before = ids.clone()
        out = task({"input_ids": ids, "labels": ids, "segment_ids": seg})
        assert torch.equal(ids, before) and int(out["num_targets"]) == 12
