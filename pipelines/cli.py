"""The ``lake`` command: thin commands over the :mod:`lake` library."""

from __future__ import annotations

import atexit
import contextlib
import importlib.abc
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Annotated, Any

import typer

import lake
from pipelines import _core
from pipelines._common import EXIT_CODES_HELP, EXIT_INTERNAL, err, out, reported
from pipelines._params import LakeGroup
from pipelines.documents import attach_command, export_documents_command
from pipelines.export import cohort_app, export_app
from pipelines.net import pull_command, serve_app
from pipelines.portal import share_app, users_app
from pipelines.profiles import deid_command, profiles_app
from pipelines.steward import (
    compact_command,
    forget_command,
    gc_command,
    quarantine_app,
    vacuum_command,
)
from pipelines.web import serve_web, teaching_app, token_app, viewer_app

_SETTINGS: dict[str, Any] = {
    "rich_markup_mode": None,  # plain help: rich's renderer costs 0.2 s a run (issue 14.1)
    "name": "lake",
    "no_args_is_help": True,
    "pretty_exceptions_enable": False,
    "add_completion": False,
    "cls": LakeGroup,  # plain values converted without pydantic (issue 14.2)
}
app = typer.Typer(
    help="imaging-lake: DICOM in, de-identified on the way in, SQL over the catalog, cohorts out.\n\n"
    "Every command finds its lake from --lake or LAKE_ROOT, and key material from --vault or "
    "LAKE_VAULT (a folder outside the lake).\n\n" + EXIT_CODES_HELP,
    **_SETTINGS,
)

app.command()(_core.init)
app.command()(_core.ingest)
app.command()(_core.sql)
app.command()(_core.info)
app.command()(_core.verify)
app.add_typer(profiles_app, name="profiles")
app.command("deid")(deid_command)
app.add_typer(cohort_app, name="cohort")
app.add_typer(export_app, name="export")
export_app.command("documents")(export_documents_command)
app.command("attach")(attach_command)
app.add_typer(serve_app, name="serve")
serve_app.command("web")(serve_web)
app.add_typer(token_app, name="token")
app.add_typer(teaching_app, name="teaching")
app.add_typer(viewer_app, name="viewer")
app.add_typer(users_app, name="users")
app.add_typer(share_app, name="share")
app.command("pull")(pull_command)
app.command("forget")(forget_command)
app.add_typer(quarantine_app, name="quarantine")
app.command("compact")(compact_command)
app.command("gc")(gc_command)
app.command("vacuum")(vacuum_command)


@app.command()
def demo(
    lake_root: Annotated[
        str, typer.Option("--lake", envvar="LAKE_ROOT", help="Where to build the demo lake.")
    ] = ".demo/lake",
    vault: Annotated[
        str, typer.Option("--vault", envvar="LAKE_VAULT", help="Vault for the demo lake's key.")
    ] = ".demo/vault",
    scheduler: Annotated[
        str, typer.Option(help="Where to run: auto, sync, processes, threads or tcp://HOST:PORT.")
    ] = "auto",
) -> None:
    """Build a local lake from sample DICOM shipped with installed packages and run a cohort query.

    Runs offline. Some sample files are deliberately broken (truncated, DICOMDIR, not DICOM):
    they are quarantined, as in real life.
    """
    from lake._demo import DEMO_QUERY, sample_sources
    from lake.ingest import ingest

    with reported():
        lk = lake.init(lake_root, vault=vault)
        sources = sample_sources()
        out.print(f"ingesting sample DICOM from {len(sources)} installed packages into {lk.root}")
        summary = ingest(lk, sources, lk.secret(vault), scheduler=scheduler)
        lk.refresh()
        out.print(
            f"{summary.files_seen} files: {summary.ingested} ingested, {summary.duplicates} "
            f"duplicates, {summary.quarantined} quarantined ({summary.elapsed:.1f} s)"
        )
        out.print("\n[bold]cohort query[/]\n" + DEMO_QUERY + "\n", highlight=False)
        _core._emit(lk.sql(DEMO_QUERY), _core.Format.table, None)
        out.print(f'\nTry: lake sql --lake {lake_root} "SELECT * FROM series LIMIT 5"')
        from pipelines.portal import demo_portal

        demo_portal(lk, vault, lake_root, scheduler)


def _app_for(args: list[str]) -> typer.Typer:
    """``app`` reduced to the one command ``args`` run, when they name one (issue 14.1).

    Typer builds the Click command of every registered command before parsing the command
    line (reading each signature: 0.03 s of CPU for all of ``lake``'s); a run needs one.
    Anything else (``lake``, ``lake --help``, an unknown command) gets the full ``app``.
    """
    from typer.main import get_command_name

    name = args[0] if args else "-"
    commands = [c for c in app.registered_commands
                if c.callback is not None
                and (c.name or get_command_name(c.callback.__name__)) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    lean = typer.Typer(**_SETTINGS)
    lean.callback()(_no_options)  # a group, as app is, even with one command
    lean.registered_commands.extend(commands)
    lean.registered_groups.extend(groups)
    return lean


def _no_options() -> None:
    """The lake command itself takes no options."""


def _exit_now(ended: SystemExit) -> None:
    """End the process at once with ``ended``'s code, skipping the interpreter's teardown,
    when that is safe; otherwise return (the caller exits the ordinary way).

    At exit Python frees the objects of every loaded module one by one: ~0.15 s of CPU
    after a command that loaded the export stack (~900 modules), a sixth of a small
    `lake export nifti` (issue 14.2). Skipped only when the command ended with an integer
    code and no other thread runs (a server's threads are joined the ordinary way); the
    at-exit functions (logging's flush, temporary folders' removal, Dask's shutdown) run
    first and the standard streams are flushed. What the lake writes is durable when it is
    written (the lake stays consistent under a kill at any moment): nothing waits for the
    teardown.
    """
    code = 0 if ended.code is None else ended.code
    if not isinstance(code, int) or threading.active_count() > 1:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe or stream: the ordinary exit reports it
        return
    atexit._run_exitfuncs()
    os._exit(_flushed(code))


#: Python's exit status when it cannot flush a standard stream at exit (Py_FinalizeEx).
EXIT_UNFLUSHED = 120


def _flushed(code: int) -> int:
    """``code``, or 120 when what the at-exit functions wrote to stdout or stderr cannot be
    flushed (a closed pipe, a full disk), with a one-line message on stderr: as Python's own
    exit reports it, never a silent success. Close what you write, never rely on GC: the
    teardown that would have flushed these streams is skipped (os._exit), so they are
    flushed here and a failure is reported.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or stream.closed:  # Python skips these too
            continue
        try:
            stream.flush()
        except (OSError, ValueError) as exc:
            code = EXIT_UNFLUSHED
            with contextlib.suppress(OSError):  # stderr itself may be the broken stream
                os.write(2, f"lake: could not write {name} at exit ({exc}).\n".encode())
    return code


class _PydicomDownloadsWithoutRequests(importlib.abc.MetaPathFinder):
    """Refuses ``requests`` to :mod:`pydicom.data.download` alone, while it is imported.

    Every ``import pydicom`` imports ``pydicom.data`` (``pydicom.pixels.processing`` needs its
    palette files), whose download module imports ``requests`` when it is installed: with
    urllib3, charset_normalizer, idna and http.client, 0.04-0.07 s of CPU, a tenth of a small
    ``lake export nifti`` (issue 14.2), for downloads of pydicom's test data that no command
    makes. Refused, that module uses urllib instead (pydicom's documented fallback,
    ``HAVE_REQUESTS``). Any other import of ``requests`` (a library, a later command) is
    untouched, and this finder is installed only by the console script (:func:`main`), never
    by an import of :mod:`lake`; it leaves ``sys.meta_path`` once it has refused.

    What it rests on: CPython's ``ModuleSpec._initializing`` (set while a module's code runs
    its first import; were it renamed, requests would load again and
    ``tests/test_imports.py`` would say so), and pydicom's fallback to urllib, which changes
    the transport of pydicom's test-data downloads only (the lake makes none). The lasting
    fix is upstream: a lazy ``import requests`` in ``pydicom/data/download.py``, as pooch did
    (fatiando/pooch#328).
    """

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> None:
        if fullname == "requests" and _initializing("pydicom.data.download"):
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
            raise ModuleNotFoundError("requests: not for pydicom's downloads in `lake`",
                                      name=fullname)
        return None


def _initializing(module: str) -> bool:
    """Whether ``module``'s own code is running its first import right now."""
    spec = getattr(sys.modules.get(module), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def main() -> None:
    """Console-script entry point."""
    # One OpenBLAS thread (set before anything imports numpy): the command's parallelism is
    # its worker processes, and a process without native threads can fork them (lake.compute).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if not any(isinstance(f, _PydicomDownloadsWithoutRequests) for f in sys.meta_path):
        sys.meta_path.insert(0, _PydicomDownloadsWithoutRequests())
    try:
        _app_for(sys.argv[1:])()
    except typer.Exit:
        raise
    except SystemExit as ended:  # click ends every run with sys.exit(code)
        _exit_now(ended)
        raise
    except Exception as exc:
        if os.environ.get("LAKE_DEBUG"):
            raise
        err.print(
            f"internal error ({type(exc).__name__}); please report it. "
            "Set LAKE_DEBUG=1 to see the traceback."
        )
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()

__all__ = ["app", "main"]
