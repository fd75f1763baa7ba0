"""Image batches: PIL decode, then random-resized-crop, flip and colour jitter as torch ops.

Augmentation draws come from a generator seeded by (seed, epoch, position, view), so a
resumed run augments exactly as an uninterrupted one. A sample that fails to decode is
skipped and its row refilled from the batch's other samples, keeping the batch size
equal on every rank (contrastive losses gather across ranks).
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from ptft_engine.data.config import DataConfig
from ptft_engine.data.errors import BadSamples
from ptft_engine.data.needs import DataNeeds
from ptft_engine.data.sources import IMAGE_EXTS

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
GRAY_MEAN, GRAY_STD = 0.449, 0.226  # the RGB statistics above, averaged


def decode_image(members: dict) -> torch.Tensor:
    """First image member -> float (3, H, W) in [0, 1]; raises on a broken image."""
    from PIL import Image

    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
        raise ValueError("no image member (.jpg/.png/...)")
    with Image.open(io.BytesIO(members[ext])) as im:
        arr = np.asarray(im.convert("RGB"))  # (H, W, 3) uint8; convert() forces the full decode
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)


def _generator(seed: int, epoch: int, pos: int, view: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, pos, view, 0x696D67]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) | (int(state[1]) << 32))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def random_resized_crop(img: torch.Tensor, size: int, scale: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    _, h, w = img.shape
    area = h * w
    box = None
    for _ in range(10):
        target = area * _uniform(g, *scale)
        ratio = math.exp(_uniform(g, math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            box = (top, left, ch, cw)
            break
    if box is None:  # extreme aspect ratios: fall back to the central square
        side = min(h, w)
        box = ((h - side) // 2, (w - side) // 2, side, side)
    top, left, ch, cw = box
    crop = img[:, top: top + ch, left: left + cw].unsqueeze(0)  # (1, 3, ch, cw)
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def color_jitter(img: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation scaled by factors in [1 - s, 1 + s]."""
    b, c, s = (_uniform(g, 1 - strength, 1 + strength) for _ in range(3))
    img = img * b
    gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)  # (1, H, W)
    img = (img - gray.mean()) * c + gray.mean()
    gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)
    img = (img - gray) * s + gray
    return img.clamp_(0.0, 1.0)


def augment(img: torch.Tensor, cfg: DataConfig, g: torch.Generator, *, jitter: bool) -> torch.Tensor:
    out = random_resized_crop(img, cfg.image_size, cfg.crop_scale, g)
    if float(torch.rand((), generator=g)) < cfg.flip_prob:
        out = out.flip(-1)
    if jitter and cfg.color_jitter > 0:
        out = color_jitter(out, cfg.color_jitter, g)
    if cfg.image_channels == 1:  # grayscale models (e.g. digits): luminance, after the RGB jitter
        return ((out * LUMA).sum(0, keepdim=True) - GRAY_MEAN) / GRAY_STD  # (1, H, W)
    return (out - MEAN) / STD


class ImageBuilder:
    """needs.image_views augmented views per image: one (`pixel_values`, lightly augmented,
    with its tokenised caption for kind image_text), or several (`view1`, `view2`, ...,
    colour-jittered: contrastive pairs)."""

    def __init__(self, cfg: DataConfig, needs: DataNeeds, tok=None):
        self.cfg, self.needs, self.tok = cfg, needs, tok
        self.captions = needs.kind == "image_text"

    def build(self, records, *, epoch: int, first_pos: int, bad: BadSamples) -> tuple[dict, dict, list[int]]:
        cfg = self.cfg
        views: list[list[torch.Tensor]] = []
        captions: list[str] = []
        kept: list[int] = []
        for pos, shard, key, members in records:
            try:
                img = decode_image(members)
                caption = members["txt"].decode("utf-8") if self.captions else ""
            except KeyError:
                bad.skip(shard, key, "no .txt caption member")
                continue
            except Exception as exc:  # PIL raises many types for a broken image
                bad.skip(shard, key, f"undecodable ({exc.__class__.__name__}: {exc})")
                continue
            n_views = self.needs.image_views
            if n_views > 1:
                views.append([augment(img, cfg, _generator(cfg.seed, epoch, pos, v), jitter=True)
                              for v in range(1, n_views + 1)])
            else:
                views.append([augment(img, cfg, _generator(cfg.seed, epoch, pos, 0), jitter=False)])
                captions.append(caption)
            kept.append(pos)
        repeated = 0
        if not views:
            raise bad_batch(records)
        while len(views) < cfg.batch_size:  # refill skipped rows so every rank keeps batch_size
            views.append(views[repeated % len(kept)])
            if captions:
                captions.append(captions[repeated % len(kept)])
            repeated += 1
        stats = {"repeated": repeated}
        if self.needs.image_views > 1:
            return {f"view{i + 1}": torch.stack([v[i] for v in views])
                    for i in range(self.needs.image_views)}, stats, kept
        text = self.tokenize(captions) if self.captions else {}
        return {"pixel_values": torch.stack([v[0] for v in views]), **text}, stats, kept

    def tokenize(self, captions: list[str]) -> dict:
        tok, seq = self.tok, self.cfg.seq_len
        ids = torch.full((len(captions), seq), tok.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(captions), seq), dtype=torch.bool)
        for r, doc in enumerate(tok.encode_batch(captions)):
            row = [tok.bos_id, *doc[: seq - 2], tok.eos_id]
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.int64)
            mask[r, : len(row)] = True
        return {"input_ids": ids, "attention_mask": mask}


def bad_batch(records) -> ValueError:
    names = ", ".join(f"{shard}:{key}" for _, shard, key, _ in records[:3])
    return ValueError(f"every sample of a batch failed to decode ({names} ...); the shards look broken")
