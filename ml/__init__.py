"""sneakerbot's ML core: no Telegram, no database.

Backbones by name (``ml.backbones``), images and datasets (``ml.images``, ``ml.data``),
training (``ml.train``), model directories (``ml.artifacts``), inference (``ml.predictor``),
the footwear check (``ml.footwear``) and the user-label memory (``ml.memory``).

Serving needs no torch: ``ml.predictor`` on ONNX Runtime reads model.json (``ml.model_json``),
preprocesses in PIL and NumPy (``ml.preprocessing``) and runs the graph (``ml.onnx_runtime``);
torch is imported only to train, to run the torch backend or to build a missing ONNX graph.
"""
