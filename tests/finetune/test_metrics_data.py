"""Metrics against hand-computed values; sub-word label alignment; config errors; the CLI."""
import json

import pytest
import yaml

from ptft_engine import cli
from ptft_engine.finetune import parse_finetune_config
from ptft_engine.finetune.data import TextEncoder
from ptft_engine.finetune.metrics import entity_f1, entity_spans, macro_f1, pearson, spearman
from ptft_engine.labels import IGNORE_INDEX


def test_entity_spans_and_f1():
    spans = entity_spans(["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-PER"])
    assert spans == {("PER", 0, 2), ("LOC", 3, 5), ("PER", 5, 6)}
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # PER boundary wrong: 1 of 2 right, 1 of 2 predicted right
    scores = entity_f1(gold, pred)
    assert scores["entity_precision"] == 0.5 and scores["entity_recall"] == 0.5 and scores["entity_f1"] == 0.5


def test_macro_f1_and_correlations():
    assert macro_f1([0, 0, 1, 1], [0, 1, 1, 1], labels=[0, 1]) == pytest.approx((2 / 3 + 0.8) / 2)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0  # constant input: defined as no correlation


def test_subword_label_alignment(assets):
    enc = TextEncoder(assets["encoder"] / "tokenizer.json", "encoder")
    words, tags = ["carolina", "okafor", "was", "in", "toronto"], [2, 3, 0, 0, 1]
    out = enc.encode_words(words, tags, 64, all_subtokens=False, continuation={2: 3})
    pieces = enc.tok.encode(words, is_pretokenized=True, add_special_tokens=False)
    assert out["input_ids"][0] == enc.ids["cls"] and out["input_ids"][-1] == enc.ids["sep"]
    assert len(pieces.ids) > len(words)  # the small vocabulary really splits words
    labelled = [lab for lab in out["labels"] if lab != IGNORE_INDEX]
    assert labelled == tags  # one label per word, on its first sub-word
    assert sum(out["word_starts"]) == len(words)
    full = enc.encode_words(words, tags, 64, all_subtokens=True, continuation={2: 3})
    first_piece_of_carolina = 1
    assert full["labels"][first_piece_of_carolina] == 2 and full["labels"][first_piece_of_carolina + 1] == 3  # B -> I


def test_unknown_config_key_names_it(assets, tmp_path):
    with pytest.raises(ValueError, match=r"optim.learning_rate: unknown key"):
        parse_finetune_config({"model": {"pretrained": "x"}, "task": {"kind": "regression"}, "data": {"train": "x"},
                               "optim": {"learning_rate": 1e-3}})


def test_cli_finetune_runs_from_yaml(assets, tmp_path, capsys):
    cfg = {"model": {"pretrained": str(assets["encoder"])}, "task": {"kind": "sequence_classification"},
           "data": {"train": str(assets["sentiment"])}, "optim": {"lr": 2e-3, "epochs": 1, "batch_size": 16},
           "output_dir": str(tmp_path / "out")}
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["finetune", "--config", str(path), "--no-progress", "strategy.kind=lora"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["metric"] == "accuracy" and summary["trainable_params"] < 10_000
    assert (tmp_path / "out" / "best" / "manifest.json").is_file()


def test_cli_finetune_bad_data_is_one_line(assets, tmp_path, capsys):
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({"model": {"pretrained": str(assets["encoder"])},
                                    "task": {"kind": "sequence_classification"},
                                    "data": {"train": str(assets["sentiment"]), "label_field": "stars"},
                                    "output_dir": str(tmp_path / "out")}))
    assert cli.main(["finetune", "--config", str(path), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "has no field 'stars'" in err and "\n" not in err


def test_shipped_configs_are_valid():
    from pathlib import Path

    from ptft_engine.finetune import load_finetune_config

    paths = sorted((Path(__file__).parents[2] / "configs" / "finetune").glob("*.yaml"))
    assert len(paths) >= 4
    kinds = {load_finetune_config(path).task.kind for path in paths}  # raises with the key on any schema problem
    assert {"sequence_classification", "image_classification", "audio_classification"} <= kinds


@pytest.mark.slow  # a subprocess
def test_finetune_and_loading_never_import_deepspeed(assets):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ptft_engine.finetune import load_task_model, finetune, TaskModel\n"
        "from ptft_engine.export import load_pretrained\n"
        f"m = load_pretrained({str(assets['encoder'])!r})\n"
        "TaskModel(m, 'sequence_classification', 2)\n"
        "assert 'deepspeed' not in sys.modules, 'deepspeed was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
