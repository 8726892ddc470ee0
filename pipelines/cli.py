"""The ``lake`` command: thin commands over the :mod:`lake` library."""

from __future__ import annotations

import atexit
import contextlib
import copy
import gc
import importlib
import importlib.abc
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Annotated, Any

import typer

import lake
from lake._errors import is_native_panic
from pipelines._common import EXIT_CODES_HELP, EXIT_INTERNAL, err, out, reported
from pipelines._params import LakeGroup

_SETTINGS: dict[str, Any] = {
    "rich_markup_mode": None,  # plain help: rich's renderer costs 0.2 s a run (issue 14.1)
    "name": "lake",
    "no_args_is_help": True,
    "pretty_exceptions_enable": False,
    "add_completion": False,
    "cls": LakeGroup,  # plain values converted without pydantic (issue 14.2)
}
_HELP = (
    "imaging-lake: DICOM in, de-identified on the way in, SQL over the catalog, cohorts out.\n\n"
    "Every command finds its lake from --lake or LAKE_ROOT, and key material from --vault or "
    "LAKE_VAULT (a folder outside the lake).\n\n" + EXIT_CODES_HELP
)

#: ``lake``'s commands, in the order ``lake --help`` lists them: name -> (module, attribute).
#: A module is imported when its command runs (or the whole app is built): ``lake export
#: nifti`` does not import the servers', the portal's or the stewards' commands (issue 14.2).
_COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("pipelines._core", "init"),
    "ingest": ("pipelines._core", "ingest"),
    "sql": ("pipelines._core", "sql"),
    "info": ("pipelines._core", "info"),
    "verify": ("pipelines._core", "verify"),
    "deid": ("pipelines.profiles", "deid_command"),
    "attach": ("pipelines.documents", "attach_command"),
    "pull": ("pipelines.net", "pull_command"),
    "forget": ("pipelines.steward", "forget_command"),
    "compact": ("pipelines.steward", "compact_command"),
    "gc": ("pipelines.steward", "gc_command"),
    "vacuum": ("pipelines.steward", "vacuum_command"),
    "demo": (__name__, "demo"),  # this module (`__main__` under `python -m pipelines.cli`)
}
#: The groups (``lake export ...``), in ``lake --help``'s order, as :data:`_COMMANDS`.
_GROUPS: dict[str, tuple[str, str]] = {
    "profiles": ("pipelines.profiles", "profiles_app"),
    "cohort": ("pipelines.export", "cohort_app"),
    "export": ("pipelines.export", "export_app"),
    "serve": ("pipelines.net", "serve_app"),
    "token": ("pipelines.web", "token_app"),
    "teaching": ("pipelines.web", "teaching_app"),
    "viewer": ("pipelines.web", "viewer_app"),
    "users": ("pipelines.portal", "users_app"),
    "share": ("pipelines.portal", "share_app"),
    "quarantine": ("pipelines.steward", "quarantine_app"),
}
#: Commands a group gets from another module: group -> ((name, module, attribute), ...).
_GROUP_EXTRAS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "export": (("documents", "pipelines.documents", "export_documents_command"),),
    "serve": (("web", "pipelines.web", "serve_web"),),
}


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
    from pipelines import _core

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
        out.print("\n[bold]cohort query[/]", highlight=False, markup=True)
        out.print(DEMO_QUERY + "\n", highlight=False)
        _core._emit(lk.sql(DEMO_QUERY), _core.Format.table, None)
        out.print(f'\nTry: lake sql --lake {lake_root} "SELECT * FROM series LIMIT 5"')
        from pipelines.portal import demo_portal

        demo_portal(lk, vault, lake_root, scheduler)


def _command(module: str, attribute: str) -> Callable[..., Any]:
    function: Callable[..., Any] = getattr(importlib.import_module(module), attribute)
    return function


def _group(name: str) -> typer.Typer:
    """The sub-app ``name`` with every command, those of other modules included (once)."""
    module, attribute = _GROUPS[name]
    group: typer.Typer = getattr(importlib.import_module(module), attribute)
    for command, other, function in _GROUP_EXTRAS.get(name, ()):
        if all(c.name != command for c in group.registered_commands):
            group.command(command)(_command(other, function))
    return group


def _full_app() -> typer.Typer:
    """Every command: ``lake``, ``lake --help``, an unknown command, and ``app``."""
    full = typer.Typer(help=_HELP, **_SETTINGS)
    for name, (module, attribute) in _COMMANDS.items():
        full.command(name)(_command(module, attribute))
    for name in _GROUPS:
        full.add_typer(_group(name), name=name)
    return full


def _app() -> typer.Typer:
    """The whole command tree, built once."""
    built: typer.Typer | None = globals().get("app")
    if built is None:
        built = globals()["app"] = _full_app()
    return built


def __getattr__(name: str) -> typer.Typer:
    """``app``, the whole command tree, built on first use (PEP 562)."""
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _app_for(args: list[str]) -> typer.Typer:
    """The app reduced to the one command ``args`` run, when they name one (issues 14.1, 14.2).

    Typer builds the Click command of every registered command before parsing the command
    line (reading each signature: 0.03 s of CPU for all of ``lake``'s), and importing every
    command's module costs more; a run needs one command, or one command of a group
    (``lake export nifti``: neither the other exporters' signatures nor the servers'
    modules). Anything else (``lake``, ``lake --help``, ``lake export``, an unknown command
    or subcommand) gets the full command or group, so help, usage errors and suggestions are
    those of the whole app.
    """
    name = args[0] if args else "-"
    lean = typer.Typer(**_SETTINGS)
    lean.callback()(_no_options)  # a group, as app is, even with one command
    if name in _COMMANDS:
        lean.command(name)(_command(*_COMMANDS[name]))
    elif name in _GROUPS:
        lean.add_typer(_subcommand(name, args[1] if len(args) > 1 else "-"), name=name)
    else:
        return _app()
    return lean


def _subcommand(name: str, command: str) -> typer.Typer:
    """The group ``name`` with only its command ``command`` when it has one so named (its
    own or another module's), else the whole group."""
    from typer.main import get_command_name

    module, attribute = _GROUPS[name]
    group: typer.Typer = getattr(importlib.import_module(module), attribute)
    lean = copy.copy(group)  # the group's own settings (help, callback), one command
    lean.registered_groups = []
    lean.registered_commands = [
        c for c in group.registered_commands
        if c.callback is not None and (c.name or get_command_name(c.callback.__name__)) == command
    ]
    for extra, other, function in _GROUP_EXTRAS.get(name, ()):
        if extra == command and not lean.registered_commands:
            lean.command(extra)(_command(other, function))
    return lean if lean.registered_commands else _group(name)


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


#: Allocations (net, of objects the cyclic garbage collector tracks) before its first
#: collection in the console script: more than any command's start-up makes (the imports of a
#: small ``lake export nifti``, and its work, make ~130,000).
FIRST_COLLECTION = 200_000


class _Thresholds:
    """A collector callback: at the first collection after :func:`_collect_after_start_up`,
    the thresholds it replaced come back. It stays registered, a no-op until the next
    deferral (removing it while the collector iterates its callbacks would skip the next
    one), and there is one however often :func:`main` runs in a process."""

    def __init__(self, defaults: tuple[int, int, int]) -> None:
        self.defaults = defaults

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start" and gc.get_threshold()[0] == FIRST_COLLECTION:
            gc.set_threshold(*self.defaults)


def _collect_after_start_up() -> None:
    """No cyclic garbage collection until :data:`FIRST_COLLECTION` allocations, then
    Python's own thresholds again.

    With Python's thresholds (700 allocations) the collector runs ~180 times during a small
    ``lake export nifti``, rescanning the objects of every module imported so far: ~0.04 s
    of CPU, a tenth of the command, to free ~1,500 objects (issue 14.2). A command's imports
    make objects that live as long as the process; garbage cycles wait for the first
    collection (at most :data:`FIRST_COLLECTION` allocations), after which a long command (an
    ingest, a server) collects as usual. Called by :func:`main` only: importing
    :mod:`pipelines.cli` or :mod:`lake` changes no collector setting.
    """
    defaults = gc.get_threshold()
    if defaults[0] >= FIRST_COLLECTION:
        return
    armed = [cb for cb in gc.callbacks if isinstance(cb, _Thresholds)]
    if armed:
        armed[0].defaults = defaults
    else:
        gc.callbacks.append(_Thresholds(defaults))
    gc.set_threshold(FIRST_COLLECTION, *defaults[1:])


def main() -> None:
    """Console-script entry point."""
    _collect_after_start_up()
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
    except BaseException as exc:
        # Every Exception, and a native library's panic (pyo3's PanicException is none);
        # KeyboardInterrupt and the like go on as they are.
        if not (isinstance(exc, Exception) or is_native_panic(exc)) or os.environ.get("LAKE_DEBUG"):
            raise
        err.print(
            f"internal error ({type(exc).__name__}); please report it. "
            "Set LAKE_DEBUG=1 to see the traceback."
        )
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()

__all__ = ["app", "main"]  # noqa: F822 (app: built on first use, by __getattr__)
