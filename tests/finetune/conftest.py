import pytest
import torch
from finetune_fixtures import make_image_folder, make_pretrained, ner_records, sentiment_records, write_jsonl


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: intra-op threads only add contention on a shared 2-core machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft_assets")
    return {
        "encoder": make_pretrained(root, "encoder"),
        "decoder": make_pretrained(root, "decoder"),
        "sentiment": write_jsonl(root / "sentiment.jsonl", sentiment_records(240)),
        "ner": write_jsonl(root / "ner.jsonl", ner_records(200)),
        "images": make_image_folder(root / "images"),
        "root": root,
    }


def base_config(assets, tmp_path, task: str, **over) -> dict:
    data = {"sequence_classification": "sentiment", "regression": "sentiment", "token_classification": "ner"}[task]
    cfg = {
        "model": {"pretrained": str(assets["encoder"])},
        "task": {"kind": task},
        "data": {"train": str(assets[data]), **({"label_field": "score"} if task == "regression" else {})},
        "optim": {"lr": 2e-3, "epochs": 6, "batch_size": 16},
        "eval": {"patience": None},
        "output_dir": str(tmp_path / "out"),
        "progress_bar": False,
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            cfg.setdefault(section, {})[field] = value
        else:
            cfg[section] = value
    return cfg
