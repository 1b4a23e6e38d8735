"""``sneakerbot healthcheck``: is the bot or worker on this machine alive? (a Docker HEALTHCHECK)

It GETs ``http://127.0.0.1:<port>/healthz`` with a short timeout and exits 0 on a 200, 1
otherwise with a one-line reason. The port is ``--port``, else ``SNEAKERBOT_HEALTH_PORT``
(the worker, or the bot in polling mode), else the webhook's listening port when a webhook
URL is set. Only the standard library is used here, so a probe costs no model or bot import.
"""

from __future__ import annotations

import argparse
import sys

from bot.settings import Settings

TIMEOUT_S = 3.0
HOST = "127.0.0.1"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``healthcheck`` sub-command."""
    parser = sub.add_parser("healthcheck", help="GET /healthz of the bot or worker on this machine; "
                                                "exit 0 on 200, 1 otherwise (for Docker's HEALTHCHECK)")
    parser.add_argument("--port", type=int, help="default: SNEAKERBOT_HEALTH_PORT, else "
                                                 "SNEAKERBOT_WEBHOOK_LISTEN_PORT when SNEAKERBOT_WEBHOOK_URL is set")
    parser.add_argument("--path", default="/healthz", help="default: /healthz (/readyz asks for readiness)")
    parser.set_defaults(func=run_healthcheck)


def configured_port(settings: Settings) -> int | None:
    """The port the process on this machine serves /healthz on, as the settings say; None when none is."""
    if settings.health_port is not None:
        return settings.health_port
    if settings.webhook_url:
        return settings.webhook_listen_port
    return None


def run_healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    """Exit status 0 when the URL answers 200; otherwise 1, with the reason on stderr."""
    port = args.port if args.port is not None else configured_port(settings)
    if port is None:
        print("healthcheck: nothing to check: no --port, SNEAKERBOT_HEALTH_PORT or SNEAKERBOT_WEBHOOK_URL is set",
              file=sys.stderr)
        return 1
    url = f"http://{HOST}:{port}/{args.path.lstrip('/')}"
    problem = probe(url)
    if problem is not None:
        print(f"healthcheck: {url}: {problem}", file=sys.stderr)
        return 1
    print(f"healthcheck: {url}: 200 OK")
    return 0


def probe(url: str, timeout: float = TIMEOUT_S) -> str | None:
    """None when ``url`` answers 200 within ``timeout`` seconds, else why not (one line)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP(S)_PROXY
    try:
        with opener.open(url, timeout=timeout) as response:
            status = response.status
            body = response.read(200)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(200)
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return f"no answer within {timeout:g}s"
        return f"no answer: {getattr(reason, 'strerror', None) or reason}"
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:  # a connection reset mid-answer, say
        return f"no answer: {exc.strerror or type(exc).__name__}"
    if status == 200:
        return None
    detail = " ".join(body.decode("utf-8", "replace").split())
    return f"HTTP {status}" + (f": {detail}" if detail else "")
