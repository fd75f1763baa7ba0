"""The demo's text evidence at toy size: docstrings of three packages, the labelled texts
kept out of the pre-training corpus, the bag-of-words baseline computed, and the grid of
text_compare end to end (tiny fresh encoder/decoder exports stand in for pre-training,
which test_demo_quick covers through the launcher)."""
import json
import re

import pytest
import torch

from ptft_engine.demo import text_compare, text_data

PACKAGES = ("numpy", "networkx", "matplotlib")
VOCAB = 512


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("docstrings")
    counts = text_data.write_text_task(root / "data", {"train": 24, "val": 8, "test": 16}, packages=PACKAGES,
                                       corpus_chars=300_000, stdlib=False)
    return root, counts


def test_labelled_texts_are_held_out_of_the_corpus(task):
    root, counts = task
    data = root / "data"
    corpus = [r["text"] for r in text_data.read_jsonl(data / "corpus.jsonl")]
    val_corpus = [r["text"] for r in text_data.read_jsonl(data / "corpus_val.jsonl")]
    labelled = [r for s in ("train", "val", "test") for r in text_data.read_jsonl(data / f"{s}.jsonl")]
    assert counts["train"] == 24 * 3 and counts["test"] == 16 * 3 and len(labelled) == 48 * 3
    assert {r["label"] for r in labelled} == set(PACKAGES)
    assert sum(map(len, corpus)) >= 250_000 and val_corpus and not set(val_corpus) & set(corpus)
    joined = "\n".join(corpus + val_corpus)
    for r in labelled:
        assert r["text"] not in joined, r["text"][:80]  # no labelled text, not even inside a corpus text
    texts = [r["text"] for r in labelled]
    assert len(set(texts)) == len(texts)  # no duplicates across the splits either
    names = re.compile(r"\b(numpy|np|networkx|nx|matplotlib|plt)\b", re.I)
    assert not [t for t in texts + corpus[:500] if names.search(t)]  # package names are no cue


@pytest.fixture(scope="module")
def grid(task):
    from ptft_engine import cli
    from ptft_engine.export.writer import export_model
    from ptft_engine.models import build_model

    root, _ = task
    assert cli.main(["tokenizer", "train", str(root / "data/corpus.jsonl"), "--kind", "wordpiece", "--vocab-size",
                     str(VOCAB), "--lowercase", "--output", str(root / "tokenizer")]) == 0
    torch.manual_seed(1)  # not the re-init's seed (0): its fresh block must differ from this one
    size = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "max_position_embeddings": 64}
    exports = {}
    for name, arch in (("mlm", {"arch": "encoder", "intermediate_size": 64, "type_vocab_size": 2}),
                       ("clm", {"arch": "decoder", "style": "gpt2"})):
        exports[name] = root / f"export-{name}"
        export_model(build_model({**size, **arch}), exports[name], tokenizer=root / "tokenizer/tokenizer.json")
    recipes = "scratch,small_lr,reinit_top,clm_scratch,clm_last"
    assert text_compare.main(["--data", str(root / "data"), "--mlm", str(exports["mlm"]), "--clm", str(exports["clm"]),
                              "--out", str(root / "grid"), "--recipes", recipes, "--fractions", "0.1,1",
                              "--seeds", "0,1", "--steps-scale", "0.03", "--jobs", "2"]) == 0
    return root, exports, json.loads((root / "grid/text_comparison.json").read_text())["rows"]


def test_grid_rows_and_table(grid):
    _, _, rows = grid
    keys = {(r["key"], r["labels_fraction"]) for r in rows}
    expected = {"bow", "scratch", "small_lr", "reinit_top", "clm_scratch", "clm_last"}
    assert keys == {(k, f) for k in expected for f in (0.1, 1.0)}
    for r in rows:
        assert len(r["per_seed"]) == 2 and all(0.0 <= a <= 1.0 for a in r["per_seed"])
        assert r["test_accuracy"] == pytest.approx(sum(r["per_seed"]) / 2)
        assert r["spread"] == pytest.approx(abs(r["per_seed"][0] - r["per_seed"][1]) / 2)
    assert {r["train_labels"] for r in rows if r["labels_fraction"] == 1.0} == {24 * 3}
    md = text_compare.table(rows)
    for name in {r["recipe"] for r in rows}:
        assert f"| {name} |" in md
    assert "±" in md and "Goal (MLM beats scratch by >= 5 points at 1 % and 10 % labels)" in md


def test_each_recipe_pools_as_its_name_says(grid):
    root, _, _ = grid
    for key, pooling in (("small_lr", "mean"), ("clm_scratch", "mean"), ("clm_last", "last")):
        assert text_compare.RECIPES[key].pooling == pooling
        task = json.loads((root / f"grid/{key}-0.1-seed0/best/task.json").read_text())
        assert task["pooling"] == pooling, key


def test_bag_of_words_baseline_is_computed(grid):
    _, _, rows = grid
    bow = {r["labels_fraction"]: r for r in rows if r["key"] == "bow"}
    assert bow[1.0]["test_accuracy"] > 0.5  # three packages: chance is 1/3; words do tell them apart
    assert bow[1.0]["trainable_params"] is None and bow[0.1]["train_labels"] < bow[1.0]["train_labels"]


def test_reinit_top_replaces_only_the_top_block(grid):
    from ptft_engine.export import load_export

    root, exports, _ = grid
    before = load_export(exports["mlm"]).model
    after = load_export(root / "grid/export-reinit_top").model
    top, lower = before.layers[-1].state_dict(), before.layers[0].state_dict()
    assert any(not torch.equal(v, after.layers[-1].state_dict()[k]) for k, v in top.items() if v.ndim == 2)
    assert all(torch.equal(v, after.layers[0].state_dict()[k]) for k, v in lower.items())
    assert torch.equal(before.embeddings.word_embeddings.weight, after.embeddings.word_embeddings.weight)


def test_goal_line_reports_a_miss():
    rows = [{"key": "scratch", "recipe": text_compare.SCRATCH_ENCODER, "labels_fraction": f, "test_accuracy": 0.5}
            for f in (0.01, 0.1)]
    rows += [{"key": "small_lr", "recipe": text_compare.RECIPES["small_lr"].name, "labels_fraction": f,
              "test_accuracy": acc} for f, acc in ((0.01, 0.58), (0.1, 0.53))]
    line = text_compare.goal_line(rows)
    assert "MISSED" in line and "+8.0 points" in line and "+3.0 points" in line
    rows[-1]["test_accuracy"] = 0.56
    assert "met" in text_compare.goal_line(rows)
    assert text_compare.goal_lines(rows) == text_compare.goal_line(rows)  # no CLM rows: no CLM goal
    rows += [{"key": key, "recipe": text_compare.RECIPES[key].name, "labels_fraction": f, "test_accuracy": acc}
             for key, acc in (("clm_scratch", 0.4), ("clm_small_lr", 0.46)) for f in (0.01, 0.1)]
    mlm, clm = text_compare.goal_lines(rows).split("\n\n")
    assert mlm.startswith("Goal (MLM beats scratch") and " met " in mlm
    assert clm.startswith("Goal (CLM beats the scratch decoder by >= 5 points") and " met " in clm
    assert clm.count("+6.0 points") == 2
