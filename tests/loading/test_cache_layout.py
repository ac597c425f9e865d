"""What a zoo model's folder holds after a fetch and loads: its config and tokenizer, the
weights in the run-time form each load used (`packed/`), and the fp32 copy only once
``--weights float32`` asked for it. Every form loads the same weights as the GGUF itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType
from rich.filesize import decimal
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import write_zoo_folder

from spinserve.config.engine import WEIGHT_FORMS, RuntimeConfig
from spinserve.loading import zoo
from spinserve.loading.loader import load
from spinserve.loading.packed import PACKED_DIR, packed_path
from spinserve.models.decoder import Decoder
from spinserve.models.embedding import QuantizedEmbedding
from spinserve.ops.blocks import kernels_available
from spinserve.types.errors import ModelLoadError

NAME = "smollm2-135m-instruct"


def weights_of(model: Decoder) -> dict[str, torch.Tensor]:
    """Every tensor the model computes with: parameters and the parts of quantized weights
    (an embedding's blocks included)."""
    found = {name: p for name, p in model.named_parameters(remove_duplicate=False)}
    for name, module in model.named_modules():
        quantized = getattr(module, "quantized", getattr(module, "table", None))
        for part, value in (vars(quantized) if quantized is not None else {}).items():
            if isinstance(value, torch.Tensor):
                found[f"{name}.{part}"] = value
    return found


def assert_same_weights(got: Decoder, expected: Decoder) -> None:
    a, b = weights_of(got), weights_of(expected)
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert tensor.dtype == b[name].dtype and torch.equal(tensor, b[name]), name


def as_fetched(folder: Path) -> Path:
    """``folder`` (an older layout, with the fp32 copy) as a fetch leaves it now."""
    for path in zoo.fp32_files(folder):
        path.unlink()
    return folder


def test_every_form_loads_and_only_float32_makes_the_fp32_copy(tmp_path):
    """The same weights in every form as from the older layout, which came with the fp32
    copy (its ``float32`` form reads that copy, written apart from the loader)."""
    older = write_zoo_folder("qwen2", tmp_path / "older", GGMLQuantizationType.Q4_K)
    folder = as_fetched(write_zoo_folder("qwen2", tmp_path / "new", GGMLQuantizationType.Q4_K))
    asked_for_fp32 = False
    for form in (*WEIGHT_FORMS, "auto", "float32"):  # the last two read back what was saved
        runtime = RuntimeConfig(weights=form)
        assert_same_weights(load(str(folder), runtime).model, load(str(older), runtime).model)
        asked_for_fp32 |= form == "float32"
        assert zoo.has_fp32_copy(folder) == asked_for_fp32, form
    assert all(p.name.startswith("weights-") for p in (folder / PACKED_DIR).iterdir())


def test_a_file_packed_before_every_tensor_was_kept_is_replaced(tmp_path):
    """Before packing version 5 the packed file held the linear weights only, named
    ``linears-*``: loading packs again and deletes it."""
    folder = write_zoo_folder("llama", tmp_path, GGMLQuantizationType.Q4_1)
    legacy = folder / PACKED_DIR / packed_path(folder, "gguf").name.replace("weights-", "linears-")
    legacy.parent.mkdir()
    legacy.write_bytes(b"linear weights of an older spinserve")
    load(str(folder))
    assert not legacy.exists() and packed_path(folder, "gguf").is_file()


def test_the_embedding_is_packed_in_its_blocks_once_with_a_tied_head(tmp_path):
    """No fp32 table in the packed file: gemma3's tied lm_head and its embedding are one
    entry of blocks (one copy on disk and in memory), read back as one weight."""
    folder = as_fetched(write_zoo_folder("gemma3", tmp_path, GGMLQuantizationType.Q8_0))
    packed = load(str(folder)).model
    again = load(str(folder)).model  # from the packed file
    assert_same_weights(again, packed)
    embedding = again.model.embed_tokens
    assert isinstance(embedding, QuantizedEmbedding)
    assert (embedding.table is again.lm_head.quantized) == kernels_available()
    (path,) = (folder / PACKED_DIR).iterdir()
    with safe_open(path, framework="pt") as f:
        tables = [k for k in f.keys() if k.startswith(("model.embed_tokens.", "lm_head."))]  # noqa: SIM118
        assert len(tables) == 1 and tables[0].endswith("_blocks")
        assert f.get_slice(tables[0]).get_dtype() == "U8"


def test_a_packed_file_naming_a_shared_weight_it_lacks_is_a_clear_error(tmp_path):
    folder = as_fetched(write_zoo_folder("gemma3", tmp_path, GGMLQuantizationType.Q8_0))
    load(str(folder))
    (path,) = (folder / PACKED_DIR).iterdir()
    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        metadata = f.metadata()
    save_file(tensors, path, metadata={**metadata, "spinserve_shared": "lm_head.weight=gone"})
    with pytest.raises(ModelLoadError, match=r"cannot read .*'gone'.*delete it"):
        load(str(folder))


def test_a_folder_without_weights_or_gguf_is_a_clear_error(tmp_path):
    folder = as_fetched(write_zoo_folder("llama", tmp_path, GGMLQuantizationType.Q4_1))
    (tmp_path / "gguf" / "m.gguf").unlink()
    with pytest.raises(ModelLoadError, match=r"its GGUF .*m\.gguf is not in the cache"):
        load(str(folder))


# --- the real SmolLM2: a fresh fetch into a temporary cache -----------------------------------


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    """The verified GGUF, fetched into the shared cache once (as the integration tests do)."""
    shared = zoo.resolve_cache_dir()
    zoo.fetch(NAME, shared)
    return zoo.gguf_path(NAME, shared)


def models_list(cache: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "spinserve.cli.main", "models", "list", "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    return next(line for line in proc.stdout.splitlines() if NAME in line)


@pytest.mark.real_model
def test_fetch_and_default_load_keep_the_gguf_and_the_run_time_form(tmp_path, smollm2_gguf):
    cache = tmp_path / "cache"
    (cache / "gguf").mkdir(parents=True)
    shutil.copy(smollm2_gguf, cache / "gguf")  # verified again by the fetch, not downloaded
    folder = zoo.fetch(NAME, cache)
    assert not list(folder.rglob("*.safetensors"))
    auto = load(NAME, cache_dir=cache, fetch_missing=False).model

    (packed,) = (folder / PACKED_DIR).iterdir()
    # the GGUF's blocks interleaved, the embedding's shared with the tied head: no fp32 table
    assert packed.stat().st_size < 1.1 * smollm2_gguf.stat().st_size
    assert {p.suffix for p in folder.iterdir() if p.is_file()} <= {".json", ".jinja"}
    small = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert small < 10_000_000  # config and tokenizer
    (status,) = [s for s in zoo.list_models(cache) if s.name == NAME]
    assert status.fp32_bytes == 0
    assert status.size_bytes == smollm2_gguf.stat().st_size + packed.stat().st_size + small
    row = models_list(cache)
    assert row.split()[1:4] == ["fetched", *decimal(status.size_bytes).split()]

    fp32 = load(NAME, RuntimeConfig(weights="float32"), cache, fetch_missing=False).model
    assert zoo.has_fp32_copy(folder)
    (with_copy,) = [s for s in zoo.list_models(cache) if s.name == NAME]
    assert with_copy.fp32_bytes > 4 * smollm2_gguf.stat().st_size
    assert decimal(with_copy.fp32_bytes) in models_list(cache)
    reference = load(str(smollm2_gguf), RuntimeConfig(weights="float32")).model
    assert_same_weights(fp32, reference)

    # The layout an older spinserve left (format 2: the fp32 copy, no packed file yet) loads
    # the same weights, and is not converted again.
    shutil.rmtree(folder / PACKED_DIR)
    marker = folder / zoo.MARKER_FILE
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "format": 2}))
    assert zoo.fetch(NAME, cache) == folder and zoo.has_fp32_copy(folder)
    assert_same_weights(load(NAME, cache_dir=cache, fetch_missing=False).model, auto)
