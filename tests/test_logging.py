"""Logs: text or JSON lines (``SNEAKERBOT_LOG_FORMAT``), at ``SNEAKERBOT_LOG_LEVEL``, never with the bot token.

The token redaction itself is fuzzed in ``test_security_fuzz.py``; here the same real
``bot.cli.main`` subprocess runs with JSON logs, and a command of our own logs the token in
a message, an ``extra=`` field, an exception and its chained cause, in both formats.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.logging_setup import JsonFormatter, TokenRedactingFilter, configure_logging
from bot.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "123456789:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
SECRET = TOKEN.split(":", 1)[1]

# A ``sneakerbot logdemo`` command that logs the token every way it can reach a log.
LOGGING_SCRIPT = r'''
import logging, sys, types
import bot.cli as cli

def run(args, settings):
    token = settings.telegram_bot_token.get_secret_value()
    url = f"https://api.telegram.org/bot{token}/getUpdates"
    log = logging.getLogger("bot.demo")
    log.info("polling %s", url, extra={"chat_id": 42, "endpoint": url, "unwritable": object()})
    log.debug("debug line with %s", token)
    try:
        try:
            raise ConnectionError(f"cannot reach {url}")
        except ConnectionError as exc:
            raise RuntimeError(f"Unauthorized: {token} was rejected") from exc
    except RuntimeError:
        log.exception("update failed")
    log.warning("where %s was used", token, stack_info=True)
    return 0

command = types.ModuleType("logdemo")
command.register = lambda sub: sub.add_parser("logdemo").set_defaults(func=run)
cli.COMMAND_MODULES = (*cli.COMMAND_MODULES, command)
sys.exit(cli.main([*sys.argv[1:], "logdemo"]))
'''


def _run(script: str, tmp_path: Path, *args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter with the token in the environment, as a deployment has it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SNEAKERBOT_", "TELEGRAM_"))}
    env.update(TELEGRAM_BOT_TOKEN=TOKEN, SNEAKERBOT_DATA_DIR=str(tmp_path), PYTHONPATH=str(ROOT), **env_vars)
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _json_lines(stderr: str) -> list[dict]:
    """Every line of a JSON log as an object (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def _no_token(output: str) -> None:
    assert TOKEN not in output and SECRET not in output, output


def test_json_lines_carry_the_fields_and_never_the_token(tmp_path: Path) -> None:
    result = _run(LOGGING_SCRIPT, tmp_path, SNEAKERBOT_LOG_FORMAT="json")
    _no_token(result.stdout + result.stderr)
    entries = _json_lines(result.stderr)
    by_message = {entry["message"]: entry for entry in entries}
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry)
        when = datetime.fromisoformat(entry["time"])
        assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0  # ISO 8601, UTC

    polling = by_message["polling https://api.telegram.org/bot<redacted>/getUpdates"]
    assert polling["level"] == "INFO" and polling["logger"] == "bot.demo"
    assert polling["chat_id"] == 42 and polling["endpoint"] == "https://api.telegram.org/bot<redacted>/getUpdates"
    assert "unwritable" not in polling  # not JSON: left out, the line still written
    assert not any(message.startswith("debug line") for message in by_message)  # INFO by default

    failed = by_message["update failed"]
    assert failed["level"] == "ERROR"
    exception = failed["exception"]
    assert exception.startswith("Traceback") and "ConnectionError: cannot reach https://api.telegram.org/bot" \
        "<redacted>/getUpdates" in exception and "RuntimeError: Unauthorized: <redacted> was rejected" in exception
    assert "direct cause" in exception  # the chained cause is there too
    stacked = by_message["where <redacted> was used"]
    assert stacked["stack"].startswith("Stack (most recent call last)") and "in run" in stacked["stack"]


def test_text_lines_never_show_the_token_and_debug_follows_the_level(tmp_path: Path) -> None:
    quiet = _run(LOGGING_SCRIPT, tmp_path, SNEAKERBOT_LOG_LEVEL="warning")
    _no_token(quiet.stdout + quiet.stderr)
    assert "polling" not in quiet.stderr and "update failed" in quiet.stderr and "Traceback" in quiet.stderr
    assert not quiet.stderr.lstrip().startswith("{")  # text by default

    verbose = _run(LOGGING_SCRIPT, tmp_path, "-v", SNEAKERBOT_LOG_LEVEL="WARNING")  # -v still means DEBUG
    _no_token(verbose.stdout + verbose.stderr)
    assert "DEBUG bot.demo: debug line with <redacted>" in verbose.stderr
    assert "INFO bot.demo: polling https://api.telegram.org/bot<redacted>/getUpdates" in verbose.stderr
    assert "RuntimeError: Unauthorized: <redacted> was rejected" in verbose.stderr


def test_the_security_scenario_in_json(tmp_path: Path) -> None:
    """``test_security_fuzz``'s run of ``bot.cli.main`` (httpx, PTB's network error, another bot's token)
    with JSON logs: every line is JSON and none carries a token."""
    from test_security_fuzz import REDACTION_SCRIPT

    token = "7012345678:AAH3fake_Token-for-the-redaction-test1"  # the script's own assertions expect it
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SNEAKERBOT_", "TELEGRAM_"))}
    env.update(TELEGRAM_BOT_TOKEN=token, SNEAKERBOT_DATA_DIR=str(tmp_path), SNEAKERBOT_LOG_FORMAT="json",
               PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", REDACTION_SCRIPT], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert token not in output and token.split(":", 1)[1] not in output and "ZZother-secret" not in output, output
    entries = _json_lines(result.stderr.replace("done\n", ""))  # the script's own last line is not a log line
    loggers = {entry["logger"] for entry in entries}
    assert {"httpx", "bot.app", "telegram.ext.Updater", "bot.handlers.fallback"} <= loggers
    exceptions = [entry["exception"] for entry in entries if "exception" in entry]
    assert len(exceptions) == 2 and all("<redacted>" in text for text in exceptions)
    assert "NetworkError" in exceptions[0] and "ConnectError" in exceptions[0]


def test_the_formatter_writes_the_filters_redacted_exception() -> None:
    """The filter formats and redacts the traceback first; the JSON formatter must not format it again."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TokenRedactingFilter([TOKEN]))
    logger = logging.getLogger("sneakerbot.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"token {TOKEN}")
        except ValueError:
            logger.exception("failed", extra={"tags": ["a", TOKEN], "where": {"url": f"bot{TOKEN}/"}, "note": TOKEN})
    finally:
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert entry["exception"].endswith("ValueError: token <redacted>") and entry["note"] == "<redacted>"
    assert entry["tags"] == ["a", "<redacted>"] and entry["where"] == {"url": "bot<redacted>/"}


def test_unknown_formats_and_levels_fail_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNEAKERBOT_LOG_LEVEL", "debug")
    monkeypatch.setenv("SNEAKERBOT_LOG_FORMAT", "json")
    settings = Settings()
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    for name, value in (("SNEAKERBOT_LOG_LEVEL", "verbose"), ("SNEAKERBOT_LOG_FORMAT", "xml")):
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            with pytest.raises(ValidationError, match=name.removeprefix("SNEAKERBOT_").lower()):
                Settings()
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("xml")
