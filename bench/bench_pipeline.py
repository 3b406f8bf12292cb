"""Wall time of the default local pipeline run (`python -m pipelines.local`, what scripts/run.sh runs): the issue's goal is <= 10 min on 2 CPU cores.

Usage: python bench/bench_pipeline.py [--out DIR]; prints the wall time, the machine's load and the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from pipelines.local import run_pipeline_local

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    load_before = os.getloadavg()
    started = time.perf_counter()
    summary = run_pipeline_local(out)
    wall = time.perf_counter() - started
    print(json.dumps({"wall_s": round(wall, 1), "cpus": os.cpu_count(), "load_before": load_before,
                      "load_after": os.getloadavg(), "runs": summary["runs"], "out": str(out)}, indent=2))


if __name__ == "__main__":
    main()
