"""The built-in sneaker catalogue: what to search for, per class label.

The starter model's 32 Air Jordan classes. The database copy (``sneaker_classes``)
is seeded from this and is what admins edit; this module stays the default and
the source for a fresh install. Labels are folder names under ``images/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

AIR_JORDAN_NUMBERS = (*range(1, 24), *range(28, 33), 2009, 2010, 2011, 2012)
# The one label rule (the admin commands use it too): a folder name under images/, never a hidden or
# work folder (``_review``), no separators, no trailing newline (fullmatch, not ``$``).
_LABEL = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class CatalogueEntry:
    """One sneaker class: its label, the name users see and the search queries for it."""

    label: str
    display_name: str
    queries: tuple[str, ...]


def air_jordan(number: int) -> CatalogueEntry:
    """The catalogue entry of one Air Jordan model."""
    return CatalogueEntry(
        label=f"air_jordan_{number}",
        display_name=f"Air Jordan {number}",
        queries=(f"air jordan {number}", f"nike air jordan {number} sneaker", f"jordan {number} retro shoe"),
    )


BUILTIN_CATALOGUE: tuple[CatalogueEntry, ...] = tuple(air_jordan(n) for n in AIR_JORDAN_NUMBERS)


def builtin_entry(label: str) -> CatalogueEntry | None:
    """The built-in entry for ``label``, or None."""
    return next((entry for entry in BUILTIN_CATALOGUE if entry.label == label), None)


def is_valid_label(label: str) -> bool:
    """Labels are folder names: lowercase ASCII, digits and underscores, at most 64 characters."""
    return bool(_LABEL.fullmatch(label))


def default_queries(label: str) -> tuple[str, ...]:
    """Queries for a label outside the catalogue: its words ("air_max_90" -> "air max 90")."""
    return (label.replace("_", " "),)
