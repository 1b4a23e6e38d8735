"""A bot process serves its model without torch.

The bot runs the model on ONNX Runtime: importing torch only to leave it unused cost every
bot process about 600 MB of memory and seconds of start-up. A fresh interpreter imports
``bot.app`` (all a bot process imports), loads a model directory the way the bot serves it
(``bot.services.models.open_predictor``) and answers a photo; torch must never be imported.
The graph is ready as in a deployment: built into the ONNX cache beforehand (the starter
model, whose gated graph is never shipped) or shipped as ``model.onnx`` (the tiny model).
Only building a missing graph needs torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import STARTER_MODEL_DIR

from loop_support import COLOURS, photo, shared_model

ROOT = Path(__file__).resolve().parents[1]

SERVE = """
import json, sys

import bot.app  # noqa: F401 - everything a bot process imports
from bot.services.models import open_predictor
from ml.images import open_image

predictor = open_predictor(sys.argv[1])
prediction = predictor.predict([open_image(sys.argv[2])], k=3)[0]
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "torchvision"))
print(json.dumps({"answer": prediction.to_dict(), "torch_modules": loaded[:5]}))
"""


def serve_in_fresh_process(model_dir: Path, image: Path, cache_home: Path) -> dict:
    """What a fresh bot interpreter answers for ``image`` and which torch modules it imported."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SERVE, str(model_dir), str(image)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = shared_model(tmp_path_factory)
    meta = json.loads((model_dir / "model.json").read_text())
    assert (model_dir / meta["files"]["onnx"]).is_file(), "the tiny model ships its model.onnx"
    return model_dir


@pytest.mark.parametrize("which", ["starter", "tiny"])
def test_serving_a_built_graph_never_imports_torch(which: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from ml.predictor import Predictor

    model_dir = STARTER_MODEL_DIR if which == "starter" else request.getfixturevalue("tiny_model")
    image = tmp_path / "photo.jpg"
    image.write_bytes(photo(COLOURS["air_jordan_1"], seed=7, size=240))
    cache_home = tmp_path / "xdg-cache"
    cache = cache_home / "sneakerbot" / "onnx"  # the bot's default cache (``default_cache_dir``) in the child
    # the parent (torch imported) builds what is missing, and gives the expected answer
    expected = Predictor.load(model_dir, cache_dir=cache, threads=1).predict([image], k=3)[0].to_dict()
    built = sorted(p.name for p in cache.glob("*.onnx")) if cache.is_dir() else []
    assert bool(built) == (which == "starter"), built  # the tiny model runs its shipped model.onnx

    served = serve_in_fresh_process(model_dir, image, cache_home)
    assert served["torch_modules"] == [], f"serving imported {served['torch_modules']}"
    assert served["answer"] == expected
    assert sorted(p.name for p in cache.glob("*.onnx")) == built  # nothing was rebuilt
