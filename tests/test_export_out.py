"""An export's output folder may not be inside the lake's folder (review follow-up): files
there are no part of the catalog, so 'lake forget' and 'lake gc' would not know them. The
library refuses with an error naming ``out``; the command line says ``--out``, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import lake
from lake import ConfigError
from lake.store._fs import PortalJobOut
from tests.series import write_ct_series

LAKE = str(Path(sys.executable).with_name("lake"))
CT = "SELECT SeriesInstanceUID FROM series"


@pytest.fixture
def filled(lk: lake.Lake, vault_dir: Path, tmp_path: Path) -> lake.Lake:
    write_ct_series(tmp_path / "in", 2, patient_id="OUT-1")
    lk.ingest([str(tmp_path / "in")], vault=vault_dir, scheduler="sync")
    lk.refresh()
    lk.create_cohort("ct", CT)
    return lk


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_the_library_refuses_an_output_folder_inside_the_lake(
    filled: lake.Lake, lake_root: Path, tmp_path: Path
) -> None:
    before = _files(lake_root)
    link = tmp_path / "link"
    link.symlink_to(lake_root / "tables", target_is_directory=True)
    for out in (lake_root, lake_root / "exports", link / "x", lake_root / "portal"):
        with pytest.raises(ConfigError, match="out= is inside the lake's folder") as caught:
            filled.export_dicom("ct", out, scheduler="sync")
        assert caught.value.parameters == ("out",)
    assert _files(lake_root) == before  # nothing written
    with pytest.raises(ConfigError, match="out= is inside"):
        filled.export_nifti(CT, lake_root / "nifti", scheduler="sync")
    # Outside the lake is fine.
    assert filled.export_dicom("ct", tmp_path / "outside", scheduler="sync") is not None


def test_only_the_portal_may_export_into_its_job_folders(
    filled: lake.Lake, lake_root: Path
) -> None:
    """Review s19 S4: 'lake forget' reaches only <lake>/portal/jobs/run-*/<job>, and only the
    portal (which writes the job's member list) may export there."""
    jobs = lake_root / "portal" / "jobs"
    for out in (jobs, jobs / "mine", jobs / "run-0", jobs / "run-0" / "job",
                jobs / "run-0" / "job" / "export"):
        with pytest.raises(ConfigError, match="out= is inside the lake's folder"):
            filled.export_dicom("ct", out, scheduler="sync")
    assert not jobs.exists()
    # A path shaped like no job folder is refused even when marked as the portal's.
    for out in (jobs / "mine", jobs / "run-0", lake_root / "tables" / "x"):
        with pytest.raises(ConfigError, match="out= is inside the lake's folder"):
            filled.export_dicom("ct", PortalJobOut(out), scheduler="sync")
    # The portal's own job folder (which forget reaches) is fine.
    done = filled.export_dicom("ct", PortalJobOut(jobs / "run-0" / "job" / "export"),
                               scheduler="sync")
    assert done is not None and (jobs / "run-0" / "job" / "export").is_dir()


def test_the_command_line_names_the_option(
    filled: lake.Lake, lake_root: Path, vault_dir: Path
) -> None:
    env = dict(os.environ, LAKE_ROOT=str(lake_root), LAKE_VAULT=str(vault_dir))
    proc = subprocess.run(
        [LAKE, "export", "dicom", "ct", "--out", str(lake_root / "exports"), "--scheduler",
         "sync"], env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--out is inside the lake's folder" in proc.stderr, proc.stderr
    assert "out=" not in proc.stderr
    assert not (lake_root / "exports").exists()


_REFUSE = """
import sys
from lake import ConfigError
from lake.store import resolve
for out in sys.argv[2:]:
    try:
        resolve(sys.argv[1]).refuse_inside(out)
        print("accepted")
    except ConfigError:
        print("refused")
"""


def test_another_name_for_the_lake_by_a_bind_mount_is_refused(
    lake_root: Path, lk: lake.Lake, tmp_path: Path
) -> None:
    """Review s19 N12: refuse_inside compared resolved paths only, and a bind mount is no
    symbolic link: another name for the lake's folder (or a folder in it) escaped it. Bind
    mounts made in a private mount namespace (``unshare -rm``); skipped where none can be."""
    whole, tables, elsewhere = (tmp_path / n for n in ("whole", "tables", "elsewhere"))
    outside = tmp_path / "outside"
    for folder in (whole, tables, elsewhere, outside):
        folder.mkdir()
    script = " && ".join([
        f"mount --bind {lake_root} {whole}",
        f"mount --bind {lake_root / 'tables'} {tables}",
        f"mount --bind {outside} {elsewhere}",
        f"{sys.executable} -c '{_REFUSE}' {lake_root} {whole} {whole / 'new' / 'x'} "
        f"{tables / 'x'} {elsewhere / 'x'} {outside / 'x'}",
    ])
    try:
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                              text=True, timeout=120)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if "mount" in proc.stderr or "unshare" in proc.stderr:
        pytest.skip(f"no private bind mounts here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["refused", "refused", "refused", "accepted", "accepted"]


def test_a_lake_folder_that_is_a_symbolic_link_is_inside_the_lake(
    lk: lake.Lake, lake_root: Path, tmp_path: Path
) -> None:
    """Review s20 S6: with ``blobs`` a link to another disk, ``out=<lake>/blobs/x`` resolved
    outside the lake's folder and the identity scan skipped links: accepted, and an export
    landed beside ``blobs/sha256`` where gc and verify walk."""
    location = lk.location
    disk = tmp_path / "disk"
    (disk / "blobs" / "sha256").mkdir(parents=True)
    (disk / "blobs" / "exportdir").mkdir()
    (lake_root / "blobs").symlink_to(disk / "blobs", target_is_directory=True)
    for out in (lake_root / "blobs" / "x", disk / "blobs", disk / "blobs" / "x",
                disk / "blobs" / "exportdir", disk / "blobs" / "exportdir" / "new" / "y"):
        with pytest.raises(ConfigError, match="out= is inside the lake's folder"):
            location.refuse_inside(out)
    for out in (disk / "x", tmp_path / "outside" / "x"):  # beside the link's target: fine
        location.refuse_inside(out)
    # The portal's job folders stay its own when ``portal`` is a link, and only its.
    (disk / "portal" / "jobs").mkdir(parents=True)
    (lake_root / "portal").symlink_to(disk / "portal", target_is_directory=True)
    job = lake_root / "portal" / "jobs" / "run-0" / "job" / "export"
    location.refuse_inside(PortalJobOut(job))
    for out in (job, disk / "portal" / "jobs" / "x"):
        with pytest.raises(ConfigError, match="out= is inside the lake's folder"):
            location.refuse_inside(out)
