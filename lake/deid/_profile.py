"""De-identification profiles: TOML manifests naming a base recipe, options and site layers.

A built-in profile is ``profiles/<name>.toml``. A site profile extends one in a few lines::

    # mysite.toml
    name = "mysite"
    version = "2025.1"
    extends = "research"                 # a built-in name or a path to another manifest
    options = ["retain-institution-identity"]
    recipes = ["mysite.dicom"]           # deid recipes, relative to this file, applied last

Keys: ``name``, ``version``, ``description``, ``extends`` or ``base`` (the root recipe; only
the built-in ``basic`` names one), ``options`` (added to the parent's), ``recipes`` (appended
to the parent's) and ``[date_shift]`` with ``min_days``/``max_days`` (dates move that many
days into the past). A bare recipe path (``.dicom``) is a profile that extends ``basic``.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lake._errors import ProfileError
from lake.deid._clean import Vocabulary
from lake.deid._codes import EDITION, ProfileOption
from lake.deid._honour import check_layers
from lake.deid._recipe import Layer, parse_recipe

__all__ = ["Profile", "builtin_dir", "list_profiles", "load_profile", "safe_private_table"]

_MANIFEST_KEYS = frozenset(
    {"name", "version", "description", "extends", "base", "options", "recipes", "date_shift"}
)
_VOCABULARY = "clean-vocabulary.json"
_DEFAULT_SHIFT = (366, 3652)


@dataclass(frozen=True)
class Profile:
    """A named, versioned de-identification profile, loaded and parsed.

    Attributes
    ----------
    name, version : str
        From the manifest (a bare recipe gets its file stem and ``sha-<digest>``).
    sha256 : str
        Covers every byte the profile was built from: manifests, recipes, word list.
    options : tuple of ProfileOption
        The Annex E options, in canonical order.
    layers : tuple of Layer
        The parsed recipes: base, option layers (canonical order), site recipes.
    date_shift : tuple of int
        ``(min_days, max_days)``: modified dates move this many days into the past.
    """

    name: str
    version: str
    sha256: str
    options: tuple[ProfileOption, ...]
    layers: tuple[Layer, ...] = field(repr=False)
    date_shift: tuple[int, int] = _DEFAULT_SHIFT
    description: str = ""
    vocabulary: Vocabulary = field(default=Vocabulary(), repr=False)
    edition: str = EDITION

    @property
    def base(self) -> Layer:
        """The base recipe (Table E.1-1 plus the lake's additions)."""
        return self.layers[0]

    @property
    def option_layers(self) -> tuple[Layer, ...]:
        """The option layers, in the order of :attr:`options`."""
        return self.layers[1 : 1 + len(self.options)]

    @property
    def site_layers(self) -> tuple[Layer, ...]:
        """The site recipes, applied last."""
        return self.layers[1 + len(self.options) :]

    def describe(self) -> list[dict[str, str]]:
        """Every rule of the compiled plan: field, attribute name, action and source layer.

        Returns
        -------
        list of dict
            Keys ``field``, ``name``, ``action`` (the code the rule asks for, e.g. ``X/Z/D``),
            ``effect`` (what the engine does) and ``layer``. Sorted by field.
        """
        from lake.deid._plan import compile_profile

        return compile_profile(self).describe()


def builtin_dir() -> Path:
    """The folder of the built-in profiles (``profiles/``, shipped as ``lake.profiles``)."""
    try:
        folder = Path(str(resources.files("lake.profiles")))
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parents[2] / "profiles"
    if not (folder / "basic.toml").is_file():
        raise ProfileError(
            f"the built-in profiles are missing from {folder}; reinstall imaging-lake"
        )
    return folder


def safe_private_table() -> dict[tuple[int, str, int], tuple[str, str]]:
    """VR and VM of each element of Table E.3.10-1, by (group, creator, element byte).

    A listed element that is not what the table lists is not kept (``docs/deid.md``).
    """
    doc = json.loads((builtin_dir() / f"safe-private-{EDITION}.json").read_text())
    out: dict[tuple[int, str, int], tuple[str, str]] = {}
    for row in doc["rows"]:
        tag = row["tag"]  # (gggg,xxee)
        out[(int(tag[1:5], 16), row["creator"], int(tag[8:10], 16))] = (row["vr"], row["vm"])
    return out


def list_profiles() -> list[str]:
    """Names of the built-in profiles.

    Examples
    --------
    >>> "basic" in list_profiles()
    True
    """
    return sorted(p.stem for p in builtin_dir().glob("*.toml"))


@dataclass
class _Chain:
    manifests: list[tuple[str, bytes]] = field(default_factory=list)
    base: Path | None = None
    options: list[ProfileOption] = field(default_factory=list)
    recipes: list[Path] = field(default_factory=list)
    date_shift: tuple[int, int] = _DEFAULT_SHIFT
    name: str = ""
    version: str = ""
    description: str = ""


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc})") from None
    unknown = set(data) - _MANIFEST_KEYS
    if unknown:
        raise ProfileError(
            f"{path}: unknown keys {', '.join(sorted(unknown))}; "
            f"use {', '.join(sorted(_MANIFEST_KEYS))}"
        )
    return data


def _option(value: object, where: Path) -> ProfileOption:
    try:
        return ProfileOption(str(value))
    except ValueError:
        choices = ", ".join(o.value for o in ProfileOption)
        raise ProfileError(f"{where}: unknown option {value!r}; choose from {choices}") from None


def _resolve_manifest(ref: str, relative_to: Path | None) -> Path:
    candidate = Path(ref)
    if relative_to is not None and not candidate.is_absolute():
        candidate = relative_to / candidate
    if candidate.suffix == ".toml" and candidate.is_file():
        return candidate
    builtin = builtin_dir() / f"{ref}.toml"
    if builtin.is_file():
        return builtin
    raise ProfileError(
        f"unknown profile {ref!r}; choose one of {', '.join(list_profiles())} "
        "or give the path of a .toml manifest or .dicom recipe"
    )


def _walk_chain(path: Path, chain: _Chain, seen: tuple[Path, ...]) -> None:
    resolved = path.resolve()
    if resolved in seen:
        raise ProfileError(f"{path}: 'extends' forms a cycle")
    data = _read_manifest(path)
    if "extends" in data and "base" in data:
        raise ProfileError(f"{path}: give either 'extends' or 'base', not both")
    if "extends" in data:
        parent = _resolve_manifest(str(data["extends"]), path.parent)
        _walk_chain(parent, chain, (*seen, resolved))
    elif "base" in data:
        chain.base = path.parent / str(data["base"])
    else:
        raise ProfileError(f"{path}: add extends = \"basic\" (or another profile) to the manifest")
    chain.manifests.append((path.name, path.read_bytes()))
    for value in data.get("options", []):
        option = _option(value, path)
        if option not in chain.options:
            chain.options.append(option)
    chain.recipes += [path.parent / str(r) for r in data.get("recipes", [])]
    if "date_shift" in data:
        shift = data["date_shift"]
        try:
            low, high = int(shift["min_days"]), int(shift["max_days"])
        except (KeyError, TypeError, ValueError):
            raise ProfileError(
                f"{path}: [date_shift] needs integer min_days and max_days"
            ) from None
        if not 1 <= low <= high <= 36500:
            raise ProfileError(f"{path}: [date_shift] needs 1 <= min_days <= max_days <= 36500")
        chain.date_shift = (low, high)
    chain.name = str(data.get("name", path.stem))
    chain.version = str(data.get("version", "0"))
    chain.description = str(data.get("description", chain.description))


def _digest(parts: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for label, data in parts:
        h.update(label.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def load_profile(name: str) -> Profile:
    """Load a built-in profile by name, or a site manifest (``.toml``) or recipe by path.

    Parameters
    ----------
    name : str
        ``"basic"``, ``"research"``, ``"teaching"``, or a path. A bare ``.dicom`` recipe is
        layered on top of ``basic``.

    Returns
    -------
    Profile

    Raises
    ------
    ProfileError
        If the profile is unknown, a file is missing, or a manifest or recipe is invalid.

    Examples
    --------
    >>> p = load_profile("research")
    >>> p.name, [o.value for o in p.options][:1]
    ('research', ['retain-modified-dates'])
    """
    chain = _Chain()
    path = Path(name)
    if path.suffix == ".dicom":
        if not path.is_file():
            raise ProfileError(f"recipe {path} not found")
        _walk_chain(builtin_dir() / "basic.toml", chain, ())
        chain.recipes.append(path)
        chain.name = path.stem
        chain.version = ""
    else:
        _walk_chain(_resolve_manifest(name, None), chain, ())
    if {ProfileOption.RETAIN_FULL_DATES, ProfileOption.RETAIN_MODIFIED_DATES} <= set(chain.options):
        raise ProfileError(
            f"profile {chain.name}: retain-full-dates and retain-modified-dates exclude each other"
        )
    assert chain.base is not None
    options = tuple(o for o in ProfileOption if o in chain.options)  # canonical order
    option_dir = builtin_dir()
    recipe_paths = [chain.base] + [option_dir / o.recipe for o in options] + chain.recipes
    for recipe in recipe_paths:
        if not recipe.is_file():
            raise ProfileError(f"recipe {recipe} not found")
    vocabulary_path = builtin_dir() / _VOCABULARY
    parts = list(chain.manifests)
    parts += [(p.name, p.read_bytes()) for p in recipe_paths]
    vocabulary = vocabulary_path.read_bytes()
    parts.append((_VOCABULARY, vocabulary))
    digest = _digest(parts)
    layers = tuple(parse_recipe(p) for p in recipe_paths)
    if any(r.field.kind == "private" for layer in layers for r in layer.header):
        check_layers(layers, safe_private_table())
    else:
        check_layers(layers, {})
    return Profile(
        name=chain.name,
        version=chain.version or f"sha-{digest[:12]}",
        sha256=digest,
        options=options,
        layers=layers,
        date_shift=chain.date_shift,
        description=chain.description,
        vocabulary=Vocabulary.from_json(vocabulary),
    )
