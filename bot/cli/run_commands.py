"""``sneakerbot run`` (the bot; the local playground when there is no token) and ``sneakerbot playground``.

On one machine ``run`` also starts ``sneakerbot worker`` as its child process
(``start_worker_process``) and stops it when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from bot.settings import Settings

if TYPE_CHECKING:
    from bot.web import WebhookConfig

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` and ``playground``."""
    run_parser = sub.add_parser("run", help="run the bot (long polling); without a token, in the local playground")
    run_parser.add_argument("--playground", action="store_true", help="use the playground even if a token is set")
    run_parser.add_argument("--webhook", metavar="URL", default=None,
                            help="take updates by webhook at this public URL instead of long polling "
                                 "(default SNEAKERBOT_WEBHOOK_URL; needs SNEAKERBOT_WEBHOOK_SECRET)")
    run_parser.set_defaults(func=run)
    playground_parser = sub.add_parser("playground", help="only the local Bot API server and web chat page")
    playground_parser.set_defaults(func=playground)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the bot until Ctrl-C."""
    from bot.services.errors import ModelUnavailable
    from bot.web import WebhookConfig, WebhookConfigError

    use_playground = bool(args.playground or settings.telegram_bot_token is None)
    webhook = None
    try:
        if getattr(args, "webhook", None) or settings.webhook_url:
            webhook = WebhookConfig.from_settings(settings, url=getattr(args, "webhook", None))
    except WebhookConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    if webhook is not None:  # python-telegram-bot logs setWebhook's parameters at DEBUG: keep the secret out
        from bot.logging_setup import install_token_redaction

        install_token_redaction(settings.telegram_bot_token, settings.webhook_secret)
    try:
        asyncio.run(_run_bot(settings, use_playground, webhook))
    except ModelUnavailable as exc:
        log.error("cannot start: %s (build one with `make starter-model`)", exc)
        return 1
    return 0


def playground(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the playground alone (point a bot at it with SNEAKERBOT_BOT_API_URL)."""
    asyncio.run(_serve_playground(settings))
    return 0


async def _run_bot(settings: Settings, use_playground: bool, webhook: WebhookConfig | None = None) -> None:
    """Start the playground if wanted, the web server (webhook, health, metrics) if wanted, then the bot
    against the playground or Telegram; stop on a signal."""
    from bot.app import build_runtime, start_bot, stop_bot
    from bot.metrics import BotMetrics
    from bot.playground import PlaygroundServer
    from bot.web import BotWebServer

    stop = _stop_event()
    server = None
    metrics = BotMetrics()
    web = None
    if webhook is not None:
        web = BotWebServer(webhook.host, webhook.port, metrics=metrics, webhook=webhook)
    elif settings.health_port is not None:
        web = BotWebServer(settings.health_host, settings.health_port, metrics=metrics)
    try:
        if web is not None:  # first: /healthz answers and /readyz says "not ready" while the model loads
            await web.start()
        if use_playground:
            server = PlaygroundServer(settings.playground_token, settings.playground_host, settings.playground_port)
            await server.start()
            runtime = await asyncio.to_thread(build_runtime, settings, api_root=server.url,
                                              token=settings.playground_token, metrics=metrics)
        else:
            runtime = await asyncio.to_thread(build_runtime, settings, metrics=metrics)
    except BaseException:
        if web is not None:
            await web.stop()
        if server is not None:
            await server.stop()
        raise
    try:
        await start_bot(runtime, poll_timeout=settings.poll_timeout_s, webhook=webhook, web=web)
    except BaseException:
        await stop_bot(runtime)
        if web is not None:
            await web.stop()
        if server is not None:
            await server.stop()
        raise
    worker = None
    if settings.start_worker_in_bot:  # the learning loop's jobs in a child process: never here
        worker = start_worker_process(settings.health_port if webhook is None else None)
    if server is not None:
        print(f"sneakerbot playground: open {server.url}/ in your browser (Ctrl-C stops)", flush=True)
    elif webhook is not None:
        print(f"sneakerbot takes updates by webhook at {webhook.url} (Ctrl-C stops)", flush=True)
    else:
        print(f"sneakerbot is polling {settings.bot_api_url} (Ctrl-C stops)", flush=True)
    if web is not None:
        print(f"health and metrics: {web.url}/healthz, {web.url}/readyz, {web.url}/metrics", flush=True)
    try:
        await stop.wait()
    finally:
        if worker is not None:
            await asyncio.to_thread(stop_worker_process, worker)
        await stop_bot(runtime)
        if server is not None:
            await server.stop()


def start_worker_process(health_port: int | None = None) -> subprocess.Popen:
    """For ``sneakerbot run`` on one machine: ``sneakerbot worker`` as a child process.

    A child, not threads of the bot: training is CPU-heavy Python that would compete with
    the bot's event loop for the GIL. The child reads the same environment and ``.env``; when
    the bot serves health on ``health_port``, the worker serves its own on the next port.
    """
    env = None
    if health_port is not None:
        env = {**os.environ, "SNEAKERBOT_HEALTH_PORT": str(health_port + 1)}
    return subprocess.Popen([sys.executable, "-m", "bot", "worker"], env=env)


def stop_worker_process(worker: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Ask the worker to stop (SIGTERM: it finishes the running job's step and exits), then make sure."""
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout_s)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def _serve_playground(settings: Settings) -> None:
    """Only the server, until a signal."""
    from bot.playground import PlaygroundServer

    stop = _stop_event()
    server = PlaygroundServer(settings.playground_token, settings.playground_host, settings.playground_port)
    await server.start()
    print(f"playground Bot API at {server.url}/bot{settings.playground_token}/ — web chat at {server.url}/",
          flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def _stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop
