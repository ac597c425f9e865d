"""Damaged GGUF headers: every case either loads or is refused with `ModelLoadError`, quickly
and without a large allocation.

The cases: truncations at many offsets, header counts, array and string lengths made huge or
off by one, every integer metadata value set to edge values, tensor infos with bad dimension
counts, dimensions, types and offsets, and seeded random byte flips (most in the header, where
damage changes what is read rather than only the weights' values).
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf_surgery import field_offsets, patch, read_model, tiny_gguf, with_counts

from spinserve.types.errors import ModelLoadError

_EDGE_U32 = (0, 1, 3, 2**31 - 1, 2**32 - 1)
_EDGE_U64 = (0, 1, 2**31, 2**63, 2**64 - 1)
_SECONDS_PER_CASE = 2.0
_PEAK_RSS_GROWTH_MB = 300


def _cases(good: Path) -> Iterator[tuple[str, bytes]]:
    data = good.read_bytes()
    offsets = field_offsets(good)
    header_end = offsets["#data"]
    for cut in sorted({*range(0, 64, 3), *range(64, header_end, max(1, header_end // 60))}):
        yield f"truncated at {cut}", data[:cut]
    for cut in (header_end, len(data) - 1, len(data) - 4096):
        yield f"truncated at {cut}", data[:cut]
    for value in (*_EDGE_U64, 10**6):
        yield f"tensor_count={value}", with_counts(data, tensors=value)
        yield f"kv_count={value}", with_counts(data, kvs=value)
    yield "tensor_count-1", with_counts(data, tensors=len(_tensor_names(good)) - 1)
    yield from _metadata_cases(good, data, offsets)
    yield from _tensor_info_cases(good, data, offsets)
    rng = random.Random(0)
    for i in range(120):
        raw = bytearray(data)
        end = header_end if i < 100 else len(data)
        for _ in range(rng.randint(1, 6)):
            raw[rng.randrange(end)] = rng.randrange(256)
        yield f"byte flips #{i}", bytes(raw)


def _metadata_cases(
    good: Path, data: bytes, offsets: dict[str, int]
) -> Iterator[tuple[str, bytes]]:
    reader = GGUFReader(good)
    fields = {name: f.types for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    del reader
    for name, types in fields.items():
        at = offsets[name]
        for value in (2**63, len(name) + 1, len(name) - 1):
            yield f"{name}: key length {value}", patch(data, at, "Q", value)
        value_at = offsets[f"{name}#value"]
        yield f"{name}: value type 99", patch(data, value_at - 4, "I", 99)
        if types[0] == GGUFValueType.UINT32:
            for value in _EDGE_U32:
                yield f"{name}={value}", patch(data, value_at, "I", value)
        elif types[0] in (GGUFValueType.STRING,):
            for value in (2**62, 0):
                yield f"{name}: string length {value}", patch(data, value_at, "Q", value)
        elif types[0] == GGUFValueType.ARRAY:
            for value in (*_EDGE_U64, 2**30):
                yield f"{name}: array length {value}", patch(data, value_at + 4, "Q", value)
            for item in (GGUFValueType.ARRAY, GGUFValueType.UINT8, GGUFValueType.STRING, 13):
                yield f"{name}: array of type {item}", patch(data, value_at, "I", item)


def _tensor_info_cases(
    good: Path, data: bytes, offsets: dict[str, int]
) -> Iterator[tuple[str, bytes]]:
    for name in _tensor_names(good)[:6]:
        at = offsets[f"{name}#info"]
        dims_at = at + 8 + len(name) + 4
        for value in (0, 5, 2**32 - 1):
            yield f"{name}: {value} dimensions", patch(data, dims_at - 4, "I", value)
        for value in _EDGE_U64:
            yield f"{name}: first dimension {value}", patch(data, dims_at, "Q", value)
        num_dims = int.from_bytes(data[dims_at - 4 : dims_at], "little")
        type_at = dims_at + 8 * num_dims
        for kind in (99, int(GGMLQuantizationType.Q4_K), int(GGMLQuantizationType.F16)):
            yield f"{name}: type {kind}", patch(data, type_at, "I", kind)
        for value in (1, 2**40, 2**64 - 1):
            yield f"{name}: data offset {value}", patch(data, type_at + 4, "Q", value)


def _tensor_names(path: Path) -> list[str]:
    return [t.name for t in GGUFReader(path).tensors]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_damaged_headers_load_or_are_refused_cleanly(tmp_path, arch):
    quant = GGMLQuantizationType.F32 if arch == "qwen2" else GGMLQuantizationType.Q8_0
    good = tiny_gguf(tmp_path, arch, quant)
    read_model(good)  # the undamaged file loads
    path = tmp_path / "case.gguf"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {"loaded": 0, "refused": 0}
    for case, data in _cases(good):
        path.write_bytes(data)
        start = time.perf_counter()
        try:
            read_model(path)
            outcomes["loaded"] += 1
        except ModelLoadError as exc:
            assert "\n" not in str(exc), case
            outcomes["refused"] += 1
        except Exception as exc:
            pytest.fail(f"{case}: {type(exc).__name__}: {exc}")
        assert time.perf_counter() - start < _SECONDS_PER_CASE, case
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert growth_mb < _PEAK_RSS_GROWTH_MB
    assert outcomes["refused"] > 200 and outcomes["loaded"] > 5, outcomes
