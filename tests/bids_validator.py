"""Running the BIDS validator (npm ``bids-validator`` 1.15, on node) on an exported dataset.

The validator is found at ``$BIDS_VALIDATOR``, else where ``.ci/run`` installs it
(``.tools/bids-validator/node_modules/.bin/bids-validator`` in the repository), else on
``PATH``. Tests skip when it (or node) is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["ValidatorReport", "validate", "validator"]

_REPO = Path(__file__).resolve().parents[1]
_INSTALLED = _REPO / ".tools" / "bids-validator" / "node_modules" / ".bin" / "bids-validator"


def validator() -> str:
    """The validator's command, or skip the calling test."""
    for candidate in (os.environ.get("BIDS_VALIDATOR"), str(_INSTALLED),
                      shutil.which("bids-validator")):
        if candidate and Path(candidate).is_file() and shutil.which("node"):
            return candidate
    pytest.skip("the BIDS validator is not installed (.ci/run installs npm bids-validator)")


@dataclass(frozen=True)
class ValidatorReport:
    """Errors and warnings of one run: ``(key, [relative paths])`` each."""

    errors: list[tuple[str, list[str]]]
    warnings: list[tuple[str, list[str]]]

    def describe(self) -> str:
        lines = []
        for kind, issues in (("error", self.errors), ("warning", self.warnings)):
            for key, files in issues:
                shown = ", ".join(files[:3]) + (f" (+{len(files) - 3})" if len(files) > 3 else "")
                lines.append(f"  {kind} {key}: {shown}")
        return "\n".join(lines)


def validate(dataset: Path) -> ValidatorReport:
    """Run the validator on ``dataset`` and parse its JSON report."""
    command = [validator(), "--json", str(dataset)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"the BIDS validator did not report JSON: {run.stderr[-2000:]}"
        ) from None
    issues = report["issues"]

    def parse(kind: str) -> list[tuple[str, list[str]]]:
        return [
            (issue["key"], [(f.get("file") or {}).get("relativePath") or str(f.get("evidence"))
                            for f in issue["files"]])
            for issue in issues[kind]
        ]

    return ValidatorReport(parse("errors"), parse("warnings"))
