"""The run report: what a scrape found, downloaded, refused and kept.

Counts add up: ``found == sum(failed) + duplicates + rejected + stored``, where
``failed`` is keyed by reason (``timeout``, ``http_404``, ``not_image``,
``corrupt``, ...), ``duplicates`` counts exact and near duplicates together
(``near_duplicates`` is the near part) and ``rejected`` counts the images the
footwear check sent to review.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class SourceReport:
    """How one search source did in this run."""

    name: str
    blocked: bool = False
    found: int = 0
    error: str | None = None
    tried: bool = False


@dataclass
class ScrapeReport:
    """Counters of one run; the pipeline fills it from a single thread."""

    label: str
    queries: list[str] = field(default_factory=list)
    found: int = 0
    downloaded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    near_duplicates: int = 0
    rejected: int = 0
    stored: int = 0
    sources: dict[str, SourceReport] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None

    @property
    def processed(self) -> int:
        """Items with an outcome so far (the progress bar's position)."""
        return sum(self.failed.values()) + self.duplicates + self.rejected + self.stored

    @property
    def blocked(self) -> bool:
        """True when every source that was tried was blocked."""
        tried = [source for source in self.sources.values() if source.tried]
        return bool(tried) and all(source.blocked for source in tried)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``sneakerbot scrape --json``, ``scrape_runs.report``)."""
        return {
            "label": self.label,
            "queries": list(self.queries),
            "found": self.found,
            "downloaded": self.downloaded,
            "failed": dict(sorted(self.failed.items())),
            "duplicates": self.duplicates,
            "near_duplicates": self.near_duplicates,
            "rejected": self.rejected,
            "stored": self.stored,
            "sources": {
                name: {"blocked": s.blocked, "found": s.found, "error": s.error, "tried": s.tried}
                for name, s in self.sources.items()
            },
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }

    def format_text(self) -> str:
        """A short human summary for the terminal."""
        lines = [
            f"Scrape of {self.label}: found {self.found}, downloaded {self.downloaded}, stored {self.stored}, "
            f"duplicates {self.duplicates} ({self.near_duplicates} near), rejected {self.rejected} (to review)",
        ]
        if self.failed:
            lines.append("failed: " + ", ".join(f"{reason} {n}" for reason, n in sorted(self.failed.items())))
        for source in self.sources.values():
            if not source.tried:
                continue
            state = "BLOCKED" if source.blocked else (f"error: {source.error}" if source.error else "ok")
            lines.append(f"  {source.name}: {state}, {source.found} found")
        return "\n".join(lines)
