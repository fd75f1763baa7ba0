"""wav2vec 2.0: span masks, distractor sampling, the Gumbel quantiser, and a toy pre-training run."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from speech_toys import tones, train_on_tones

from ptft_engine.models import build_model, load_model_config
from ptft_engine.objectives.wav2vec2 import (
    GumbelQuantizer,
    Wav2Vec2Objective,
    Wav2Vec2ObjectiveConfig,
    compute_span_mask,
    sample_negatives,
)

TINY = Path(__file__).resolve().parents[2] / "configs" / "models" / "wav2vec2-tiny.yaml"


def _runs(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    runs, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_span_mask_spans_fraction_and_padding():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([500] * 32 + [300, 123, 9, 0])
    mask = compute_span_mask(lengths, 500, 0.65, 10, min_masks=2, generator=g)
    assert mask.shape == (36, 500) and mask.dtype == torch.bool
    for b, n in enumerate(lengths.tolist()):
        assert not mask[b, n:].any(), f"padding frame masked in row {b}"
        runs = _runs(mask[b, :n])
        assert all(r >= 10 for r in runs), f"row {b}: a masked run shorter than one span: {runs}"
    # shorter than one span: nothing to mask
    assert not mask[-2].any() and not mask[-1].any()
    # 0.065 spans per frame, overlapping: the paper's "about 49 % of all time steps" (0.492 over 2,000 rows)
    frac = mask[:32].float().mean().item()
    assert 0.44 < frac < 0.53, frac
    # the number of spans is the expected one: without overlap the count would be 0.065 * 500 = 32.5 spans
    starts = (mask[:32, 1:] & ~mask[:32, :-1]).sum() + mask[:32, 0].sum()
    assert starts.item() / 32 < 32.5 + 1


def test_span_mask_min_masks_and_determinism():
    lengths = torch.tensor([30, 30])
    a = compute_span_mask(lengths, 30, 0.05, 10, min_masks=2, generator=torch.Generator().manual_seed(3))
    b = compute_span_mask(lengths, 30, 0.05, 10, min_masks=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # 0.05 * 30 / 10 rounds to 0 or 1 span; min_masks lifts it to two distinct starts: at least 11 frames
    assert (a.sum(1) >= 11).all()


def test_negatives_come_from_other_masked_frames_of_the_same_utterance():
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[0, 3:15] = True
    mask[1, 20:40] = True
    mask[2, 7] = True  # a single masked frame: it can only draw itself
    g = torch.Generator().manual_seed(0)
    neg = sample_negatives(mask, 100, generator=g)
    rows = torch.nonzero(mask)[:, 0]
    n = rows.shape[0]
    assert neg.shape == (n, 100) and neg.min() >= 0 and neg.max() < n
    assert torch.equal(rows[neg], rows[:, None].expand(-1, 100)), "a distractor from another utterance"
    own = torch.arange(n)[:, None]
    multi = mask.sum(1)[rows] > 1
    assert not (neg[multi] == own[multi]).any(), "a frame drew itself as its distractor"
    assert (neg[~multi] == own[~multi]).all()
    # uniform over the 11 others of row 0: every one is drawn, none much more than the others
    counts = torch.bincount(neg[:12].flatten(), minlength=n)[:12]
    assert (counts > 0).sum() == 12 and counts.max() < 3 * counts.float().mean()


def test_quantiser_shapes_one_entry_per_group_and_perplexity():
    q = GumbelQuantizer(in_dim=16, groups=2, entries=8, codevector_dim=12)
    x = torch.randn(3, 5, 16)
    q.train()
    out, ppl = q(x, temperature=2.0)
    assert out.shape == (3, 5, 12)
    book = q.codevectors[0].view(2, 8, 6)
    for vec in out.reshape(-1, 12):  # each half is exactly one codebook row of its group
        for g in range(2):
            part = vec[g * 6:(g + 1) * 6]
            assert (book[g] - part).abs().sum(-1).min() < 1e-6
    assert 2.0 <= ppl.item() <= 16.0
    out.sum().backward()  # straight-through: gradients reach the logits' projection
    assert q.weight_proj.weight.grad.abs().sum() > 0
    # uniform soft assignments: perplexity = G * V, so the diversity loss is 0
    with torch.no_grad():
        q.weight_proj.weight.zero_()
    q.eval()
    _, ppl = q(x, temperature=2.0)
    assert math.isclose(ppl.item(), 16.0, rel_tol=1e-5)
    # padded frames do not count towards the perplexity
    frame_mask = torch.ones(3, 5, dtype=torch.bool)
    frame_mask[:, 3:] = False
    with torch.no_grad():
        q.weight_proj.bias.copy_(torch.arange(16.0))
    _, full = q(x, 1.0)
    _, masked = q(x, 1.0, frame_mask)
    assert math.isclose(full.item(), masked.item(), rel_tol=1e-5)  # same logits everywhere: same average


def test_gumbel_temperature_anneals_from_2_to_half():
    model = build_model(load_model_config(TINY))
    obj = Wav2Vec2Objective(model, Wav2Vec2ObjectiveConfig())
    assert obj.gumbel_temperature == 2.0
    obj.num_updates.fill_(100_000)
    assert math.isclose(obj.gumbel_temperature, 2.0 * 0.999995 ** 100_000)
    obj.num_updates.fill_(10_000_000)
    assert obj.gumbel_temperature == 0.5


def test_pretraining_loss_decreases_on_toy_tones():
    torch.manual_seed(0)
    model = build_model(load_model_config(TINY))
    cfg = Wav2Vec2ObjectiveConfig(num_codevectors_per_group=32, codevector_dim=32, proj_codevector_dim=32,
                                  num_negatives=20, gumbel_temperature_decay=0.99)
    obj = Wav2Vec2Objective(model, cfg)
    before, after = train_on_tones(obj, 80)
    # from about ln(21) = 3.04, the loss of a guess among the target and 20 distractors
    assert after["contrastive_loss"] < before["contrastive_loss"] - 0.3, (before, after)
    assert after["accuracy"] > before["accuracy"] + 0.1, (before, after)
    assert int(obj.num_updates) == 80  # training forwards only


def test_objective_rejects_a_batch_without_audio():
    obj = Wav2Vec2Objective(build_model(load_model_config(TINY)))
    with pytest.raises(KeyError, match="input_values"):
        obj({"pixel_values": torch.zeros(1, 3)})


def test_contrastive_loss_equals_transformers_wav2vec2_for_pretraining():
    """Same weights, masks and distractors: our contrastive loss is transformers' (summed there)
    divided by the number of masked frames, and the quantised targets are the same."""
    transformers = pytest.importorskip("transformers")
    from ptft_engine.export.hf_state import hf_config, to_hf_state_dict

    torch.manual_seed(0)
    model = build_model(load_model_config(TINY))
    cfg = Wav2Vec2ObjectiveConfig(num_codevectors_per_group=16, codevector_dim=32, proj_codevector_dim=24,
                                  num_negatives=7)
    obj = Wav2Vec2Objective(model, cfg).eval()
    hf_cfg = transformers.Wav2Vec2Config(**{
        **hf_config(model), "num_codevector_groups": 2, "num_codevectors_per_group": 16, "codevector_dim": 32,
        "proj_codevector_dim": 24, "num_negatives": 7, "contrastive_logits_temperature": 0.1})
    hf = transformers.Wav2Vec2ForPreTraining(hf_cfg).eval()
    state = {f"wav2vec2.{k}": v for k, v in to_hf_state_dict(model).items()}
    state.update({k: v for k, v in obj.state_dict().items() if k.startswith(("quantizer.", "project_"))})
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    audio = tones(3)
    attention_mask = torch.ones_like(audio, dtype=torch.bool)
    attention_mask[1, 4000:] = False
    audio = audio * attention_mask
    frames = model.frame_lengths(attention_mask.sum(-1))
    mask = compute_span_mask(frames, model.config.num_frames(audio.shape[1]), 0.65, 10, 2,
                             generator=torch.Generator().manual_seed(0))
    neg = sample_negatives(mask, 7, generator=torch.Generator().manual_seed(1))  # (N, 7) into masked frames
    flat = torch.nonzero(mask)  # (N, 2) (utterance, frame) of each masked frame
    t = mask.shape[1]
    hf_neg = torch.zeros(*mask.shape, 7, dtype=torch.long)  # transformers: indices into all B*T frames
    hf_neg[mask] = flat[neg][..., 0] * t + flat[neg][..., 1]
    with torch.no_grad():
        ours = obj({"input_values": audio, "attention_mask": attention_mask, "mask_time_indices": mask,
                    "sampled_negative_indices": neg})
        theirs = hf(audio, attention_mask=attention_mask.long(), mask_time_indices=mask,
                    sampled_negative_indices=hf_neg)
    n = int(mask.sum())
    assert ours["num_masked"] == n > 20
    torch.testing.assert_close(ours["contrastive_loss"], theirs.contrastive_loss / n, atol=1e-5, rtol=1e-5)


def test_flops_per_sample_counts_what_the_forward_computes():
    from torch.utils.flop_counter import FlopCounterMode

    import ptft_engine.ops.attention.op  # noqa: F401  FlopCounterMode copies the flop formulas it knows at creation
    from ptft_engine.objectives.wav2vec2 import forward_flops

    cfg = load_model_config(TINY)
    model = build_model(cfg).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 8000))
    # torch counts the convs, the matmuls and our attention op (its registered flop formula)
    measured = counter.get_total_flops()
    assert abs(forward_flops(cfg, 8000) - measured) <= 0.01 * measured
    obj = Wav2Vec2Objective(model)
    assert obj.flops_per_sample(8000) > 3 * forward_flops(cfg, 8000)


def test_spec_declares_audio_samples_and_a_synthetic_batch_of_whole_frames():
    from ptft_engine.config.schema import SyntheticDataConfig
    from ptft_engine.objectives import build_objective, get_spec

    spec = get_spec("wav2vec2")
    assert (spec.arch, spec.data.kind, spec.data.tokenizer, spec.unit) == ("wav2vec2", "audio", False, "samples")
    cfg = SyntheticDataConfig(synthetic=True, batch_size=3, seq_len=24)
    batch = spec.synthetic_batch(cfg, torch.Generator().manual_seed(0))
    again = spec.synthetic_batch(cfg, torch.Generator().manual_seed(0))
    assert torch.equal(batch["input_values"], again["input_values"])
    assert batch["input_values"].shape == (3, 24 * 320 + 80) and batch["attention_mask"].all()
    x = batch["input_values"]
    torch.testing.assert_close(x.mean(1), torch.zeros(3), atol=1e-5, rtol=0)  # normalised as the stream does
    model_cfg = load_model_config(TINY)
    assert model_cfg.num_frames(x.shape[1]) == 24
    obj = build_objective(model_cfg, {"name": "wav2vec2", "num_negatives": 5})
    assert math.isfinite(obj(batch)["loss"].item())
    assert spec.flops_per_unit(obj, 24) == obj.flops_per_sample(24 * 320 + 80)
    with pytest.raises(ValueError, match="gumbel_min_temperature 3.0 is above"):
        build_objective(model_cfg, {"name": "wav2vec2", "gumbel_min_temperature": 3.0})
