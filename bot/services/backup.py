"""Backups of everything the bot keeps, and restores of them (``sneakerbot backup DIR`` / ``restore DIR``).

What a backup holds: the database (SQLite or PostgreSQL), the labelled images (``images/``), the
model registry's files (``models/<version>/``; its rows are in the database) and the photos
awaiting feedback (``pending/``, so a restored bot can still take a ✅ on a recent answer).
Caches are rebuilt on demand and left out, and so are hidden work dirs and temp files
(``.work``, ``.incoming-*``, ``*.tmp``): they are half-made by definition.

Safe while the bot serves, in this order:

- the database first, as one consistent snapshot: SQLite's online backup API, or ``pg_dump`` of
  a snapshot exported by a REPEATABLE READ transaction that also counts the rows (so the
  manifest's counts are exactly the dump's). Neither blocks the bot's writes;
- then the files. The bot writes a file before it commits the row naming it (feedback files the
  photo, the registry copies a model in, then commits), so every row of the snapshot finds its
  file; newer files come along too and do no harm.

A backup directory holds ``database.sqlite3`` or ``database.pgdump``, ``images/``, ``models/``,
``pending/`` and ``manifest.json``. Every file is written under a temporary name and renamed; the
manifest, with the sha1 of every file, is written last. No manifest means a backup that did not
finish: ``restore`` refuses it, and one whose files do not match it, before touching anything.

A restore goes into an empty data dir and an empty database only (unless forced), then runs
the migrations to head, so a backup of an older schema comes back upgraded. Paths in the
database stay valid in another data dir: ``images.path`` is relative to the data dir,
``model_versions.path`` to the models path; only ``predictions.pending_path`` is stored as the
identify service made it (absolute, or relative to the working directory), so a restore points
it at the new data dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from bot.settings import Settings
from bot.store.db import init_db
from bot.store.models import Base, Prediction

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
DATABASE_FILES = {"sqlite": "database.sqlite3", "postgresql": "database.pgdump"}
PENDING_DIR = "pending"  # bot.services.identify keeps photos awaiting feedback in <data_dir>/pending
TEMP_MARKERS = (".tmp", ".part")
SUMMARY_TABLES = ("predictions", "feedback", "images", "model_versions")
PG_BIN_ROOT = Path("/usr/lib/postgresql")
CHUNK = 1 << 20

#: Told the name of each finished step: "database", "images", "models", "pending", "manifest".
StepHook = Callable[[str], None]
#: Runs one SQL statement, returns its rows (one shape for sqlite3 and SQLAlchemy connections).
Query = Callable[[str], list[tuple]]


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


class NotABackup(BackupError):
    """The directory has no manifest, or files that do not match it."""


class TargetNotEmpty(BackupError):
    """A restore would overwrite data that is already there."""


@dataclass(frozen=True)
class DatabaseFacts:
    """What the database snapshot holds: for the manifest and the backup's own checks."""

    revision: str | None
    rows: dict[str, int]
    image_paths: list[str] = field(default_factory=list)
    model_paths: dict[int, str] = field(default_factory=dict)
    schema: str | None = None  # PostgreSQL: the schema the dump holds


@dataclass(frozen=True)
class BackupReport:
    """What ``backup`` wrote."""

    target: Path
    database_kind: str
    alembic_revision: str | None
    rows: dict[str, int]
    files: dict[str, int]  # per tree: images, models, pending
    total_bytes: int
    seconds: float
    warnings: list[str]

    def summary(self) -> str:
        """A few lines for a person."""
        lines = [f"Backup written to {self.target} in {self.seconds:.1f} s ({self.total_bytes / 1e6:.1f} MB).",
                 f"Database: {self.database_kind}, schema revision {self.alembic_revision or 'none'}; "
                 + _rows_text(self.rows) + ".",
                 "Files: " + _files_text(self.files) + "."]
        return "\n".join(lines + [f"Warning: {w}" for w in self.warnings])


@dataclass(frozen=True)
class RestoreReport:
    """What ``restore`` did."""

    source: Path
    data_dir: Path
    database: str  # the URL without its password
    database_kind: str
    revision_before: str | None
    revision_after: str | None
    rows: dict[str, int]
    files: dict[str, int]
    pending_rebased: int
    warnings: list[str]

    def summary(self) -> str:
        """A few lines for a person."""
        lines = [f"Restored {self.source} into {self.data_dir} and {self.database}.",
                 f"Database: {self.database_kind}, schema revision {self.revision_before or 'none'} → "
                 f"{self.revision_after or 'none'}; " + _rows_text(self.rows) + ".",
                 "Files: " + _files_text(self.files) + f"; {self.pending_rebased} pending photo paths moved here."]
        return "\n".join(lines + [f"Warning: {w}" for w in self.warnings])


def _rows_text(rows: dict[str, int]) -> str:
    return ", ".join(f"{rows.get(table, 0)} {table.replace('_', ' ')}" for table in SUMMARY_TABLES)


def _files_text(files: dict[str, int]) -> str:
    return ", ".join(f"{count} in {name}/" for name, count in files.items())


# --- entry points -------------------------------------------------------------
def backup(settings: Settings, target_dir: Path, *, on_step: StepHook | None = None) -> BackupReport:
    """Copy the database, then the images, models and pending photos into ``target_dir``; manifest last.

    ``target_dir`` must be new or empty: a backup never mixes with older files.
    """
    started = time.monotonic()
    target = Path(target_dir)
    _prepare_target(target)
    step = on_step or (lambda _name: None)
    kind = database_kind(settings.db_url)
    db_file = target / DATABASE_FILES[kind]
    facts = _backup_sqlite(settings.db_url, db_file) if kind == "sqlite" else _backup_postgres(settings.db_url, db_file)
    step("database")
    hashes = {db_file.name: sha1_of(db_file)}
    counts, vanished = {}, 0
    for name, root in tree_roots(settings).items():
        copied, gone = copy_tree(root, target / name)
        hashes.update({f"{name}/{rel}": digest for rel, digest in copied.items()})
        counts[name], vanished = len(copied), vanished + gone
        step(name)
    write_json_atomically(target / MANIFEST, _manifest(kind, db_file.name, facts, counts, hashes))
    step("manifest")
    size = sum((target / rel).stat().st_size for rel in hashes)
    log.info("backup of %s written to %s: %d files", kind, target, len(hashes))
    return BackupReport(target, kind, facts.revision, facts.rows, counts, size, time.monotonic() - started,
                        _backup_warnings(facts, hashes, vanished))


def restore(settings: Settings, source_dir: Path, *, force: bool = False) -> RestoreReport:
    """Check the backup in ``source_dir``, restore it into the configured database and data dir, migrate.

    Refuses a target that holds data unless ``force``: then the backup's tables and files replace
    those of the same name, and anything else stays.
    """
    source = Path(source_dir)
    manifest = verify_backup(source)
    kind, database = database_kind(settings.db_url), manifest["database"]
    if database["kind"] != kind:
        raise BackupError(f"this backup holds a {database['kind']} database and the configured one is {kind}: "
                          f"restore it into a {database['kind']} database")
    trees = tree_roots(settings)
    if not force:
        _require_empty(settings.db_url, kind, trees)
    dump = source / database["file"]
    if kind == "sqlite":
        _restore_sqlite(dump, settings.db_url)
    else:
        _restore_postgres(dump, settings.db_url, database["schema"])
    files = _restore_files(source, manifest["files"], trees)
    rows, revision, rebased = _finish_database(settings.db_url, trees[PENDING_DIR], manifest["files"])
    warnings = [f"{table}: {rows.get(table)} rows restored, the backup counted {n}"
                for table, n in manifest["counts"]["rows"].items() if rows.get(table) != n]
    log.info("restored %s into %s", source, settings.data_dir)
    return RestoreReport(source, settings.data_dir, safe_url(settings.db_url), kind, database["alembic_revision"],
                         revision, rows, files, rebased, warnings)


def verify_backup(source: Path) -> dict[str, Any]:
    """The manifest of a complete, unchanged backup; ``NotABackup`` naming what is wrong otherwise."""
    path = source / MANIFEST
    if not path.is_file():
        raise NotABackup(f"{source} has no {MANIFEST}: it is not a backup, or one that did not finish")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        listed: dict[str, str] = manifest["files"]
        if manifest["format"] != FORMAT or manifest["database"]["file"] not in listed:
            raise ValueError(f"format {manifest['format']} or database file")
    except (ValueError, KeyError, TypeError) as exc:
        raise NotABackup(f"{path} is not a manifest this version can read ({exc})") from exc
    found = {rel.as_posix() for rel in walk_files(source)} - {MANIFEST}
    problems = [*(f"missing: {rel}" for rel in sorted(listed.keys() - found)),
                *(f"not in the manifest: {rel}" for rel in sorted(found - listed.keys())),
                *(f"changed: {rel}" for rel in sorted(listed.keys() & found) if sha1_of(source / rel) != listed[rel])]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise NotABackup(f"{source} does not match its manifest, so it cannot be trusted: {shown}")
    return manifest


# --- paths and files ----------------------------------------------------------
def tree_roots(settings: Settings) -> dict[str, Path]:
    """The directories a backup copies, by their name inside the backup.

    ``images/`` inside the backup is ``<data_dir>/images``, so ``images.path`` (relative to the
    data dir) names the same file in both.
    """
    return {"images": settings.images_path, "models": settings.models_path,
            PENDING_DIR: settings.data_dir / PENDING_DIR}


def is_work_file(name: str) -> bool:
    """Hidden entries (``.work``, ``.incoming-*``) and temp files are half-made: never copied."""
    return name.startswith(".") or any(marker in Path(name).suffixes or name.endswith(marker)
                                       for marker in TEMP_MARKERS)


def walk_files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` (relative to it, sorted), skipping work dirs and temp files."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_work_file(d))
        for name in sorted(filenames):
            if not is_work_file(name):
                yield Path(dirpath, name).relative_to(root)


def sha1_of(path: Path) -> str:
    """The sha1 of a file's bytes."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_file(source: Path, target: Path) -> str:
    """Copy under a hidden temp name, fsync, rename: ``target`` is whole or absent. Returns the sha1."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    digest = hashlib.sha1()
    try:
        with open(source, "rb") as reader, open(part, "wb") as writer:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return digest.hexdigest()


def copy_tree(source: Path, target: Path) -> tuple[dict[str, str], int]:
    """Copy every file of ``source`` to ``target``: ({relative path: sha1}, files that vanished meanwhile).

    A running bot moves and deletes files (a correction relabels a photo, retention deletes
    pending ones): a file gone between listing and copying is counted, not an error.
    """
    copied: dict[str, str] = {}
    vanished = 0
    for rel in walk_files(source):
        try:
            copied[rel.as_posix()] = copy_file(source / rel, target / rel)
        except FileNotFoundError:
            vanished += 1
    return copied, vanished


def write_json_atomically(path: Path, value: dict) -> None:
    """Write JSON under a temp name, fsync, rename, fsync the directory: it is there whole or not at all."""
    part = path.with_name(f".{path.name}.part")
    with open(part, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(part, path)
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _prepare_target(target: Path) -> None:
    """Create the backup directory; refuse one with anything in it (never mix two backups)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} is not an empty directory: give a new directory for each backup")
    target.mkdir(parents=True, exist_ok=True)


def _manifest(kind: str, db_file: str, facts: DatabaseFacts, counts: dict[str, int],
              hashes: dict[str, str]) -> dict[str, Any]:
    """The manifest: enough to recognise a complete backup and to check every byte of it."""
    return {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "database": {"kind": kind, "file": db_file, "alembic_revision": facts.revision, "schema": facts.schema},
        "counts": {"images": facts.rows.get("images", 0), "model_versions": facts.rows.get("model_versions", 0),
                   "files": len(hashes), **{f"{name}_files": n for name, n in counts.items()}, "rows": facts.rows},
        "files": hashes,
    }


def _backup_warnings(facts: DatabaseFacts, hashes: dict[str, str], vanished: int) -> list[str]:
    """Rows of the snapshot whose files the backup does not hold, said plainly."""
    warnings = []
    outside = [p for p in facts.image_paths if Path(p).is_absolute()]
    missing = [p for p in facts.image_paths if not Path(p).is_absolute() and Path(p).as_posix() not in hashes]
    if outside:
        warnings.append(f"{len(outside)} image rows name files outside the data dir (e.g. {outside[0]}): not copied")
    if missing:
        warnings.append(f"{len(missing)} image rows name files that were not there to copy (e.g. {missing[0]})")
    for version, path in sorted(facts.model_paths.items()):
        if Path(path).is_absolute():
            warnings.append(f"model version {version} lives outside the models path ({path}): not copied")
        elif f"models/{Path(path).as_posix()}/model.json" not in hashes:
            warnings.append(f"model version {version}: its files are missing from the models path")
    if vanished:
        warnings.append(f"{vanished} files were moved or deleted by the running bot while being copied")
    return warnings


def _require_empty(url: str, kind: str, trees: dict[str, Path]) -> None:
    """``TargetNotEmpty`` when the data dir's trees hold files or the database holds tables."""
    problems = []
    for root in trees.values():
        first = next(walk_files(root), None) if root.is_dir() else None
        if first is not None:
            problems.append(f"{root} holds files (e.g. {first})")
    empty = _sqlite_empty(url) if kind == "sqlite" else _postgres_empty(url)
    if not empty:
        problems.append(f"the database {safe_url(url)} has tables")
    if problems:
        raise TargetNotEmpty("a restore goes into an empty data dir and an empty database only: "
                             + "; ".join(problems) + ". Restore elsewhere, or use --force to replace them.")


def _restore_files(source: Path, files: dict[str, str], trees: dict[str, Path]) -> dict[str, int]:
    """Copy the backup's trees into the data dir, checking each file against the manifest again."""
    counts = dict.fromkeys(trees, 0)
    for rel, expected in sorted(files.items()):
        name, _, rest = rel.partition("/")
        if name not in trees or not rest:
            continue  # the database file
        if copy_file(source / rel, trees[name] / rest) != expected:
            raise NotABackup(f"{source / rel} changed while it was being restored")
        counts[name] += 1
    return counts


def _finish_database(url: str, pending_dir: Path, files: dict[str, str]) -> tuple[dict[str, int], str | None, int]:
    """Migrate the restored database to head, point pending photos here; (rows, revision, paths moved)."""
    engine = init_db(url)
    try:
        with Session(engine) as session, session.begin():
            rebased = _rebase_pending(session, pending_dir, files)
        with engine.connect() as conn:
            facts = _facts(_sqlalchemy_query(conn), _tables(conn))
    finally:
        engine.dispose()
    return facts.rows, facts.revision, rebased


def _rebase_pending(session: Session, pending_dir: Path, files: dict[str, str]) -> int:
    """Point ``predictions.pending_path`` at the restored copy of its photo (the one absolute path kept)."""
    restored = {rel.partition("/")[2] for rel in files if rel.startswith(f"{PENDING_DIR}/")}
    changes = []
    for prediction_id, path in session.execute(
            select(Prediction.id, Prediction.pending_path).where(Prediction.pending_path.is_not(None))):
        name = Path(path or "").name
        if name in restored and path != str(pending_dir / name):
            changes.append({"id": prediction_id, "pending_path": str(pending_dir / name)})
    if changes:
        session.execute(update(Prediction), changes)
    return len(changes)


# --- the database: shared ------------------------------------------------------
def database_kind(url: str) -> str:
    """``sqlite`` or ``postgresql``; any other backend cannot be backed up here."""
    kind = make_url(url).get_backend_name()
    if kind not in DATABASE_FILES:
        raise BackupError(f"backups support SQLite and PostgreSQL, not {kind}")
    return kind


def safe_url(url: str) -> str:
    """The URL as it may be printed: without its password."""
    return make_url(url).render_as_string(hide_password=True)


def _facts(query: Query, tables: set[str]) -> DatabaseFacts:
    """Row counts, revision and stored paths, read through one connection (one snapshot)."""
    rows = {t: int(query(f'SELECT count(*) FROM "{t}"')[0][0]) for t in sorted(Base.metadata.tables) if t in tables}
    revision = query("SELECT version_num FROM alembic_version") if "alembic_version" in tables else []
    images = [r[0] for r in query("SELECT path FROM images")] if "images" in tables else []
    models = dict(query("SELECT version, path FROM model_versions")) if "model_versions" in tables else {}
    return DatabaseFacts(revision[0][0] if revision else None, rows, images, models)


def _sqlalchemy_query(conn: Connection) -> Query:
    return lambda sql: [tuple(row) for row in conn.execute(text(sql))]


def _tables(conn: Connection) -> set[str]:
    """The tables the connection sees unqualified (its schema, for PostgreSQL)."""
    if conn.dialect.name == "sqlite":
        return set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())
    return set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars())


# --- SQLite -----------------------------------------------------------------------
def sqlite_path(url: str) -> Path:
    """The database file of a SQLite URL; an in-memory database has nothing to back up."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise BackupError(f"cannot back up or restore the SQLite database {url!r}: it must be a file path")
    return Path(database)


def read_only_uri(path: Path) -> str:
    """A SQLite URI opening ``path`` read-only (nothing created, not even a journal)."""
    return path.resolve().as_uri() + "?mode=ro"


def _backup_sqlite(url: str, target: Path) -> DatabaseFacts:
    """Copy with the online backup API: one consistent snapshot, writers of the live database go on."""
    part, path = target.with_name(f".{target.name}.part"), sqlite_path(url)
    if not path.is_file():
        raise BackupError(f"there is no SQLite database at {path}: nothing to back up")
    with closing(sqlite3.connect(path, timeout=30)) as live, closing(sqlite3.connect(part)) as copy:
        live.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file: no -wal beside it

        def query(sql: str) -> list[tuple]:
            return copy.execute(sql).fetchall()

        facts = _facts(query, {r[0] for r in query("SELECT name FROM sqlite_master WHERE type = 'table'")})
    with open(part, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(part, target)
    return facts


def _restore_sqlite(dump: Path, url: str) -> None:
    """Copy the backup into the target file with the backup API (atomic for SQLite's readers)."""
    path = sqlite_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(read_only_uri(dump), uri=True)) as saved, \
            closing(sqlite3.connect(path, timeout=30)) as target:
        saved.backup(target)


def _sqlite_empty(url: str) -> bool:
    """No file, or a file without tables."""
    path = sqlite_path(url)
    if not path.exists():
        return True
    with closing(sqlite3.connect(read_only_uri(path), uri=True)) as conn:
        return not conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]


# --- PostgreSQL ---------------------------------------------------------------------
def pg_tool(name: str) -> str:
    """``pg_dump`` or ``pg_restore``: on the PATH, else the newest under /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted((p for p in PG_BIN_ROOT.glob(f"*/bin/{name}") if p.parts[-3].isdigit()),
                        key=lambda p: int(p.parts[-3]), reverse=True)
    if not candidates:
        raise BackupError(f"{name} was not found: install the PostgreSQL client tools (postgresql-client)")
    return str(candidates[0])


def libpq_connection(url: str) -> tuple[str, dict[str, str]]:
    """A libpq connection string without the password, and an environment carrying it in PGPASSWORD.

    Why: a password on a command line is visible to every user of the machine (ps).
    Query parameters (``options=-csearch_path=...``, ``sslmode``) are libpq keywords already.
    """
    parsed = make_url(url)
    params: dict[str, Any] = {"host": parsed.host, "port": parsed.port, "user": parsed.username,
                              "dbname": parsed.database}
    for key, value in parsed.query.items():
        params[key] = value[-1] if isinstance(value, tuple) else value
    password = params.pop("password", None) or parsed.password
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = str(password)
    conninfo = " ".join(f"{key}={_conninfo_value(str(v))}" for key, v in params.items() if v not in (None, ""))
    return conninfo, env


def _conninfo_value(value: str) -> str:
    """A libpq keyword value, single-quoted with backslash escapes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _run_pg(tool: str, args: list[str], url: str) -> None:
    """Run a PostgreSQL client tool against ``url``; ``BackupError`` with its stderr when it fails."""
    conninfo, env = libpq_connection(url)
    command = [pg_tool(tool), *args, "--no-password", f"--dbname={conninfo}"]
    log.info("running %s on %s", tool, safe_url(url))
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackupError(f"{tool} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, double-quoted (also what pg_dump's --schema pattern takes literally)."""
    return '"' + name.replace('"', '""') + '"'


def _backup_postgres(url: str, target: Path) -> DatabaseFacts:
    """``pg_dump`` of the app's schema from a snapshot this transaction exports and counts in."""
    part = target.with_name(f".{target.name}.part")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            facts = _facts(_sqlalchemy_query(conn), _tables(conn))
            _run_pg("pg_dump", ["--format=custom", f"--schema={quote_ident(schema)}", f"--snapshot={snapshot}",
                                f"--file={part}"], url)
    finally:
        engine.dispose()
    with open(part, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(part, target)
    return DatabaseFacts(facts.revision, facts.rows, facts.image_paths, facts.model_paths, schema)


def _restore_postgres(dump: Path, url: str, source_schema: str) -> None:
    """``pg_restore --clean --if-exists`` into the target URL's schema, whatever the backup's schema was called.

    The dump names its schema in every statement. Restoring into another schema name (another
    deployment, an isolated test schema) renames the target schema to the dump's for the
    restore and back after it, so the target keeps its own schema object (owner, grants).
    The dump's name must then be free in the target database: that schema is someone's data.
    """
    engine = create_engine(url, poolclass=NullPool)
    try:
        target_schema = _target_schema(engine, source_schema)
        if target_schema != source_schema:
            _swap_schema_name(engine, target_schema, source_schema)
        try:
            _pg_restore(dump, url)
        finally:
            if target_schema != source_schema:
                _swap_schema_name(engine, source_schema, target_schema)
    finally:
        engine.dispose()


def _target_schema(engine: Engine, source_schema: str) -> str:
    """The schema the target URL's tables live in; refuses when the dump's schema name is taken by another."""
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one_or_none()
        if schema is None:
            path = conn.execute(text("SELECT current_setting('search_path')")).scalar_one()
            raise BackupError(f"no schema of the target's search_path ({path}) exists: create it first")
        taken = conn.execute(text("SELECT count(*) FROM pg_namespace WHERE nspname = :n"), {"n": source_schema})
        if schema != source_schema and taken.scalar_one():
            raise TargetNotEmpty(
                f"the backup's schema {source_schema!r} already exists in the target database, and the target "
                f"schema is {schema!r}: restore into a database without a schema {source_schema!r}, "
                f"or into that schema itself")
    return schema


def _swap_schema_name(engine: Engine, old: str, new: str) -> None:
    """Rename a schema (its objects follow: they reference it by oid)."""
    with engine.begin() as conn:
        conn.execute(text(f"ALTER SCHEMA {quote_ident(old)} RENAME TO {quote_ident(new)}"))


def _pg_restore(dump: Path, url: str) -> None:
    """Restore every object but the schema itself, in one transaction.

    The schema exists already (the target's own, or renamed to the dump's name): ``--clean`` would
    drop and re-create it, which needs its owner (``public`` belongs to the database owner).
    """
    listing = subprocess.run([pg_tool("pg_restore"), "--list", str(dump)], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        raise BackupError(f"pg_restore cannot read {dump}: {listing.stderr.strip()}")
    schema_entry = re.compile(r"^\d+; \d+ \d+ (SCHEMA - |COMMENT - SCHEMA )")
    entries = "\n".join(";" + line if schema_entry.match(line) else line for line in listing.stdout.splitlines())
    with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as handle:
        handle.write(entries + "\n")
    try:
        args = ["--clean", "--if-exists", "--no-owner", "--no-acl", "--single-transaction", "--exit-on-error",
                f"--use-list={handle.name}", str(dump)]
        _run_pg("pg_restore", args, url)
    finally:
        os.unlink(handle.name)


def _postgres_empty(url: str) -> bool:
    """No tables in the schema the URL's connections use."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return not _tables(conn)
    finally:
        engine.dispose()
