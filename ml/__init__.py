"""sneakerbot's ML core: no Telegram, no database.

Backbones by name (``ml.backbones``), images and datasets (``ml.images``, ``ml.data``),
training (``ml.train``), model directories (``ml.artifacts``), inference (``ml.predictor``),
the footwear check (``ml.footwear``) and the user-label memory (``ml.memory``).
"""
