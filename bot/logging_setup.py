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
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Protocol

TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
REDACTED = "<redacted>"
# ``bot<id>:<secret>`` in a Bot API URL path; the secret is URL-safe base64-ish.
BOT_URL_TOKEN = re.compile(r"bot\d+:[A-Za-z0-9_-]+")
# A token on its own: Telegram's are ``<8-10 digits>:<35 characters>``.
BARE_TOKEN = re.compile(r"(?<!\d)\d{5,}:[A-Za-z0-9_-]{30,}")


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
        """Redact ``record`` in place (message, exception text, stack); always keep it."""
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
        return True


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
