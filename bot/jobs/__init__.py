"""Scheduled work of the learning loop, run by ``sneakerbot worker``.

``scheduler`` builds APScheduler's stock ``BackgroundScheduler`` (periodic jobs stored in the
bot's own database, explicit job ids, ``max_instances=1``, ``coalesce=True``) and the
``Worker`` that runs it; ``retrain`` and ``scrape`` hold the jobs, plain module-level
functions that build their context from the environment (``context``) and return early when
there is nothing to do. Admins' requests reach them as ``admin_requests`` rows; what they
report goes to the notifications outbox as values, which the bot words and sends.
"""
