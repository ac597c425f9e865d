"""Merge peers.sh's outputs into one results file for benchmarks/report.py: the bench serve
comparison, the command that reproduced it, the machine, and both HumanEval pass@1 figures.

usage: python benchmarks/peers_manifest.py OUT_DIR "COMMAND"
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def cpu() -> dict:
    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return {
        "cpu_model": info.get("model name", ""),
        "cpu_family": info.get("cpu family", ""),
        "cores": os.cpu_count(),
    }


def main(out: Path, command: str) -> None:
    serve = json.loads((out / "peers_serve.json").read_text())
    serve["command"] = command
    serve["machine"] = cpu()
    serve["humaneval"] = {}
    for name in ("spinserve", "llamacpp"):
        quality = json.loads((out / f"peers_humaneval_{name}.json").read_text())
        keep = ("num_passed", "num_problems", "pass_at_1")
        serve["humaneval"][name] = {k: quality[k] for k in keep}
    (out / "peers.json").write_text(json.dumps(serve, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
