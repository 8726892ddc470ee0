"""Teaching sets: saved cohorts a steward has opened to students.

A cohort becomes a teaching set when a steward marks it (``lake teaching add NAME``),
which is accepted only when every member was de-identified with a teaching profile
(``teaching`` or a profile extending it, :func:`lake.export.teaching_profiles`). The mark is a
row of the ``teaching_sets`` table; unmarking sets its ``unmarked_at``. The profile
condition is checked again whenever a student's scope is resolved, so a cohort later
redefined with other data stops being visible to students.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from deltalake.exceptions import CommitFailedError

from lake._errors import AccessError
from lake.catalog import TEACHING_SETS, arrow_dataset

if TYPE_CHECKING:
    from lake._lake import Lake
    from lake.export import Cohort

__all__ = ["is_teaching_material", "mark_teaching_set", "teaching_sets", "unmark_teaching_set"]

_RETRIES = 20


def is_teaching_material(cohort: Cohort) -> bool:
    """Whether every member of ``cohort`` was de-identified with a teaching profile."""
    from lake.export import teaching_profiles

    return bool(cohort.profiles) and set(cohort.profiles) <= teaching_profiles()


def teaching_sets(lake: Lake) -> list[str]:
    """Names of the cohorts that are teaching sets now, sorted."""
    if not lake.tables.exists(TEACHING_SETS.name):
        return []
    table = arrow_dataset(lake.tables.open(TEACHING_SETS.name)).to_table(
        columns=["cohort", "unmarked_at"]
    )
    active = table.filter(pc.is_null(table.column("unmarked_at")))
    return sorted(set(active.column("cohort").to_pylist()))


def mark_teaching_set(lake: Lake, name: str) -> None:
    """Make saved cohort ``name`` a teaching set (idempotent).

    Raises
    ------
    AccessError
        If a member was de-identified with a profile weaker than ``teaching``.
    ExportError
        If there is no such cohort.
    """
    from lake.export import load_cohort

    cohort = load_cohort(lake, name)
    if not is_teaching_material(cohort):
        raise AccessError(
            f"cohort {name!r} holds instances de-identified with profile(s) "
            f"{', '.join(cohort.profiles) or 'unknown'}; only data de-identified with the "
            "'teaching' profile (or one extending it) can be a teaching set"
        )
    if name in teaching_sets(lake):
        return
    lake.tables.create(TEACHING_SETS)
    row = {"cohort": name, "catalog_version": cohort.catalog_version,
           "marked_at": dt.datetime.now(dt.UTC), "unmarked_at": None}
    lake.tables.append(TEACHING_SETS, [row])


def unmark_teaching_set(lake: Lake, name: str) -> None:
    """Stop ``name`` being a teaching set; student tokens lose sight of it at once.

    Raises
    ------
    AccessError
        If it is not a teaching set.
    """
    if name not in teaching_sets(lake):
        raise AccessError(f"{name!r} is not a teaching set (lake.access.teaching_sets() "
                          "lists them)", functions=("lake.access.teaching_sets",))
    literal = name.replace("'", "''")
    for attempt in range(_RETRIES):
        try:
            lake.tables.open(TEACHING_SETS.name).update(
                predicate=f"cohort = '{literal}' AND unmarked_at IS NULL",
                new_values={"unmarked_at": pa.scalar(dt.datetime.now(dt.UTC)).as_py()},
            )
            return
        except CommitFailedError:
            time.sleep(0.05 * (attempt + 1))
    raise AccessError(f"could not unmark {name!r} (concurrent writers); retry")
