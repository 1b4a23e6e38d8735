"""The playground: a local Telegram Bot API server over HTTP plus a web chat page.

The bot talks to it through python-telegram-bot's ``base_url``/``base_file_url`` exactly
as it talks to Telegram; people (the web page) and tests talk to its user-side API.
"""

from bot.playground.server import PlaygroundServer

__all__ = ["PlaygroundServer"]
