"""Keep the bot token out of every log line.

The token is in every Bot API URL (``https://api.telegram.org/bot<token>/getUpdates``), so
an httpx request line, a network error or a traceback that names the URL would write it to
the log. ``TokenRedactingFilter`` rewrites a record before any handler formats it: the
message with its arguments, the formatted exception (with its chained causes) and the stack
are redacted; records without a token are left untouched. ``install_token_redaction`` puts
it on every handler that exists when it is called (``bot.cli.main`` calls it right after
configuring logging, in every process: bot, worker, playground, CLI).

What is redacted: the configured token itself wherever it appears, any ``bot<digits>:<secret>``
URL part (another bot's token, or the token before it was configured) as ``bot<redacted>``,
and a bare ``<digits>:<35-ish characters>`` token as ``<redacted>``.

``configure_logging`` sets up the root handler on stderr in one of two formats: ``text``
(one human-readable line) or ``json`` (one JSON object per line, for a log collector;
``JsonFormatter``). Either way the redaction filter runs first, so both write the same
redacted message, exception and stack.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
REDACTED = "<redacted>"
# ``bot<id>:<secret>`` in a Bot API URL path; the secret is URL-safe base64-ish.
BOT_URL_TOKEN = re.compile(r"bot\d+:[A-Za-z0-9_-]+")
# A token on its own: Telegram's are ``<8-10 digits>:<35 characters>``.
BARE_TOKEN = re.compile(r"(?<!\d)\d{5,}:[A-Za-z0-9_-]{30,}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
# Libraries that log every request or every job run at INFO would drown the app's own log.
NOISY_LOGGERS = ("httpx", "apscheduler.executors", "apscheduler.scheduler", "alembic.runtime.migration")
# What every ``LogRecord`` has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime",
                                                                                           "taskName"}


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


class TokenRedactingFilter(logging.Filter):
    """A handler filter that replaces bot tokens in a record; never drops a record."""

    def __init__(self, secrets: Iterable[str | _Secret | None] = ()) -> None:
        super().__init__()
        values = {_plain(secret) for secret in secrets}
        # Longest first (one token may contain another); very short values would mangle every line.
        self._secrets = sorted((value for value in values if value and len(value) >= 8), key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` with every token replaced."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = BOT_URL_TOKEN.sub("bot" + REDACTED, text)
        return BARE_TOKEN.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place (message, exception text, stack, ``extra=`` fields); always keep it."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string: keep what there is, redacted
            message = f"{record.msg} (arguments: {record.args!r})"
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            # Formatted here, once, so that every handler's formatter uses the redacted text.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in record.__dict__.items():  # ``extra=`` fields: the JSON format writes them
            if key not in _RECORD_ATTRIBUTES:
                record.__dict__[key] = self._redact_value(value)
        return True

    def _redact_value(self, value: object) -> object:
        """``value`` with tokens replaced in its strings, also inside lists, tuples and dicts (copied, not changed)."""
        if isinstance(value, str):
            return self.redact(value)
        # Exact types: a subclass (a named tuple, say) is not built from one iterable, so it is left as it is.
        if type(value) is list:
            return [self._redact_value(item) for item in value]
        if type(value) is tuple:
            return tuple(self._redact_value(item) for item in value)
        if type(value) is dict:
            return {key: self._redact_value(item) for key, item in value.items()}
        return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    then ``exception`` and ``stack`` when the record has them, then its ``extra=`` fields
    (those JSON can write; others are left out)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:  # no redaction filter ran (a handler of someone else's)
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # the filter's redacted text, never the exception formatted afresh
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry and _serialisable(value):
                entry[key] = value
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(log_format: str = "text", level: int | str = logging.INFO) -> None:
    """Log to stderr at ``level`` in ``log_format`` (``text`` or ``json``).

    Like ``logging.basicConfig``, it does nothing to a root logger that already has handlers
    (``main`` called in a test's process). Call ``install_token_redaction`` afterwards: it
    filters the handler made here.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def install_token_redaction(*secrets: str | _Secret | None) -> TokenRedactingFilter:
    """Put one ``TokenRedactingFilter`` on every existing handler (root's and any logger's).

    ``secrets`` are the tokens to redact besides the patterns (a pydantic ``SecretStr`` is
    fine); ``TELEGRAM_BOT_TOKEN`` from the environment is always added. Calling it again
    replaces the filter installed before.
    """
    redactor = TokenRedactingFilter([*secrets, os.environ.get(TOKEN_ENV)])
    loggers = [logging.getLogger()] + [
        logger for logger in list(logging.Logger.manager.loggerDict.values()) if isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            for old in [f for f in handler.filters if isinstance(f, TokenRedactingFilter)]:
                handler.removeFilter(old)
            handler.addFilter(redactor)
    return redactor


def _plain(secret: str | _Secret | None) -> str | None:
    if secret is None or isinstance(secret, str):
        return secret
    return secret.get_secret_value()


def _serialisable(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):  # ValueError: a circular reference
        return False
    return True
