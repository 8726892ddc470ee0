"""Run every benchmark (benchmarks/bench_*.py) in turn; each prints its own ratios."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    failed: list[str] = []
    started = time.perf_counter()
    for script in sorted(Path(__file__).parent.glob("bench_*.py")):
        # The machine is shared: every figure should be read with the load it ran under.
        print(f"\n=== {script.stem} (load average {_load()}) ===", flush=True)
        begun = time.perf_counter()
        code = subprocess.run([sys.executable, str(script)], check=False).returncode
        print(f"=== {script.stem}: {'ok' if code == 0 else f'FAILED ({code})'} in "
              f"{time.perf_counter() - begun:.0f} s (load average {_load()}) ===", flush=True)
        if code != 0:
            failed.append(script.stem)
    print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s; "
          f"{'failed: ' + ', '.join(failed) if failed else 'all ran'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
