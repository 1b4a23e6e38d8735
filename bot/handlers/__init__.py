"""Thin Telegram handlers: read the update, call a service off the loop, send what ``bot.render`` makes."""
