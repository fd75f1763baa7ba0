"""The demo's speech stage end to end at toy size (~30-60 s on 2 loaded CPU cores): eSpeak NG
data -> audio shards -> k-means targets -> HuBERT pre-training under launch/local.sh -> export ->
fine-tuning grid pre-trained vs scratch -> speech_comparison.json / .md rows, and the report's
loss plot."""
import json
from pathlib import Path

import pytest
import yaml

from ptft_engine.demo import speech
from ptft_engine.demo.stages import Stages

pytestmark = pytest.mark.slow  # a launcher run and six fine-tunings

TOY = speech.SpeechPlan(sentences=8, renditions=1, train_voices=2, pretrain_steps=4,
                        recipes=("scratch", "frozen_fe"), fractions=(0.1, 1.0), seeds=(0,), steps=3)


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    out = tmp_path_factory.mktemp("speech")
    st = Stages(total=1, out=out)
    result = speech.run_speech(st, out, TOY, ranks=1, env={"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"},
                               log_every=1)
    return out, result, st


def test_rows_cover_the_grid_and_hold_test_accuracies(stage):
    out, result, st = stage
    saved = json.loads((out / "speech_comparison.json").read_text())
    rows = saved["rows"]
    assert rows == json.loads(json.dumps(result["rows"]))
    assert [(r["key"], r["labels_fraction"]) for r in rows] == [(k, f) for f in TOY.fractions for k in TOY.recipes]
    for r in rows:
        assert all(0.0 <= a <= 1.0 for a in r["per_seed"]) and r["test_accuracy"] == pytest.approx(r["per_seed"][0])
        assert r["steps"] == TOY.steps and (Path(r["dirs"][0]) / "best" / "config.json").is_file()
    # 2 train voices x 10 digits, one clip per digit held out for validation: 10 % keeps one per digit
    assert {r["labels_fraction"]: r["train_labels"] for r in rows} == {0.1: 10, 1.0: 10}
    scratch, frozen = (next(r for r in rows if r["key"] == k and r["labels_fraction"] == 1.0) for k in TOY.recipes)
    assert frozen["trainable_params"] < scratch["trainable_params"]  # the conv stack stays as pre-trained
    md = (out / "speech_comparison.md").read_text()
    assert md == result["table"] + "\n" and "| pre-trained / frozen feature encoder |" in md
    assert "| scratch / full |" in md and "held-out voices" in md.splitlines()[0]
    assert saved["data"]["digits"]["test"]["clips"] == 40  # the 4 held-out voices
    assert {"speech data", "speech targets", "speech pre-train", "speech fine-tune", "speech"} <= set(st.timings)


def test_pretraining_ran_under_the_launcher_on_kmeans_targets_and_exported(stage):
    import torch
    from transformers import Wav2Vec2Model

    from ptft_engine.objectives.speech_targets import KMeansTargets

    out, _, _ = stage
    saved = json.loads((out / "speech_comparison.json").read_text())
    targets = saved["data"]["targets"]
    km = KMeansTargets.load(targets["path"])
    assert km.num_clusters == targets["clusters"] == speech.CLUSTERS and km.frames == targets["frames"] > 100
    run = out / "runs" / speech.RUN_NAME
    objective = yaml.safe_load((run / "config.yaml").read_text())["objective"]
    assert (objective["name"], objective["kmeans_path"]) == ("hubert", targets["path"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("split") == "train"]
    # masked + unmasked cross-entropy over 100 clusters: about 2 ln 100 = 9.2 at the start
    assert len(losses) == TOY.pretrain_steps and all(6 < x < 12 for x in losses)
    pre = Wav2Vec2Model.from_pretrained(out / "export/hubert-speech")
    scratch = Wav2Vec2Model.from_pretrained(out / "export/speech-scratch")
    assert pre.config.hidden_size == scratch.config.hidden_size == 64  # the same tiny architecture
    a, b = pre.state_dict(), scratch.state_dict()
    assert a.keys() == b.keys() and not torch.equal(a["encoder.layers.0.attention.q_proj.weight"],
                                                    b["encoder.layers.0.attention.q_proj.weight"])


def test_report_shows_the_table_and_the_pretraining_loss(stage):
    from ptft_engine.report import build_report

    out, _, _ = stage
    paths = build_report(out)
    assert {out / "report" / f"pretrain_{speech.RUN_NAME}.png", out / "report/speech_comparison.png"} <= set(paths)
    md = (out / "report/report.md").read_text()
    assert "## Speech: HuBERT pre-trained vs from scratch" in md
    assert "| pre-trained / frozen feature encoder |" in md
