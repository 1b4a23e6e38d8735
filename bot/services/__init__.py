"""The bot's services: plain synchronous classes, called from handlers off the event loop."""
