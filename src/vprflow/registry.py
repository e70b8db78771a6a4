"""Methods found by name: one pattern for every family (datasets, cleaning methods,
descriptors, search backends, re-ranking steps).

A family is a :class:`Registry` of ``name -> "module"`` or ``"module:attribute"``,
imported on first use, so naming a method costs nothing until it runs. Each method
(the module, or the attribute it names) declares

* ``DEFAULTS``: every setting it takes, with its default;
* optionally ``check(settings)``: the values, given the complete settings; it raises
  :class:`SettingError` naming the setting, and the registry turns that into an
  :class:`InputError` naming the whole config key (``models.netvlad.clusters: ...``).

``settings()`` is what the config validation and every job call: unknown keys and bad
values are refused the same way in every family. The helpers below (``whole_number``,
``positive_number``, ``one_of``) are the value checks the methods share.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

from .errors import InputError, SettingError


class Registry:
    """One family of methods, found by name (see the module docstring)."""

    def __init__(self, family: str, package: str, entries: dict[str, str], selector: str):
        """``family`` names the family in errors, ``package`` is where the entries' modules
        live, ``selector`` is the settings key that picks the method (``descriptor``,
        ``backend``, ``method``, ``name``)."""
        self.family, self.package, self.entries, self.selector = family, package, dict(entries), selector

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> Any:
        """The method ``name`` (module or class), imported now; InputError listing the known names."""
        if name not in self.entries:
            raise InputError(f"unknown {self.family} {name!r}; known: {', '.join(self.names())}")
        module, _, attribute = self.entries[name].partition(":")
        loaded = importlib.import_module(f"{self.package}.{module}")
        return getattr(loaded, attribute) if attribute else loaded

    def settings(self, where: str, settings: dict[str, Any], common: Iterable[str] = ()) -> dict[str, Any]:
        """``settings`` completed with the method's defaults and checked.

        ``where`` is the config key of this entry (``models.netvlad``); ``common`` are keys
        every method of the family takes besides its own (``k`` for searches). Raises
        InputError naming ``where.<key>``.
        """
        name = settings.get(self.selector)
        try:
            method = self.get(name)
        except InputError as error:
            raise InputError(f"{where}.{self.selector}: {error}") from None
        defaults = getattr(method, "DEFAULTS")
        known = set(defaults) | set(common) | {self.selector}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise InputError(f"{where}: unknown setting(s) {unknown} for {self.family} {name}; known: {sorted(known)}")
        complete = {**defaults, **settings}
        check = getattr(method, "check", None)
        if check is not None:
            try:
                check(complete)
            except SettingError as error:
                raise InputError(f"{where}.{error}") from None
        return complete


def own_settings(settings: dict[str, Any], selector: str) -> dict[str, Any]:
    """The settings without the key that picked the method."""
    return {k: v for k, v in settings.items() if k != selector}


def whole_number(settings: dict[str, Any], key: str, minimum: int = 1) -> None:
    value = settings[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SettingError(key, f"must be an integer >= {minimum}, got {value!r}")


def positive_number(settings: dict[str, Any], key: str, maximum: float | None = None) -> None:
    value = settings[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise SettingError(key, f"must be a positive number, got {value!r}")
    if maximum is not None and value > maximum:
        raise SettingError(key, f"must be at most {maximum}, got {value!r}")


def one_of(settings: dict[str, Any], key: str, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if settings[key] not in allowed:
        raise SettingError(key, f"unknown {settings[key]!r}; use one of {', '.join(map(str, allowed))}")
