"""The bot side: Bot API methods, one small function each, found through a registry.

Each method gets the state and its decoded parameters and returns the ``result`` value,
or raises ``BotApiError`` with Telegram's code and wording.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bot.playground.state import JSON, BotApiError, PlaygroundState, Webhook, bad_request

Method = Callable[[PlaygroundState, JSON], Awaitable[Any]]
METHODS: dict[str, Method] = {}

# Parameters the Bot API takes as JSON-serialised strings in form posts.
JSON_PARAMS = frozenset(
    {"reply_markup", "commands", "reply_parameters", "entities", "scope", "link_preview_options",
     "allowed_updates", "caption_entities", "media"}
)
MAX_TEXT = 4096
MAX_CALLBACK_DATA = 64
MAX_POLL_TIMEOUT = 50
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
WEBHOOK_CONFLICT = ("Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first")


def bot_method(name: str) -> Callable[[Method], Method]:
    """Register a Bot API method under its (case-insensitive) name."""

    def decorate(func: Method) -> Method:
        METHODS[name.lower()] = func
        return func

    return decorate


def decode_params(raw: dict[str, Any]) -> JSON:
    """Form values arrive as strings: decode the ones the Bot API documents as JSON."""
    params: JSON = {}
    for key, value in raw.items():
        if key in JSON_PARAMS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise bad_request(f"can't parse {key} JSON object") from None
        params[key] = value
    return params


def int_param(params: JSON, name: str, default: int | None = None) -> int:
    """An integer parameter, or Telegram's complaint about it."""
    value = params.get(name, default)
    if value is None:
        raise bad_request(f"{name} is empty")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad_request(f"invalid {name} specified") from None


def check_markup(markup: object) -> JSON | None:
    """Validate an inline keyboard the way Telegram does (64-byte callback data, one action)."""
    if markup is None:
        return None
    if not isinstance(markup, dict) or not isinstance(markup.get("inline_keyboard"), list):
        raise bad_request("can't parse reply keyboard markup JSON object")
    for row in markup["inline_keyboard"]:
        for button in row:
            if not button.get("text"):
                raise bad_request("text buttons are unallowed in the inline keyboard")
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA:
                raise bad_request("BUTTON_DATA_INVALID")
            if data is None and not button.get("url"):
                raise bad_request("can't find field \"text\" or an action in the button")
    return markup if markup["inline_keyboard"] else None


def check_text(text: object) -> str:
    """Message text limits."""
    if not isinstance(text, str) or not text.strip():
        raise bad_request("message text is empty")
    if len(text) > MAX_TEXT:
        raise bad_request("message is too long")
    return text


def reply_target(state: PlaygroundState, chat_id: int, params: JSON) -> JSON | None:
    """The message a reply points to (``reply_parameters`` or the older ``reply_to_message_id``)."""
    reply = params.get("reply_parameters") or {}
    message_id = reply.get("message_id") if isinstance(reply, dict) else None
    message_id = message_id or params.get("reply_to_message_id")
    if message_id is None:
        return None
    target = state.messages.get((chat_id, int(message_id)))
    if target is None and not (isinstance(reply, dict) and reply.get("allow_sending_without_reply")):
        raise bad_request("message to be replied not found")
    return target


async def new_bot_message(state: PlaygroundState, params: JSON, **content: Any) -> JSON:
    """Build, store and announce a message the bot sends."""
    chat = state.chat(params.get("chat_id"))
    message: JSON = {
        "message_id": state.next_message_id(),
        "from": state.bot_user,
        "chat": chat,
        "date": int(time.time()),
        **content,
    }
    target = reply_target(state, chat["id"], params)
    if target is not None:
        message["reply_to_message"] = {k: v for k, v in target.items() if k != "reply_to_message"}
    markup = check_markup(params.get("reply_markup"))
    if markup:
        message["reply_markup"] = markup
    state.store_message(message)
    await state.push_event(chat["id"], "message", message=message)
    return message


@bot_method("getMe")
async def get_me(state: PlaygroundState, params: JSON) -> JSON:
    """The bot's own user."""
    return state.bot_user


@bot_method("logOut")
@bot_method("close")
async def accept(state: PlaygroundState, params: JSON) -> bool:
    """Methods that only need to succeed here."""
    return True


def bool_param(params: JSON, name: str) -> bool:
    """A boolean parameter (form posts send "true"/"false")."""
    value = params.get(name, False)
    return value if isinstance(value, bool) else str(value).lower() in ("true", "1")


@bot_method("setWebhook")
async def set_webhook(state: PlaygroundState, params: JSON) -> bool:
    """POST new updates to ``url`` from now on (an empty url removes the webhook, as on Telegram).

    Unlike Telegram, plain http and any port are accepted: the bot under test listens on loopback.
    """
    url = str(params.get("url") or "")
    if not url:
        return await delete_webhook(state, params)
    if not url.startswith(("http://", "https://")):
        raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
    secret = params.get("secret_token")
    if secret is not None and not SECRET_TOKEN.fullmatch(str(secret)):
        raise bad_request("secret token contains unallowed characters")
    allowed = params.get("allowed_updates")
    if allowed is not None and not (isinstance(allowed, list) and all(isinstance(a, str) for a in allowed)):
        raise bad_request("can't parse allowed updates JSON object")
    max_connections = int_param(params, "max_connections", 40)
    if not 1 <= max_connections <= 100:
        raise bad_request("invalid max_connections specified")
    async with state.changed:
        if bool_param(params, "drop_pending_updates"):
            state.updates = [u for u in state.updates if u["update_id"] in state.delivering]
        state.webhook = Webhook(url, str(secret) if secret is not None else None, allowed or None, max_connections)
        state.changed.notify_all()  # wakes a waiting getUpdates (409) and the delivery loop
    return True


@bot_method("deleteWebhook")
async def delete_webhook(state: PlaygroundState, params: JSON) -> bool:
    """Stop POSTing updates; they wait for getUpdates again."""
    async with state.changed:
        if bool_param(params, "drop_pending_updates"):
            state.updates = [u for u in state.updates if u["update_id"] in state.delivering]
        state.webhook = None
        state.changed.notify_all()
    return True


@bot_method("getWebhookInfo")
async def get_webhook_info(state: PlaygroundState, params: JSON) -> JSON:
    """The webhook (url "" when none is set) and how many updates wait."""
    info = state.webhook.info() if state.webhook is not None else {"url": "", "has_custom_certificate": False}
    return {**info, "pending_update_count": len(state.updates)}


@bot_method("setMyCommands")
async def set_my_commands(state: PlaygroundState, params: JSON) -> bool:
    """Remember the command list (the web page shows it)."""
    commands = params.get("commands")
    if not isinstance(commands, list) or not all(isinstance(c, dict) and c.get("command") for c in commands):
        raise bad_request("can't parse commands JSON object")
    state.commands = commands
    return True


@bot_method("getMyCommands")
async def get_my_commands(state: PlaygroundState, params: JSON) -> list[JSON]:
    """The remembered command list."""
    return state.commands


@bot_method("getUpdates")
async def get_updates(state: PlaygroundState, params: JSON) -> list[JSON]:
    """Long polling with offsets: confirm older updates, wait up to ``timeout`` for new ones.

    A newer getUpdates call ends a waiting one with 409, as Telegram does; so does a webhook
    (set before the call or while it waits).
    """
    if state.webhook is not None:
        raise BotApiError(409, WEBHOOK_CONFLICT)
    offset = int_param(params, "offset", 0)
    limit = max(1, min(100, int_param(params, "limit", 100)))
    timeout = max(0, min(MAX_POLL_TIMEOUT, int_param(params, "timeout", 0)))
    async with state.changed:
        state.poll_generation += 1
        mine = state.poll_generation
        state.changed.notify_all()
        if offset > 0:
            state.updates = [u for u in state.updates if u["update_id"] >= offset]
        elif offset < 0:
            state.updates = state.updates[offset:]

        def ready() -> bool:
            return bool(state.updates) or state.poll_generation != mine or state.webhook is not None

        try:
            await asyncio.wait_for(state.changed.wait_for(ready), timeout)
        except TimeoutError:
            pass
        if state.webhook is not None:
            raise BotApiError(409, WEBHOOK_CONFLICT)
        if state.poll_generation != mine:
            raise BotApiError(409, "Conflict: terminated by other getUpdates request; make sure that "
                              "only one bot instance is running")
        return state.updates[:limit]


@bot_method("sendMessage")
async def send_message(state: PlaygroundState, params: JSON) -> JSON:
    """A text message from the bot."""
    return await new_bot_message(state, params, text=check_text(params.get("text")))


@bot_method("sendPhoto")
async def send_photo(state: PlaygroundState, params: JSON) -> JSON:
    """A photo from the bot (an uploaded file or an existing file id)."""
    photo = params.get("photo")
    if isinstance(photo, str) and photo in state.files:
        stored = state.files[photo]
    elif isinstance(photo, bytes):
        stored = state.add_file(photo, folder="photos", suffix=".jpg", mime_type="image/jpeg")
    else:
        raise bad_request("there is no photo in the request")
    size = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
            "width": 0, "height": 0, "file_size": len(stored.data)}
    content: JSON = {"photo": [size]}
    if params.get("caption"):
        content["caption"] = params["caption"]
    return await new_bot_message(state, params, **content)


@bot_method("sendChatAction")
async def send_chat_action(state: PlaygroundState, params: JSON) -> bool:
    """"typing…" and friends: shown on the page, never stored as a message."""
    chat = state.chat(params.get("chat_id"))
    action = params.get("action")
    if not action:
        raise bad_request("wrong parameter action in request")
    await state.push_event(chat["id"], "chat_action", action=action)
    return True


async def edit_message(state: PlaygroundState, params: JSON, changes: JSON) -> JSON:
    """Apply an edit to one of the bot's messages, with Telegram's checks."""
    chat = state.chat(params.get("chat_id"))
    message = state.get_message(chat["id"], params.get("message_id"))
    if message["from"].get("id") != state.bot_user["id"]:
        raise bad_request("message can't be edited")
    edited = {**message, **changes}
    if not edited.get("reply_markup"):
        edited.pop("reply_markup", None)
    if edited == message:
        raise bad_request("message is not modified: specified new message content and reply markup "
                          "are exactly the same as a current content and reply markup of the message")
    edited["edit_date"] = int(time.time())
    state.store_message(edited)
    await state.push_event(chat["id"], "edit", message=edited)
    return edited


@bot_method("editMessageText")
async def edit_message_text(state: PlaygroundState, params: JSON) -> JSON:
    """Replace a message's text (and its keyboard, which goes when not given)."""
    changes = {"text": check_text(params.get("text")), "reply_markup": check_markup(params.get("reply_markup"))}
    return await edit_message(state, params, changes)


@bot_method("editMessageReplyMarkup")
async def edit_message_reply_markup(state: PlaygroundState, params: JSON) -> JSON:
    """Replace or remove a message's keyboard."""
    return await edit_message(state, params, {"reply_markup": check_markup(params.get("reply_markup"))})


@bot_method("answerCallbackQuery")
async def answer_callback_query(state: PlaygroundState, params: JSON) -> bool:
    """Answer a button press once: a toast or an alert on the user's side."""
    query_id = str(params.get("callback_query_id", ""))
    pending = state.callbacks.get(query_id)
    if pending is None or pending.get("answered"):
        raise bad_request("query is too old and response timeout expired or query ID is invalid")
    pending.update(answered=True, text=params.get("text"), show_alert=str(params.get("show_alert")).lower() == "true")
    await state.push_event(pending["chat_id"], "callback_answer", callback_query_id=query_id,
                           text=pending["text"], show_alert=pending["show_alert"])
    return True


@bot_method("getFile")
async def get_file(state: PlaygroundState, params: JSON) -> JSON:
    """Describe a file for download; Telegram refuses files over 20 MB here."""
    stored = state.files.get(str(params.get("file_id", "")))
    if stored is None:
        raise bad_request("invalid file_id")
    if len(stored.data) > state.max_download_bytes:
        raise bad_request("file is too big")
    return {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data), "file_path": stored.file_path}


def method_of(name: str) -> Method:
    """The registered method, or Telegram's 404 for a name it does not know."""
    method = METHODS.get(name.lower())
    if method is None:
        raise BotApiError(404, "Not Found")
    return method


async def call_method(state: PlaygroundState, name: str, raw: dict[str, Any]) -> Any:
    """Run one Bot API call. Injected failures (floods, faults) are the HTTP layer's: ``server.bot_api``."""
    return await method_of(name)(state, decode_params(raw))
