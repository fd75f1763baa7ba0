"""Loading reads only safetensors + JSON and fails loudly on anything off."""
import json

import pytest
import torch
from export_fixtures import tiny_decoder, tiny_encoder

from ptft_engine.export import ExportError, export_model, load_pretrained


def test_pickle_only_checkpoint_is_refused(tmp_path):
    torch.save(tiny_encoder().state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ExportError, match=r"refusing to load pickle file\(s\) pytorch_model.bin"):
        load_pretrained(tmp_path)


def test_pickle_beside_safetensors_is_never_read(tmp_path, caplog):
    export_model(tiny_encoder(), tmp_path)
    (tmp_path / "evil.pt").write_bytes(b"not even a pickle")  # would fail loudly if unpickled
    with caplog.at_level("WARNING"):
        load_pretrained(tmp_path)
    assert any("ignoring pickle file(s) evil.pt" in r.getMessage() for r in caplog.records)


def test_corrupted_weights_fail_the_checksum(tmp_path):
    export_model(tiny_encoder(), tmp_path)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside a tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="model.safetensors: sha256 mismatch"):
        load_pretrained(tmp_path)


def test_missing_shard_is_named(tmp_path):
    export_model(tiny_decoder(), tmp_path, max_shard_size="16KB")
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink(missing_ok=True)
    with pytest.raises(ExportError, match=f"{victim.name}: listed in the manifest but missing"):
        load_pretrained(tmp_path)


def test_config_that_does_not_fit_names_the_tensor(tmp_path):
    export_model(tiny_encoder(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match=r"tensor 'bert.encoder.layer.0.intermediate.dense.(weight|bias)' has shape"):
        load_pretrained(tmp_path, verify_checksums=False)
    # with checksums on, the edited config is caught first
    with pytest.raises(ExportError, match=r"config.json: (sha256 mismatch|size \d+ != \d+)"):
        load_pretrained(tmp_path)


def test_truncated_file_without_manifest_is_a_clear_error(tmp_path):
    export_model(tiny_encoder(), tmp_path)
    (tmp_path / "manifest.json").unlink()
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ExportError, match="model.safetensors: not a readable safetensors file"):
        load_pretrained(tmp_path)


def test_non_empty_output_needs_overwrite(tmp_path):
    export_model(tiny_encoder(), tmp_path)
    with pytest.raises(ExportError, match="not empty"):
        export_model(tiny_encoder(), tmp_path)
