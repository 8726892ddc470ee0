"""Run every benchmark (benchmarks/bench_*.py) in turn; each prints its own ratios."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    failed = 0
    for script in sorted(Path(__file__).parent.glob("bench_*.py")):
        # The machine is shared: every figure should be read with the load it ran under.
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"\n=== {script.stem} (load average {load}) ===", flush=True)
        failed += subprocess.run([sys.executable, str(script)], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
