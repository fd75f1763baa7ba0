"""A fine-tuned model is served by transformers' AutoModelFor* classes: same tokens from
AutoTokenizer, same logits (1e-5) and predictions as ptft's TaskModel; ptft export keeps
the head (any dtype); a `ptft finetune` run is served with the accuracy ptft measured."""
import json

import pytest
import torch
import transformers
from finetune_fixtures import base_config, ner_records, sentiment_records

from ptft_engine import cli
from ptft_engine.export import load_export
from ptft_engine.finetune import TaskModel, finetune, load_task_model, parse_finetune_config, save_task_model
from ptft_engine.finetune.data import TextEncoder, pad_collate
from ptft_engine.finetune.tasks import select_backbone
from ptft_engine.models import DecoderConfig, ViTConfig, build_model

LABELS = {"sequence_classification": ["negative", "neutral", "positive"],
          "token_classification": ["O", "B-PER", "I-PER", "B-LOC"], "regression": None,
          "image_classification": ["top", "bottom"]}
AUTO = {"sequence_classification": transformers.AutoModelForSequenceClassification,
        "regression": transformers.AutoModelForSequenceClassification,
        "token_classification": transformers.AutoModelForTokenClassification,
        "image_classification": transformers.AutoModelForImageClassification}
TEXTS = [r["text"] for r in sentiment_records(7, seed=3)]
MAX_LENGTH = 48  # data.max_length of the "fine-tuning": the served tokenizer truncates there


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, assets):
    root = tmp_path_factory.mktemp("serving")
    tok = assets["encoder"] / "tokenizer.json"
    llama = root / "llama"
    from ptft_engine.export import export_model

    torch.manual_seed(1)
    export_model(build_model(DecoderConfig(style="llama", vocab_size=96, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                           tie_word_embeddings=False)), llama, tokenizer=tok)
    return {"encoder": assets["encoder"], "gpt2": assets["decoder"], "llama": llama, "tokenizer": tok}


def task_model(path, kind) -> TaskModel:
    torch.manual_seed(2)
    labels = LABELS[kind]
    backbone = select_backbone(load_export(path).model, kind)
    model = TaskModel(backbone, kind, 1 if labels is None else len(labels), dropout=0.0)
    for p in model.head_parameters():  # a trained-looking head, not the near-zero init
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def save(model, out, kind, tokenizer=None):
    info = {"kind": kind, "num_outputs": model.num_outputs, "labels": LABELS[kind], "pooling": model.pooling,
            "max_length": MAX_LENGTH, **({"target": "score"} if kind == "regression" else {})}
    save_task_model(model, out, task_info=info, metrics={"accuracy": 0.5}, tokenizer=tokenizer)
    return out


def our_batch(model, tokenizer, kind):
    enc = TextEncoder(tokenizer, model.arch)
    if kind == "token_classification":
        items = [enc.encode_words(r["tokens"], [0] * len(r["tokens"]), MAX_LENGTH, False, {})
                 for r in ner_records(5, seed=4)]
    else:
        items = [{**enc.encode_text(t, None, MAX_LENGTH), "labels": 0} for t in TEXTS]
    return pad_collate(enc.pad_id)(items), items


def hf_inputs(out, kind, ours):
    """The same batch through the saved AutoTokenizer: the ids must be ours."""
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.model_max_length == MAX_LENGTH
    if kind == "token_classification":
        words = [r["tokens"] for r in ner_records(5, seed=4)]
        enc = tok(words, is_split_into_words=True, padding=True, return_tensors="pt")
    else:
        enc = tok(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(enc["input_ids"], ours["input_ids"]), "AutoTokenizer encodes differently from ptft"
    assert torch.equal(enc["attention_mask"], ours["attention_mask"])
    return enc


@pytest.mark.parametrize("backbone,kind,cls", [
    ("encoder", "sequence_classification", "BertForSequenceClassification"),
    ("encoder", "regression", "BertForSequenceClassification"),
    ("encoder", "token_classification", "BertForTokenClassification"),
    ("gpt2", "sequence_classification", "GPT2ForSequenceClassification"),
    ("gpt2", "regression", "GPT2ForSequenceClassification"),
    ("llama", "sequence_classification", "LlamaForSequenceClassification"),
    ("gpt2", "token_classification", "GPT2ForTokenClassification"),
    ("llama", "token_classification", "LlamaForTokenClassification"),
])
def test_text_task_served_by_transformers_equals_ours(backbones, tmp_path, backbone, kind, cls):
    model = task_model(backbones[backbone], kind)
    out = save(model, tmp_path / "best", kind, backbones["tokenizer"])
    hf = AUTO[kind].from_pretrained(out).eval()
    assert type(hf).__name__ == cls
    labels = LABELS[kind] or ["score"]
    assert hf.config.id2label == dict(enumerate(labels)) and hf.config.label2id == {n: i for i, n in enumerate(labels)}
    if kind == "regression":
        assert hf.config.problem_type == "regression" and hf.config.num_labels == 1
    batch, _ = our_batch(model, backbones["tokenizer"], kind)
    enc = hf_inputs(out, kind, batch)
    with torch.no_grad():
        ours = model(batch)
        theirs = hf(**enc).logits
    if kind == "regression":
        theirs = theirs.squeeze(-1)
    keep = batch["attention_mask"].bool() if kind == "token_classification" else slice(None)
    assert torch.allclose(ours[keep], theirs[keep], atol=1e-5, rtol=0), (ours[keep] - theirs[keep]).abs().max()
    if kind != "regression":
        assert torch.equal(ours[keep].argmax(-1), theirs[keep].argmax(-1))
    # our own loader reads the same files
    again, info = load_task_model(out)
    with torch.no_grad():
        assert torch.equal(again(batch), ours)
    assert info["transformers_class"] == cls and not (out / "head.safetensors").exists()


def test_image_classification_served_by_vit_for_image_classification(tmp_path):
    torch.manual_seed(3)
    vit = build_model(ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64))
    model = TaskModel(vit, "image_classification", 2, dropout=0.0).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    out = save(model, tmp_path / "best", "image_classification")
    hf = transformers.AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == "ViTForImageClassification" and hf.config.id2label == {0: "top", 1: "bottom"}
    pixels = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        ours, theirs = model({"pixel_values": pixels}), hf(pixel_values=pixels).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0) and torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_mean_pooling_has_no_transformers_class_and_says_so(backbones, tmp_path):
    torch.manual_seed(2)
    backbone = select_backbone(load_export(backbones["encoder"]).model, "sequence_classification")
    model = TaskModel(backbone, "sequence_classification", 3, pooling="mean", dropout=0.0).eval()
    out = save(model, tmp_path / "best", "sequence_classification", backbones["tokenizer"])
    task = json.loads((out / "task.json").read_text())
    assert task["transformers_class"] is None and "pooling='mean'" in task["transformers_class_why_none"]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]  # the backbone, no MLM head
    batch, _ = our_batch(model, backbones["tokenizer"], "sequence_classification")
    again, _ = load_task_model(out)
    with torch.no_grad():
        assert torch.equal(again(batch), model(batch))


def test_decoder_pools_mean_when_asked_and_last_by_default(backbones, tmp_path):
    torch.manual_seed(2)
    kind = "sequence_classification"
    models = {p: TaskModel(select_backbone(load_export(backbones["gpt2"]).model, kind), kind, 3, pooling=p,
                           dropout=0.0).eval() for p in ("cls", "mean", "last")}
    assert {p: m.pooling for p, m in models.items()} == {"cls": "last", "mean": "mean", "last": "last"}
    batch, _ = our_batch(models["mean"], backbones["tokenizer"], kind)
    with torch.no_grad():
        h = models["mean"].backbone.encode(batch["input_ids"], attention_mask=batch["attention_mask"])
        pooled = {p: models[p]._pool(h, batch["attention_mask"]) for p in ("mean", "last")}
    m = batch["attention_mask"].float()[..., None]
    assert torch.allclose(pooled["mean"], (h * m).sum(1) / m.sum(1))
    assert not torch.allclose(pooled["mean"], pooled["last"])
    out = save(models["mean"], tmp_path / "best", kind, backbones["tokenizer"])
    task = json.loads((out / "task.json").read_text())
    assert task["transformers_class"] is None and "pooling='mean'" in task["transformers_class_why_none"]
    again, _ = load_task_model(out)
    assert again.pooling == "mean"
    with torch.no_grad():
        assert torch.equal(again(batch), models["mean"](batch))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_reexport_keeps_task_head_and_metadata(backbones, tmp_path, dtype):
    kind = "sequence_classification"
    model = task_model(backbones["encoder"], kind)
    src = save(model, tmp_path / "best", kind, backbones["tokenizer"])
    out = tmp_path / "re"
    assert cli.main(["export", str(src), str(out), "--dtype", dtype]) == 0
    for name in ("task.json", "metrics.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == {"accuracy": 0.5}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"]["transformers_class"] == "BertForSequenceClassification" and manifest["dtype"] == dtype
    batch, _ = our_batch(model, backbones["tokenizer"], kind)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        ours, theirs = model(batch), hf(**inputs).logits
    tol = 1e-5 if dtype == "fp32" else 0.1  # bf16 weights: 8 bits of mantissa
    assert torch.allclose(ours, theirs, atol=tol, rtol=0), (ours - theirs).abs().max()
    if dtype == "fp32":
        assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    again, info = load_task_model(out)
    assert info["labels"] == LABELS[kind] and again.pooler is not None


@pytest.mark.slow  # a whole fine-tuning run
def test_finetuned_model_is_served_with_the_accuracy_ptft_measured(assets, tmp_path):
    from ptft_engine.finetune.datasets import build_task_data

    cfg = parse_finetune_config(base_config(assets, tmp_path, "sequence_classification",
                                            optim={"lr": 2e-3, "epochs": 1}))
    result = finetune(cfg)
    best = tmp_path / "out" / "best"
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(best).eval()
    data = build_task_data(cfg, result["model"].backbone.config, str(assets["encoder"] / "tokenizer.json"))
    loader = torch.utils.data.DataLoader(data.val, batch_size=64, collate_fn=data.collate)
    right = total = 0
    with torch.no_grad():
        for batch in loader:
            logits = hf(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
            right += (logits.argmax(-1) == batch["labels"]).sum().item()
            total += len(batch["labels"])
    measured = json.loads((best / "metrics.json").read_text())["accuracy"]
    assert right / total == pytest.approx(measured)


def test_backbone_transformers_cannot_hold_saves_natively_and_reloads(tmp_path):
    from ptft_engine.models import EncoderConfig
    from ptft_engine.models.encoder import TransformerEncoder

    torch.manual_seed(4)  # a CLIP text tower: no token type embeddings, which BertModel always has
    tower = TransformerEncoder(EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=32, max_position_embeddings=16, type_vocab_size=0),
                               with_mlm_head=False)
    model = TaskModel(tower, "sequence_classification", 3, dropout=0.0).eval()
    out = save(model, tmp_path / "best", "sequence_classification")
    task = json.loads((out / "task.json").read_text())
    assert task["transformers_class"] is None and "type_vocab_size=0" in task["transformers_class_why_none"]
    again, _ = load_task_model(out)
    batch = {"input_ids": torch.randint(0, 50, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    with torch.no_grad():
        assert torch.equal(again(batch), model(batch))
