"""Fine-tuning reads `ptft shard` image shards: same examples as the image folder, a run
writes its metrics, and bad shard input is a one-line error naming the shard / key."""
import json

import numpy as np
import pytest
import torch
import yaml

from ptft_engine.cli import main
from ptft_engine.finetune import parse_finetune_config
from ptft_engine.finetune.data import read_image_folder, read_records
from ptft_engine.finetune.datasets import build_task_data
from ptft_engine.finetune.errors import FinetuneDataError
from ptft_engine.models import parse_model_config

CLASSES = ["circle", "cross", "stripe"]
VIT = {"arch": "vit", "image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 16,
       "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


@pytest.fixture(scope="module")
def folder_and_shards(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("shard_input")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / "images" / name).mkdir(parents=True)
        for i in range(8):
            img = rng.uniform(0, 0.3, (8, 8))
            img[:, 2 * c:2 * c + 3] += 0.6  # a class-specific bright band
            Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8), mode="L").save(root / "images" / name / f"{i}.png")
    # five samples per shard, so the reader crosses shard boundaries
    assert main(["shard", str(root / "images"), "--output", str(root / "shards"), "--format", "images",
                 "--max-samples", "5", "--workers", "1", "--no-progress"]) == 0
    return root


def _cfg(data: dict, tmp_path) -> dict:
    return {"model": {"config": VIT}, "task": {"kind": "image_classification"}, "data": data,
            "optim": {"lr": 3e-3, "batch_size": 8, "max_steps": 4}, "eval": {"patience": None},
            "output_dir": str(tmp_path / "out"), "progress_bar": False}


def test_shards_yield_the_folder_labels_and_images(folder_and_shards, tmp_path):
    root = folder_and_shards
    shard_recs = read_records(root / "shards", "shards")
    folder_recs = read_image_folder(root / "images")
    assert [r["label"] for r in shard_recs] == [r["label"] for r in folder_recs]  # names from index.json
    assert sorted({r["image"].shard for r in shard_recs}) == sorted(str(p) for p in (root / "shards").glob("*.tar"))

    vit = parse_model_config(VIT)
    by_fmt = {fmt: build_task_data(parse_finetune_config(_cfg({"format": fmt, "train": str(root / sub),
                                                                "val_fraction": 0.25}, tmp_path)), vit, None)
              for fmt, sub in (("shards", "shards"), ("image_folder", "images"))}
    assert by_fmt["shards"].label_names == CLASSES == by_fmt["image_folder"].label_names
    for split in ("train", "val"):
        got, want = getattr(by_fmt["shards"], split), getattr(by_fmt["image_folder"], split)
        assert len(got) == len(want) > 0
        for i in range(len(want)):
            assert got[i]["labels"] == want[i]["labels"]
            assert torch.equal(got[i]["pixel_values"], want[i]["pixel_values"])


def test_finetune_command_on_shards_writes_metrics(folder_and_shards, tmp_path, capsys):
    root = folder_and_shards
    cfg = _cfg({"format": "shards", "train": str(root / "shards"), "validation": str(root / "shards" / "index.json")},
               tmp_path)
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["finetune", "--config", str(tmp_path / "ft.yaml")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["metric"] == "accuracy"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["history"]["val"][-1]["step"] == 4
    # the best is the best of the evaluations after training, and it is what best/ holds
    assert report["best"]["accuracy"] == max(v["accuracy"] for v in report["history"]["val"][1:])
    task = json.loads((tmp_path / "out" / "best" / "task.json").read_text())
    assert task["labels"] == CLASSES
    best = json.loads((tmp_path / "out" / "best" / "metrics.json").read_text())
    assert best["accuracy"] == report["best"]["accuracy"]


def test_bad_shard_input_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "no_such_shards"
    with pytest.raises(FinetuneDataError, match=f"shard path '{missing}' does not exist"):
        read_records(missing, "shards")

    # text shards without --label-field carry no label member: the error names the shard and the sample key
    (tmp_path / "t.jsonl").write_text('{"text": "hello there"}\n{"text": "general kenobi"}\n')
    assert main(["shard", str(tmp_path / "t.jsonl"), "--format", "jsonl", "--output", str(tmp_path / "text"),
                 "--workers", "1", "--no-progress"]) == 0
    cfg = _cfg({"format": "shards", "train": str(tmp_path / "text")}, tmp_path)
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["finetune", "--config", str(tmp_path / "ft.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"shard {tmp_path / 'text' / 'shard-000000.tar'}, key 0000000_000000: no .label member" in err

    with pytest.raises(ValueError, match="data.format=shards needs task.kind image_classification or "
                                         "sequence_classification or regression or audio_classification, "
                                         "got token_classification"):
        parse_finetune_config({**cfg, "task": {"kind": "token_classification"}})


def test_finetune_from_labelled_text_shards(assets, tmp_path, capsys):
    """ptft shard --label-field keeps the label; a text task reads the shards as it reads the JSONL."""
    from finetune_fixtures import base_config

    out = tmp_path / "text_shards"
    assert main(["shard", str(assets["sentiment"]), "--format", "jsonl", "--label-field", "label", "--output",
                 str(out), "--max-samples", "50", "--workers", "1", "--no-progress"]) == 0
    jsonl = [json.loads(line) for line in assets["sentiment"].read_text().splitlines()]
    assert read_records(out, "shards") == [{"text": r["text"], "label": r["label"]} for r in jsonl]

    base = base_config(assets, tmp_path, "sequence_classification", optim__epochs=1, optim__max_steps=3)
    sharded = {**base, "data": {"format": "shards", "train": str(out)}}
    vocab = parse_model_config({"arch": "encoder", "vocab_size": 96, "hidden_size": 32, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "intermediate_size": 64})
    tok = str(assets["encoder"] / "tokenizer.json")
    a = build_task_data(parse_finetune_config(base), vocab, tok)
    b = build_task_data(parse_finetune_config(sharded), vocab, tok)
    assert a.label_names == b.label_names == ["negative", "positive"]
    assert [a.train[i] for i in range(len(a.train))] == [b.train[i] for i in range(len(b.train))]

    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(sharded))
    assert main(["finetune", "--config", str(tmp_path / "ft.yaml")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["metric"] == "accuracy"
    assert json.loads((tmp_path / "out" / "best" / "task.json").read_text())["labels"] == ["negative", "positive"]
