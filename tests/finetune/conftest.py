import pytest
from finetune_fixtures import make_image_folder, make_pretrained, ner_records, sentiment_records, write_jsonl
from shared_helpers import one_torch_thread  # noqa: F401  (autouse fixture: tiny models, one thread)


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
