"""Scheduled work of the learning loop, run by ``sneakerbot worker``.

``scheduler`` builds the APScheduler instance (job store in the bot's own database,
explicit job ids, ``max_instances=1``, ``coalesce=True``) and the ``Worker`` that runs
it; ``retrain`` and ``scrape`` hold the jobs, plain module-level functions that build
their context from the environment and return early when there is nothing to do.
"""
