"""Fuzzing the safetensors reader: any corruption of the header or the data
must end in ModelLoadError (or a clean load), never a crash or a bad read."""
import json
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinymech.errors import ModelLoadError
from tinymech.safetensors_mmap import SafetensorsFile


def valid_file(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "t.safetensors"
    save_file({"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, dtype=np.float16)}, path)
    return path


def read_all(path):
    try:
        sf = SafetensorsFile(path)
        for name in sf.keys():
            t = sf.tensor(name)
            assert t.nbytes <= path.stat().st_size
            t.sum()
    except ModelLoadError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["dtype", "shape", "data_offsets"]), value=json_values,
       name=st.sampled_from(["a", "b"]))
def test_corrupted_header_fields(tmp_path, field, name, value):
    path = valid_file(tmp_path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header[name][field] = value
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    read_all(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_damage(tmp_path, data):
    path = valid_file(tmp_path)
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    path.write_bytes(bytes(raw[:cut]))
    read_all(path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=64))
def test_arbitrary_bytes(tmp_path, blob):
    path = tmp_path / "x.safetensors"
    path.write_bytes(blob)
    read_all(path)
