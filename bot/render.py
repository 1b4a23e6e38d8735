"""Every text and keyboard the bot shows, and the short callback data behind its buttons.

Button data is ``<action>:<prediction id>[:<argument>]``, at most 64 bytes; everything else
is looked up on the server from the prediction id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote_plus

from telegram import BotCommand, InlineKeyboardButton, InlineKeyboardMarkup

from bot.services.identify import Guess, IdentifyResult
from bot.services.models import ClassInfoLike
from ml.verdicts import Detail, Verdict

PAGE_SIZE = 8
MAX_CALLBACK_BYTES = 64
MAX_ID = 2**63 - 1  # the largest id a database column holds (SQLite raises OverflowError above it)

COMMANDS = [
    BotCommand("start", "What this bot does"),
    BotCommand("help", "How to use it and what is kept"),
]


# --- callback data -------------------------------------------------------------
class Action(StrEnum):
    """The button actions (one letter each, to keep data short); members are the letters themselves."""

    CORRECT = "c"
    WRONG = "w"  # ❌ Wrong, "Change answer", and "It is one of yours" under an unknown-sneaker answer
    SNEAKER = "s"  # "It is a sneaker" under a not-a-sneaker answer
    PAGE = "p"
    LABEL = "l"
    NOT_LISTED = "n"  # "Not listed" in the list, and "Tell me its name" under an unknown-sneaker answer
    NOOP = "x"  # the page counter


ACTIONS = frozenset(Action)


@dataclass(frozen=True)
class Callback:
    """Parsed button data."""

    action: Action
    prediction_id: int
    arg: str | None = None


def encode(action: Action, prediction_id: int, arg: str | int | None = None) -> str:
    """Button data for an action on a prediction."""
    data = f"{action}:{prediction_id}" if arg is None else f"{action}:{prediction_id}:{arg}"
    if len(data.encode()) > MAX_CALLBACK_BYTES:
        raise ValueError(f"callback data too long: {data!r}")
    return data


def parse(data: str | None) -> Callback | None:
    """Button data back to a ``Callback``; None for anything we did not make.

    Only what ``encode`` writes parses: ids (1 to ``MAX_ID``) and page numbers in plain ASCII
    decimal without leading zeros (``str.isdigit`` also accepts "²" and "١"), an argument only
    on the actions that carry one, so a parsed value always encodes back to the same data.
    """
    if not isinstance(data, str) or not data or len(data.encode()) > MAX_CALLBACK_BYTES:
        return None
    action, _, rest = data.partition(":")
    pid, has_arg, arg = rest.partition(":")
    if action not in ACTIONS or not _is_decimal(pid) or not 0 < int(pid) <= MAX_ID:
        return None
    if action == Action.PAGE:
        valid = bool(has_arg) and _is_decimal(arg)
    elif action == Action.LABEL:
        valid = bool(arg)
    else:
        valid = not has_arg
    return Callback(Action(action), int(pid), arg or None) if valid else None


def _is_decimal(text: str) -> bool:
    """A non-negative integer as ``str(int)`` writes it: ASCII digits, no sign, no leading zero."""
    return text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0"))


def label_arg(label: str, prediction_id: int) -> str:
    """The label itself when it fits in the data, else ``#`` and a hash prefix of it."""
    if len(f"{Action.LABEL}:{prediction_id}:{label}".encode()) <= MAX_CALLBACK_BYTES:
        return label
    return "#" + hashlib.sha1(label.encode()).hexdigest()[:12]


def resolve_label(arg: str | None, classes: Sequence[ClassInfoLike]) -> str | None:
    """The label a button argument names, if the model knows it."""
    if not arg:
        return None
    for info in classes:
        if arg == info.label or arg == "#" + hashlib.sha1(info.label.encode()).hexdigest()[:12]:
            return info.label
    return None


# --- texts --------------------------------------------------------------------
def start_text(retention_days: int) -> str:
    """/start: what the bot does, how to use it, what is kept."""
    return (
        "👟 Hi! I recognise sneaker models in photos.\n\n"
        "Send me a photo of a sneaker — as a photo or as an image file (JPEG, PNG, WebP, HEIC) — "
        "and I'll answer with my top 3 guesses. Tap ✅ Correct or ❌ Wrong under the answer: "
        "your corrections teach me.\n\n"
        + privacy_text(retention_days)
        + "\n\n/help shows this again."
    )


def help_text(retention_days: int, max_mb: int, per_minute: int) -> str:
    """/help: the longer version."""
    return (
        "How to use me:\n"
        "• Send a clear photo of one sneaker, side view, in good light.\n"
        "• Albums work too: I answer every photo in it, each one as a reply to its photo.\n"
        f"• Files up to {max_mb} MB, up to {per_minute} photos a minute.\n"
        "• ✅ Correct confirms my first guess; ❌ Wrong lets you pick the right model or type its name.\n"
        "• A sneaker I don't know yet: I say so, and you can tell me its name for the admins.\n"
        "• You can change your answer later; the last one counts.\n\n"
    ) + privacy_text(retention_days)


def privacy_text(retention_days: int) -> str:
    """What is kept, said the same way in /start and /help."""
    return (
        f"🔒 What I keep: your photo for {retention_days} days so you can answer, then it is deleted. "
        "A photo you confirm or correct is kept as training data. I store your Telegram user id "
        "and my answers, nothing else about you."
    )


def percent(score: float) -> str:
    """A confidence as people read it."""
    value = round(score * 100)
    return "<1%" if value < 1 else f"{value}%"


def guesses_text(guesses: Sequence[Guess]) -> str:
    """One numbered line per guess: "1. Air Jordan 11 — 87%"."""
    return "\n".join(f"{i}. {g.display_name} — {percent(g.score)}" for i, g in enumerate(guesses, 1))


VERDICT_HEADERS: dict[str, str] = {
    Verdict.SNEAKER: "👟 That looks like:",
    Verdict.UNSURE: "🤔 I'm not sure about this one. My best guesses:",
}
NOT_SNEAKER_TEXT = (
    "🙈 This doesn't look like a sneaker to me. Please try a clearer photo: one shoe, "
    "side view, good light.\n\nIf it is a sneaker, tap below and tell me which one."
)
OTHER_FOOTWEAR_TEXT = (
    "👞 That's a shoe, but not a sneaker as far as I can tell, and I only know sneakers.\n\n"
    "If it is a sneaker, tap below and tell me which one."
)
UNKNOWN_SNEAKER_HEADER = "🆕 That's a sneaker, but not a model I know yet."
CLOSEST_HEADER = "The closest models I know (not a match):"
UNKNOWN_SNEAKER_ASK = (
    "Do you know which model it is? Tell me its name and I'll pass it on to the admins. "
    "If it is one of the models I know, pick it from my list."
)


def answer_text(result: IdentifyResult) -> str:
    """The reply to a photo."""
    if result.verdict == Verdict.NOT_SNEAKER:
        return OTHER_FOOTWEAR_TEXT if result.detail == Detail.OTHER_FOOTWEAR else NOT_SNEAKER_TEXT
    if result.verdict == Verdict.UNKNOWN_SNEAKER:
        return unknown_sneaker_text(result.guesses)
    header = VERDICT_HEADERS.get(result.verdict, VERDICT_HEADERS[Verdict.UNSURE])
    return f"{header}\n{guesses_text(result.guesses)}\n\nIs the first one right?"


def unknown_sneaker_text(closest: Sequence[Guess]) -> str:
    """A sneaker the model does not know: say so, and name the nearest known models as that, not as an answer.

    Their scores are left out on purpose: "Air Jordan 5 — 41%" reads as a guess.
    """
    lines = [UNKNOWN_SNEAKER_HEADER]
    if closest:
        lines += ["", CLOSEST_HEADER, *(f"• {guess.display_name}" for guess in closest)]
    return "\n".join([*lines, "", UNKNOWN_SNEAKER_ASK])


def search_url(template: str, display_name: str) -> str:
    """Where to find (and buy) the top guess."""
    return template.format(query=quote_plus(display_name))


def answer_keyboard(result: IdentifyResult, search_template: str) -> InlineKeyboardMarkup:
    """Correct/Wrong and a search link; "It is a sneaker" for a not-a-sneaker answer; for a sneaker the
    model does not know, its name (the "Not listed" flow) or a pick from the known models (the Wrong flow)."""
    pid = result.prediction_id
    if result.verdict == Verdict.NOT_SNEAKER:
        sneaker = InlineKeyboardButton("👟 It is a sneaker", callback_data=encode(Action.SNEAKER, pid))
        return InlineKeyboardMarkup([[sneaker]])
    if result.verdict == Verdict.UNKNOWN_SNEAKER:
        name = InlineKeyboardButton("✍️ Tell me its name", callback_data=encode(Action.NOT_LISTED, pid))
        known = InlineKeyboardButton("📋 It is one of yours", callback_data=encode(Action.WRONG, pid))
        return InlineKeyboardMarkup([[name], [known]])
    rows = [[InlineKeyboardButton("✅ Correct", callback_data=encode(Action.CORRECT, pid)),
             InlineKeyboardButton("❌ Wrong", callback_data=encode(Action.WRONG, pid))]]
    if result.guesses:
        top = result.guesses[0].display_name
        rows.append([InlineKeyboardButton(f"🔎 Find {top}", url=search_url(search_template, top))])
    return InlineKeyboardMarkup(rows)


CORRECTION_TEXT = "Which sneaker is it? Pick the model below, or “Not listed” if it isn't there."


def page_count(classes: Sequence[ClassInfoLike]) -> int:
    """Pages of the correction keyboard."""
    return max(1, -(-len(classes) // PAGE_SIZE))


def correction_keyboard(prediction_id: int, classes: Sequence[ClassInfoLike], page: int) -> InlineKeyboardMarkup:
    """All known models, 8 per page in two columns, ◀ n/m ▶, then "Not listed"."""
    pages = page_count(classes)
    page = min(max(page, 0), pages - 1)
    chunk = classes[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
    buttons = [InlineKeyboardButton(c.display_name, callback_data=encode(Action.LABEL, prediction_id,
                                                                         label_arg(c.label, prediction_id)))
               for c in chunk]
    rows = [buttons[i:i + 2] for i in range(0, len(buttons), 2)]
    if pages > 1:
        nav = [InlineKeyboardButton(f"{page + 1}/{pages}", callback_data=encode(Action.NOOP, prediction_id))]
        if page > 0:
            nav.insert(0, InlineKeyboardButton("◀", callback_data=encode(Action.PAGE, prediction_id, page - 1)))
        if page < pages - 1:
            nav.append(InlineKeyboardButton("▶", callback_data=encode(Action.PAGE, prediction_id, page + 1)))
        rows.append(nav)
    rows.append([InlineKeyboardButton("🤷 Not listed", callback_data=encode(Action.NOT_LISTED, prediction_id))])
    return InlineKeyboardMarkup(rows)


def change_keyboard(prediction_id: int) -> InlineKeyboardMarkup:
    """The one button left after an answer: change it."""
    change = InlineKeyboardButton("✏️ Change answer", callback_data=encode(Action.WRONG, prediction_id))
    return InlineKeyboardMarkup([[change]])


def thanks_text(display_name: str, confirmed: bool) -> str:
    """After ✅ Correct or a pick from the list."""
    if confirmed:
        return f"✅ Thanks! Confirmed: {display_name}. That helps me learn."
    return f"✅ Thanks! Noted: it is {display_name}. I'll learn from it."


ASK_NAME_TEXT = (
    "✍️ Which model is it? Type its name in your next message (for example “Air Jordan 40”) "
    "and I'll pass it on to the admins."
)


def suggestion_thanks(text: str) -> str:
    """After the user typed a name under "Not listed"."""
    return f"🙏 Thanks! I passed “{text}” on to the admins as a suggestion."


ALERTS = {
    "unknown": "This button doesn't work any more. Send the photo again?",
    "not_yours": "That answer belongs to someone else's photo.",
    "expired": "That photo has expired and was deleted. Send it again to answer.",
    "unknown_label": "I don't know that model any more. Please pick again.",
}

# The database stayed away longer than SNEAKERBOT_DB_RETRY_SECONDS: nothing was stored (bot.store.retry).
DB_UNAVAILABLE_TEXT = "⏳ I can't reach my database just now, so I couldn't save that. Please try again in a moment."

REJECTIONS = {
    "db_unavailable": DB_UNAVAILABLE_TEXT,
    "not_an_image": "That file isn't an image I can read. Send a JPEG, PNG, WebP or HEIC photo.",
    "corrupt": "I couldn't read that image — it seems damaged. Try another photo.",
    "too_small": "That image is too small for me to see anything. Send a bigger photo.",
    "too_many_pixels": "That image has too many pixels for me. Send a smaller photo.",
}


def rejection_text(reason: str) -> str:
    """Why a photo could not be used."""
    return REJECTIONS.get(reason, REJECTIONS["corrupt"])


def too_large_text(max_bytes: int) -> str:
    """A file over the download limit."""
    return f"That file is larger than {max_bytes // (1024 * 1024)} MB, the most I can download. Send a smaller photo."


def rate_limited_text(per_minute: int) -> str:
    """The friendly rate-limit reply."""
    return f"⏳ Slow down a little: I take up to {per_minute} photos a minute. Try again in a moment."


OTHER_TEXT = "I only understand photos of sneakers 📷. Send me one, as a photo or an image file. /help says more."
NOT_IMAGE_FILE_TEXT = "That file isn't an image. Send a photo of a sneaker (JPEG, PNG, WebP or HEIC)."
UNKNOWN_COMMAND_TEXT = "I don't know that command. Try /help."
ERROR_TEXT = "Sorry, something went wrong on my side. Please try again."
