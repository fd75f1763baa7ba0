"""Image batches: SimCLR views, CLIP pairs, deterministic augmentation, broken images."""
from __future__ import annotations

import json

import pytest
import torch
import webdataset as wds
from data_helpers import png_bytes

from ptft_engine import cli
from ptft_engine.data import DataConfig, build_loader
from ptft_engine.data.images import augment, random_resized_crop


@pytest.fixture(scope="module")
def image_shards(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("imgshards") / "s"
    assert cli.main(["shard", image_folder, "--format", "images", "--output", str(out), "--workers", "1",
                     "--no-progress", "--max-samples", "5"]) == 0
    return str(out)


def test_simclr_views_are_deterministic_and_differ(image_shards):
    cfg = DataConfig(shards=[image_shards], kind="image", image_size=12, batch_size=4, num_workers=0,
                     emit_sample_index=True)
    batches = list(build_loader(cfg, objective="simclr"))
    assert len(batches) == 3
    b = batches[0]
    assert b["view1"].shape == b["view2"].shape == (4, 3, 12, 12) and b["view1"].dtype == torch.float32
    assert not torch.allclose(b["view1"], b["view2"])  # two different augmentations
    assert torch.isfinite(b["view1"]).all()
    again = list(build_loader(cfg, objective="simclr", rank=0, world_size=1))
    assert all(torch.equal(x["view1"], y["view1"]) for x, y in zip(batches, again))
    # a resumed loader augments exactly as the uninterrupted one
    loader = build_loader(cfg, objective="simclr")
    next(iter(loader))
    resumed = build_loader(cfg, objective="simclr")
    resumed.load_state_dict(loader.state_dict())
    assert all(torch.equal(x["view2"], y["view2"]) for x, y in zip(batches[1:], resumed))



def test_grayscale_views_for_one_channel_models(image_shards):
    rgb = DataConfig(shards=[image_shards], kind="image", image_size=12, batch_size=4, num_workers=0)
    gray = rgb.model_copy(update={"image_channels": 1})
    b_rgb = next(iter(build_loader(rgb, objective="simclr")))
    b_gray = next(iter(build_loader(gray, objective="simclr")))
    assert b_gray["view1"].shape == (4, 1, 12, 12)
    # same crops and jitter; luminance of the (un-normalised) RGB view, renormalised
    from ptft_engine.data.images import GRAY_MEAN, GRAY_STD, LUMA, MEAN, STD
    luma = ((b_rgb["view1"] * STD + MEAN) * LUMA).sum(1, keepdim=True)
    torch.testing.assert_close(b_gray["view1"], (luma - GRAY_MEAN) / GRAY_STD, atol=1e-5, rtol=1e-5)

def test_clip_pairs_and_broken_image_refill(tmp_path, tok_path):
    shard = tmp_path / "pairs.tar"
    with wds.TarWriter(str(shard), encoder=False) as w:
        for i in range(6):
            img = png_bytes(i) if i != 3 else b"\x89PNG\r\n\x1a\n broken"
            w.write({"__key__": f"k{i}", "png": img, "txt": f"a caption {i}".encode()})
    cfg = DataConfig(shards=[str(shard)], kind="image_text", tokenizer=tok_path, seq_len=10, image_size=8,
                     batch_size=3, num_workers=0, shuffle=False)
    loader = build_loader(cfg, objective="clip")
    batches = list(loader)
    assert len(batches) == 2 and loader.stats["skipped"] == 1 and loader.stats["repeated"] == 1
    b = batches[1]
    assert b["pixel_values"].shape == (3, 3, 8, 8)  # the broken row is refilled: equal batch sizes
    assert b["input_ids"].shape == (3, 10) and b["attention_mask"].dtype == torch.bool
    ids, mask = b["input_ids"], b["attention_mask"]
    assert (ids[:, 0] == 5).all()  # <bos>
    lengths = mask.sum(1)
    assert all(ids[r, lengths[r] - 1] == 6 for r in range(3))  # <eos> ends each caption
    assert (ids[~mask] == 0).all()
    with pytest.raises(Exception, match="k3"):
        list(build_loader(cfg.model_copy(update={"strict": True}), objective="clip"))


def test_crop_and_jitter_keep_shapes_and_ranges():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 40, 7)  # an extreme aspect ratio falls back to a centre crop
    out = random_resized_crop(img, 16, (0.9, 1.0), g)
    assert out.shape == (3, 16, 16)
    cfg = DataConfig(shards=["x"], kind="image", image_size=16)
    aug = augment(torch.rand(3, 30, 30), cfg, torch.Generator().manual_seed(1), jitter=True)
    assert aug.shape == (3, 16, 16) and aug.abs().max() < 3  # normalised
    json.dumps(cfg.model_dump())  # configs stay serialisable
