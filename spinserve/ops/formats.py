"""The block formats our matmul kernels multiply: ids and block sizes, read from the one table
the C++ compiles (``csrc/formats.h``), so Python and C++ cannot disagree on a number.

GGUF's own formats carry ggml's type numbers (Q4_0 = 2 ... Q6_K = 14); ours, the same blocks
with 8 weight rows interleaved (`spinserve.ops.interleave`), 1000 + the GGUF number. The
compiled library returns its copy of the table (the ``formats`` op), and a test holds this one
to it.

>>> FORMATS[12]
BlockFormat(name='Q4_K', id=12, base=12, weights=256, bytes=144, rows=1)
>>> FORMATS[1012].bytes  # per block and weight row: Q4_K's 6-bit scales as whole bytes
148
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

HEADER = Path(__file__).parent / "csrc" / "formats.h"
# one row of SPINSERVE_FORMATS: X(name, id, base, weights, bytes, rows)
_ROW = re.compile(r"^\s*X\((\w+),\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\)")


@dataclass(frozen=True)
class BlockFormat:
    name: str
    id: int  # ggml's type number, or ours (1000 + base) for an interleaved layout
    base: int  # the GGUF type whose blocks it holds (its own id for a GGUF type)
    weights: int  # per block
    bytes: int  # per block and weight row
    rows: int  # weight rows per chunk: 1 for GGUF's row layout, 8 interleaved


def read_formats(header: Path = HEADER) -> dict[int, BlockFormat]:
    """The rows of ``header``'s SPINSERVE_FORMATS table, by id."""
    rows = [_ROW.match(line) for line in header.read_text().splitlines()]
    formats = {}
    for m in filter(None, rows):
        name, *numbers = m.groups()
        fmt = BlockFormat(name, *(int(n) for n in numbers))
        formats[fmt.id] = fmt
    if not formats:
        raise RuntimeError(f"no block formats found in {header}")
    return formats


FORMATS = MappingProxyType(read_formats())
ID = MappingProxyType({fmt.name: fmt.id for fmt in FORMATS.values()})
