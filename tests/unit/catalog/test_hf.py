import json
import struct
from pathlib import Path

import pytest

from modelyard.catalog.hf import parameter_count


def test_hf_parameter_count_reads_safetensors_headers(tmp_path: Path) -> None:
    header = json.dumps(
        {"__metadata__": {}, "a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}
    ).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    assert parameter_count(tmp_path) == 12


def test_hf_parameter_count_refuses_what_is_not_safetensors(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 5000)
    with pytest.raises(ValueError, match="is not a safetensors file"):
        parameter_count(tmp_path)
