"""`ptft shard`: shard contents, index (counts, sha256, offsets), bad inputs, formats."""
from __future__ import annotations

import json
import os

import pytest
import webdataset as wds
from data_helpers import doc_text, png_bytes

from ptft_engine import cli
from ptft_engine.data.index import load_index, read_members, scan_tar, sha256_file


def _index(out) -> dict:
    with open(os.path.join(out, "index.json")) as f:
        return json.load(f)


def test_text_dir_shards_index_and_bad_inputs(tmp_path, capsys):
    src = tmp_path / "corpus"
    (src / "sub").mkdir(parents=True)
    for i in range(25):
        (src / "sub" / f"{i:02d}.txt").write_text(doc_text(i))
    (src / "empty.txt").write_text("  \n")
    (src / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    out = tmp_path / "out"
    rc = cli.main(["shard", str(src), "--output", str(out), "--shard-size", "2KB", "--workers", "2", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "wrote 25 samples" in text and "skipped 2 bad inputs" in text
    assert "empty.txt: empty text" in text and "latin1.txt: not UTF-8" in text
    doc = _index(out)
    assert doc["total_samples"] == 25 and len(doc["shards"]) > 1
    index = load_index(str(out / "index.json"))
    seen = []
    for shard in index.shards:
        assert shard.sha256 == sha256_file(shard.path)
        table = shard.offset_table()  # from the shard's .idx sidecar
        assert shard.offsets_path.endswith(".idx") and len(table) == shard.samples + 1
        assert table.tolist() == scan_tar(shard.path).offsets  # recorded while writing = read back
        with open(shard.path, "rb") as fh:  # random access through the offsets, back to front
            seen += [read_members(fh, table, i)["txt"].decode() for i in reversed(range(shard.samples))]
    assert sorted(seen) == sorted(doc_text(i) for i in range(25))
    # the shards are plain webdataset: its reader sees the same samples
    urls = [s.path for s in index.shards]
    wds_texts = [s["txt"].decode() for s in wds.WebDataset(urls, shardshuffle=False)]
    assert sorted(wds_texts) == sorted(seen)


def test_strict_stops_at_bad_input_naming_it(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("fine text")
    (tmp_path / "b.txt").write_text("")
    rc = cli.main(["shard", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--output", str(tmp_path / "o"),
                   "--strict", "--workers", "1", "--no-progress"])
    assert rc == 1
    assert "b.txt: empty text (--strict)" in capsys.readouterr().err


def test_missing_input_and_existing_output_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["shard", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "a.txt").write_text("x y z")
    args = ["shard", str(tmp_path / "a.txt"), "--output", str(tmp_path / "o"), "--workers", "1", "--no-progress"]
    assert cli.main(args) == 0
    assert cli.main(args) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_jsonl_lines_split_over_chunks(tmp_path, monkeypatch, capsys):
    from ptft_engine.data import sources

    monkeypatch.setattr(sources, "CHUNK_BYTES", 200)  # many byte-range work items per file
    src = tmp_path / "d.jsonl"
    lines = [json.dumps({"content": doc_text(i)}) for i in range(40)] + ["{broken", json.dumps({"other": 1})]
    src.write_text("\n".join(lines) + "\n")
    rc = cli.main(["shard", str(src), "--format", "jsonl", "--text-field", "content", "--output", str(tmp_path / "o"),
                   "--workers", "2", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "wrote 40 samples" in out and "skipped 2 bad inputs" in out and "'content'" in out
    index = load_index(str(tmp_path / "o" / "index.json"))
    texts = []
    for shard in index.shards:
        with open(shard.path, "rb") as fh:
            texts += [read_members(fh, shard.offset_table(), i)["txt"].decode() for i in range(shard.samples)]
    assert texts == [doc_text(i) for i in range(40)]  # every line exactly once, in input order


def test_image_folder_and_image_text(tmp_path, image_folder, capsys):
    out = tmp_path / "img"
    assert cli.main(["shard", image_folder, "--format", "images", "--output", str(out), "--workers", "1",
                     "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "wrote 12 samples" in text and "broken.png: undecodable image" in text
    doc = _index(out)
    assert doc["kind"] == "image" and doc["classes"] == ["cat", "dog"]
    samples = list(wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False))
    assert sorted(int(s["cls"]) for s in samples) == [0] * 6 + [1] * 6 and all("png" in s for s in samples)

    (tmp_path / "pics").mkdir()
    recs = []
    for i in range(5):
        (tmp_path / "pics" / f"{i}.png").write_bytes(png_bytes(i))
        recs.append({"image": f"pics/{i}.png", "caption": f"picture number {i}"})
    recs.append({"image": "pics/missing.png", "caption": "gone"})
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    assert cli.main(["shard", str(tmp_path / "pairs.jsonl"), "--format", "image_text", "--output",
                     str(tmp_path / "it"), "--workers", "1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "wrote 5 samples" in text and "missing.png" in text
    samples = list(wds.WebDataset(str(tmp_path / "it" / "shard-000000.tar"), shardshuffle=False))
    assert [s["txt"].decode() for s in samples] == [f"picture number {i}" for i in range(5)]


@pytest.mark.parametrize("size,expected", [("256MB", 256_000_000), ("1GiB", 1 << 30), ("512", 512)])
def test_parse_size(size, expected):
    from ptft_engine.commands.shard import parse_size

    assert parse_size(size) == expected


@pytest.mark.parametrize("unit,expected", [("line", ["a b", "c d", "e f"]), ("paragraph", ["a b\nc d", "e f"])])
def test_text_units(tmp_path, unit, expected):
    (tmp_path / "t.txt").write_text("a b\nc d\n\ne f\n")
    assert cli.main(["shard", str(tmp_path / "t.txt"), "--text-unit", unit, "--output", str(tmp_path / "o"),
                     "--workers", "1", "--no-progress"]) == 0
    shard = load_index(str(tmp_path / "o" / "index.json")).shards[0]
    with open(shard.path, "rb") as fh:
        got = [read_members(fh, shard.offset_table(), i)["txt"].decode() for i in range(shard.samples)]
    assert got == expected


def test_fast_member_reader_matches_tarfile(tmp_path):
    """read_members parses plain headers itself (pax ones as webdataset writes too); GNU long
    names fall back to tarfile; damage is a ValueError."""
    import io
    import tarfile

    import pytest
    import webdataset as wds

    from ptft_engine.data.index import read_members, scan_tar
    from ptft_engine.data.tarblocks import plain_members

    path = str(tmp_path / "mixed.tar")
    long_key = "d" * 120  # beyond the 100-byte name field: in a pax header
    with wds.TarWriter(path, encoder=False) as w:
        w.write({"__key__": "a0", "txt": b"first", "ids": bytes(range(10))})
        w.write({"__key__": long_key, "txt": b"second" * 100})
        w.write({"__key__": "dir/c2", "txt": b""})
    info = scan_tar(path)
    table = info.offsets
    with open(path, "rb") as fh:
        got = [read_members(fh, table, i) for i in range(3)]
        with tarfile.open(path) as tar:
            want = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        fh.seek(table[1])
        assert plain_members(fh.read(table[2] - table[1]))[0][0] == f"{long_key}.txt"
    assert got[0] == {"__key__": "a0", "txt": want["a0.txt"], "ids": want["a0.ids"]}
    assert got[1] == {"__key__": long_key, "txt": want[f"{long_key}.txt"]}
    assert got[2] == {"__key__": "dir/c2", "txt": b""}
    gnu = str(tmp_path / "gnu.tar")
    with tarfile.open(gnu, "w", format=tarfile.GNU_FORMAT) as tar:
        member = tarfile.TarInfo(f"{long_key}.txt")
        member.size = 3
        tar.addfile(member, io.BytesIO(b"abc"))
    with open(gnu, "rb") as fh:
        assert plain_members(fh.read()) is None  # a GNU long-name header: tarfile's job
        assert read_members(fh, scan_tar(gnu).offsets, 0) == {"__key__": long_key, "txt": b"abc"}
    with open(path, "rb") as fh:
        first = fh.read(table[1])
    with pytest.raises(ValueError, match="truncated"):
        plain_members(first[: 512 + 2])  # a header whose data is cut short
    damaged = bytearray(first)
    damaged[5] ^= 0xFF  # a flipped byte in the first header
    with pytest.raises(ValueError, match="checksum"):
        read_members(io.BytesIO(bytes(damaged)), table, 0)
