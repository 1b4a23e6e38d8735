"""Helpers behind ``sneakerbot predict``: expand paths, predict image by image, report bad files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ml.errors import BadImage

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".heic", ".heif"}


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory means every image file in it (sorted, not recursive)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(path)
    return out


def predict_paths(predictor, paths: Iterable[Path], *, k: int = 3, batch_size: int = 16) -> list[dict]:
    """One dict per image: ``{"path", "top", "verdict", "footwear_score"}`` or ``{"path", "error"}``."""
    from ml.images import open_image

    rows: list[dict] = []
    good: list[tuple[Path, object]] = []
    for path in expand_paths(paths):
        try:
            good.append((path, open_image(path)))
        except (BadImage, OSError) as exc:
            rows.append({"path": str(path), "error": str(exc)})
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        for (path, _), prediction in zip(chunk, predictor.predict([img for _, img in chunk], k=k), strict=False):
            rows.append({"path": str(path), **prediction.to_dict()})
    order = {str(p): i for i, p in enumerate(expand_paths(paths))}
    return sorted(rows, key=lambda row: order.get(row["path"], 0))
