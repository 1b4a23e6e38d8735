"""The playground's in-memory world: chats, messages, files, the update queue and chat events.

Everything the Bot API side changes is also appended to the chat's event list, which the
web page and the tests long-poll to see what the bot did (new messages, edits, alerts).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

JSON = dict[str, Any]
FAULT_KINDS = ("429", "500", "timeout", "drop")
DOWNLOAD = "file"  # the name faults give the file download route (``/file/bot<token>/<path>``)
WEBHOOK = "webhook"  # the name faults give a webhook delivery (the server's POST to the bot)


class BotApiError(Exception):
    """An error the Bot API returns as ``{"ok": false, "error_code", "description"}``."""

    def __init__(self, code: int, description: str, *, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after

    def body(self) -> JSON:
        """The JSON body Telegram sends for this error."""
        body: JSON = {"ok": False, "error_code": self.code, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


def bad_request(what: str) -> BotApiError:
    """Telegram's 400 with its usual "Bad Request: ..." wording."""
    return BotApiError(400, f"Bad Request: {what}")


@dataclass
class StoredFile:
    """A file the server holds: what getFile describes and /file/ serves."""

    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    mime_type: str


@dataclass(frozen=True)
class Fault:
    """One injected failure of one Bot API call or download (``POST /playground/api/faults``).

    ``kind``: "429" (Telegram's flood answer with ``retry_after``), "500" (the Bot API's own
    ``{"ok": false}`` error), "timeout" (the server holds the request ``hold`` seconds without
    answering: longer than the client's read timeout) or "drop" (the connection is closed
    without an answer). ``after_accept``: the server performs the method first (the message
    IS sent) and only then fails, which is the ambiguous case a client cannot tell from a
    failure before: "timeout" and "drop" then look exactly the same to the bot, and "500"
    comes as a gateway's bare 502 page (a Bot API that performed a method never answers it
    with its own error).
    """

    kind: str
    retry_after: int = 1
    after_accept: bool = False
    hold: float = 30.0


@dataclass
class Webhook:
    """The webhook ``setWebhook`` set: where new updates are POSTed, and how the last try went."""

    url: str
    secret_token: str | None = None
    allowed_updates: list[str] | None = None  # None or empty: every kind
    max_connections: int = 40  # updates POSTed at once (one per chat at a time)
    last_error_date: int | None = None
    last_error_message: str | None = None

    def info(self) -> JSON:
        """What getWebhookInfo tells about it (never the secret)."""
        info: JSON = {"url": self.url, "has_custom_certificate": False, "max_connections": self.max_connections}
        if self.allowed_updates:
            info["allowed_updates"] = self.allowed_updates
        if self.last_error_date is not None:
            info.update(last_error_date=self.last_error_date, last_error_message=self.last_error_message)
        return info


def update_kind(update: JSON) -> str:
    """The update's kind: its one key besides ``update_id`` ("message", "callback_query", ...)."""
    return next((key for key in update if key != "update_id"), "")


def update_chat(update: JSON) -> int | None:
    """The chat an update belongs to (webhook deliveries keep each chat's order), if any."""
    body = update.get(update_kind(update))
    if not isinstance(body, dict):
        return None
    chat = body.get("chat") or (body.get("message") or {}).get("chat") or body.get("from") or {}
    return chat.get("id")


@dataclass
class PlaygroundState:
    """All chats of one bot. Only ever touched from the server's event loop."""

    token: str
    bot_user: JSON
    updates: list[JSON] = field(default_factory=list)
    messages: dict[tuple[int, int], JSON] = field(default_factory=dict)
    chats: dict[int, JSON] = field(default_factory=dict)
    users: dict[int, JSON] = field(default_factory=dict)
    events: list[JSON] = field(default_factory=list)
    files: dict[str, StoredFile] = field(default_factory=dict)
    files_by_path: dict[str, StoredFile] = field(default_factory=dict)  # what /file/ downloads look up
    callbacks: dict[str, JSON] = field(default_factory=dict)
    commands: list[JSON] = field(default_factory=list)
    floods: dict[str, list[int]] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)  # method (lower case) or DOWNLOAD -> pending
    faults_served: list[JSON] = field(default_factory=list)  # every injected failure that happened, in order
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    poll_generation: int = 0
    max_download_bytes: int = 20 * 1024 * 1024  # getFile's limit on Telegram's hosted Bot API
    # Webhook delivery (``server.deliver_webhooks``): while ``webhook`` is set, ``updates`` are POSTed
    # to it instead of waiting for getUpdates; a failed POST is tried again after a growing pause.
    webhook: Webhook | None = None
    webhook_backoff: float = 0.1  # seconds before the first retry of a failed delivery; doubles each time
    webhook_max_backoff: float = 5.0
    webhook_timeout: float = 10.0  # a POST not answered within this failed ("Read timeout expired")
    deliveries: list[JSON] = field(default_factory=list)  # every delivery attempt, in order (tests, the page)
    delivering: set[int] = field(default_factory=set)  # update ids being POSTed now
    retry_at: dict[int, tuple[int, float]] = field(default_factory=dict)  # update id -> (failures, loop time)
    _update_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _message_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    # --- users and chats --------------------------------------------------
    def user(self, user_id: int, first_name: str | None = None, username: str | None = None) -> JSON:
        """The Telegram user object, created on first use; a private chat comes with it."""
        if user_id not in self.users:
            name = first_name or f"User {user_id}"
            self.users[user_id] = {"id": user_id, "is_bot": False, "first_name": name}
            if username:
                self.users[user_id]["username"] = username
            self.chats[user_id] = {"id": user_id, "type": "private", "first_name": name}
        return self.users[user_id]

    def chat(self, chat_id: object) -> JSON:
        """A known chat or Telegram's "chat not found"."""
        try:
            return self.chats[int(chat_id)]  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError):
            raise bad_request("chat not found") from None

    # --- ids ----------------------------------------------------------------
    def next_message_id(self) -> int:
        """Message ids are unique in the whole playground (simpler than per chat, still valid)."""
        return next(self._message_ids)

    def next_id(self, prefix: str) -> str:
        """An opaque id for files and callback queries."""
        return f"{prefix}{next(self._ids)}"

    # --- messages, updates, events ---------------------------------------
    def store_message(self, message: JSON) -> JSON:
        """Keep a message so it can be edited, replied to and shown."""
        self.messages[(message["chat"]["id"], message["message_id"])] = message
        return message

    def get_message(self, chat_id: int, message_id: object) -> JSON:
        """A stored message or Telegram's "message to edit not found"."""
        try:
            return self.messages[(chat_id, int(message_id))]  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError):
            raise bad_request("message to edit not found") from None

    async def push_update(self, kind: str, payload: JSON) -> JSON:
        """Queue an update for the bot and wake its long poll."""
        update = {"update_id": next(self._update_ids), kind: payload}
        async with self.changed:
            self.updates.append(update)
            self.changed.notify_all()
        return update

    async def push_event(self, chat_id: int, kind: str, **data: Any) -> JSON:
        """Record something the bot did in a chat and wake the chat's watchers."""
        async with self.changed:  # numbered under the lock: waiting for it, two events took one number
            event = {"seq": len(self.events) + 1, "chat_id": chat_id, "type": kind, "time": time.time(), **data}
            self.events.append(event)
            self.changed.notify_all()
        return event

    # --- webhook delivery (the caller holds ``changed``) ----------------------
    def deliverable(self, now: float) -> tuple[list[JSON], float | None]:
        """Updates to POST now: the oldest of each chat that is neither being POSTed nor waiting for
        its retry, as many as the webhook's ``max_connections`` allow; and the loop time of the next
        retry, if one waits. Kinds outside ``allowed_updates`` are dropped, as Telegram does."""
        hook = self.webhook
        if hook is None:
            return [], None
        if hook.allowed_updates:
            self.updates = [u for u in self.updates if update_kind(u) in hook.allowed_updates]
        ready: list[JSON] = []
        seen_chats: set[object] = set()
        next_retry: float | None = None
        room = hook.max_connections - len(self.delivering)
        for update in self.updates:
            chat = update_chat(update)
            lane = chat if chat is not None else ("update", update["update_id"])
            if lane in seen_chats:
                continue  # a chat's later updates wait for its oldest
            seen_chats.add(lane)
            if update["update_id"] in self.delivering:
                continue
            due = self.retry_at.get(update["update_id"], (0, now))[1]
            if due > now:
                next_retry = due if next_retry is None else min(next_retry, due)
                continue
            if len(ready) < room:
                ready.append(update)
        for update in ready:
            self.delivering.add(update["update_id"])
        return ready, next_retry

    def delivered(self, update: JSON, error: str | None, now: float) -> None:
        """Record one delivery attempt: done (the update leaves the queue) or failed (retried later)."""
        update_id = update["update_id"]
        self.delivering.discard(update_id)
        failures = self.retry_at.get(update_id, (0, now))[0] + (error is not None)
        self.deliveries.append({"update_id": update_id, "ok": error is None, "error": error,
                                "attempt": failures + (error is None), "time": time.time()})
        if error is None:
            self.retry_at.pop(update_id, None)
            self.updates = [u for u in self.updates if u["update_id"] != update_id]
            return
        pause = min(self.webhook_max_backoff, self.webhook_backoff * 2 ** (failures - 1))
        self.retry_at[update_id] = (failures, now + pause)
        if self.webhook is not None:
            self.webhook.last_error_date = int(time.time())
            self.webhook.last_error_message = error

    def add_file(self, data: bytes, *, folder: str, suffix: str, mime_type: str) -> StoredFile:
        """Store bytes under a new file id and a Telegram-like ``file_path``."""
        file_id = self.next_id("F")
        unique = hashlib.sha1(data).hexdigest()[:16]
        stored = StoredFile(file_id, unique, f"{folder}/file_{file_id}{suffix}", data, mime_type)
        self.files[file_id] = stored
        self.files_by_path[stored.file_path] = stored
        return stored

    def file_by_path(self, file_path: str) -> StoredFile | None:
        """The file a download URL names."""
        return self.files_by_path.get(file_path)

    def take_flood(self, method: str) -> int | None:
        """A pending injected 429 for ``method`` (its retry_after), if any."""
        queue = self.floods.get(method.lower())
        return queue.pop(0) if queue else None

    def add_faults(self, method: str, fault: Fault, count: int = 1) -> int:
        """Make the next ``count`` calls of ``method`` (or of ``DOWNLOAD``) fail as ``fault`` says; how many wait."""
        queue = self.faults.setdefault(method.lower(), [])
        queue.extend([fault] * count)
        return len(queue)

    def take_fault(self, method: str) -> Fault | None:
        """The failure this call of ``method`` gets, if any: floods (``/flood``, a 429) first, then faults."""
        name = method.lower()
        retry_after = self.take_flood(name)
        if retry_after is not None:
            fault: Fault | None = Fault("429", retry_after=retry_after)
        else:
            queue = self.faults.get(name)
            fault = queue.pop(0) if queue else None
        if fault is not None:
            self.faults_served.append({"method": name, "kind": fault.kind, "after_accept": fault.after_accept,
                                       "time": time.time()})
        return fault


STATE = web.AppKey("state", PlaygroundState)
