"""Growing the catalogue, timed and measured: take one Air Jordan class out of the starter, add it back.

1. A model without the class: the starter's head, centroids and carried features minus that
   class (the backbone stays: it saw the class while it was fine-tuned, so this measures the
   head-retrain loop, not learning a look the backbone never met).
2. A fresh install of it, run as users run it: ``sneakerbot run --playground`` (the local Bot
   API server, the bot, and the worker as its child) from an empty working directory, with a
   local Bing-like server serving the class's train and val photos of the dataset. Its test
   photos are held back.
3. An admin sends ``/addclass``; the worker scrapes and retrains; the bench waits for the
   admin's "promoted" or "not promoted" message.

Prints the minutes from ``/addclass`` to the verdict (first a cold run, then one with the
data dir's cache warm: features graph, embeddings, ONNX builds), the class's top-1 on its own
test photos through the served model (target >= 80 %), and the other classes' top-1 on
their carried test photos before and after (target: a drop of at most 1 point).

    .venv/bin/python -m bench.addclass [--label air_jordan_11] [--runs 2] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import torch

from bench.machine import machine_line
from bench.scrape_speed import bing_page

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "datasets" / "air-jordan"
STARTER = REPO / "models" / "starter"
ADMIN = 4242
WAIT_S = 1800


def without_class(model_dir: Path, label: str, out: Path) -> Path:
    """A copy of ``model_dir`` whose head, centroids and carried features no longer know ``label``.

    The head keeps its open-set outputs (``ml.verdicts.OPEN_SET_OUTPUTS``, the rows after the
    classes in a model trained with ``--negatives``) and the carried negatives, which are no class.
    A shipped ``model.onnx`` holds the old head: it is dropped, the graph is built on first load.
    """
    from ml import artifacts
    from ml.carried import Carried

    shutil.copytree(model_dir, out)
    meta = artifacts.read_model_json(out)
    keep = [i for i, c in enumerate(meta["classes"]) if c["label"] != label]
    rows = [i for i, name in enumerate(artifacts.head_outputs(meta)) if name != label]  # classes, then open rows
    state = torch.load(out / "head.pt", map_location="cpu", weights_only=False)
    state["head"] = {name: value[rows] for name, value in state["head"].items()}
    state["n_classes"] = len(rows)
    if state.get("footwear_method") == "centroid":  # a footwear score from the class centroids
        state["footwear"] = {**state["footwear"], "centroids": state["footwear"]["centroids"][keep]}
    torch.save(state, out / "head.pt")
    np.save(out / "centroids.npy", np.load(out / "centroids.npy")[keep])
    carried = Carried.load(out, meta)
    assert carried is not None
    mask = (carried.frame["label"] != label).to_numpy()
    Carried(carried.frame[mask].reset_index(drop=True), carried.feats[mask]).save(out)
    meta["classes"] = [meta["classes"][i] for i in keep]
    if meta.get("files", {}).get("onnx"):
        (out / meta["files"]["onnx"]).unlink(missing_ok=True)
        meta["files"]["onnx"] = None
    artifacts.write_model_json(out, meta)
    return out


def photo_server(files: list[Path]) -> tuple[ThreadingHTTPServer, str]:
    """A Bing-like results page listing ``files``, and the files themselves."""
    routes = {f"/img/{i}.jpg": path.read_bytes() for i, path in enumerate(files)}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/search"):
                body, kind = bing_page([f"{base}{p}" for p in routes]), "text/html"
            else:
                body, kind = routes.get(self.path, b""), "image/jpeg"
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, base


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_loop(model: Path, label: str, bing: str, work: Path, cache_from: Path | None) -> tuple[float, str, Path]:
    """One install from scratch in ``work``: ``/addclass`` until the verdict; (seconds, message, data dir)."""
    data_dir = work / "var"
    data_dir.mkdir(parents=True)
    if cache_from is not None:
        shutil.copytree(cache_from, data_dir / "cache")
    port = free_port()
    env = {**os.environ, "SNEAKERBOT_DATA_DIR": str(data_dir), "SNEAKERBOT_STARTER_MODEL_DIR": str(model),
           "SNEAKERBOT_ADMIN_IDS": str(ADMIN), "SNEAKERBOT_PLAYGROUND_PORT": str(port),
           "SNEAKERBOT_BING_URL": f"{bing}/search", "SNEAKERBOT_SCRAPER_SOURCES": '["bing"]',
           "SNEAKERBOT_SCRAPER_ALLOW_PRIVATE": "true", "SNEAKERBOT_SCRAPER_HOST_DELAY_S": "0",
           "SNEAKERBOT_RETRAIN_CHECK_SECONDS": "2", "XDG_CACHE_HOME": str(data_dir / "cache")}
    env.pop("TELEGRAM_BOT_TOKEN", None)
    env.pop("SNEAKERBOT_BASE_DATASET_DIR", None)
    log = (work / "bot.log").open("w")
    bot = subprocess.Popen([sys.executable, "-m", "bot", "run", "--playground"], cwd=work, env=env,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return (*admin_adds(f"http://127.0.0.1:{port}", label, bot), data_dir)
    finally:
        os.killpg(bot.pid, signal.SIGTERM)
        bot.wait(timeout=120)
        log.close()


def admin_adds(url: str, label: str, bot: subprocess.Popen) -> tuple[float, str]:
    """Send ``/addclass`` as the admin; print each message the bot sends back until the verdict."""
    chat = f"{url}/playground/api/chats/{ADMIN}"
    with httpx.Client(timeout=60) as client:
        wait_ready(client, url, bot)
        name = label.replace("_", " ").title()
        started = time.monotonic()
        client.post(f"{chat}/messages", json={"text": f"/addclass {label} {name}"})
        cursor = 0
        while time.monotonic() - started < WAIT_S:
            events = client.get(f"{chat}/events", params={"after": cursor, "timeout": 20}).json()["result"]
            cursor = events["last"]
            for event in events["events"]:
                text = (event.get("message") or {}).get("text", "")
                if event.get("type") != "message" or not text or not event["message"]["from"].get("is_bot"):
                    continue
                print(f"  {time.monotonic() - started:6.1f} s  {text.splitlines()[0]}", flush=True)
                if text.startswith(("✅", "❌", "Retrain")):
                    return time.monotonic() - started, text
    raise TimeoutError(f"no verdict within {WAIT_S} s")


def wait_ready(client: httpx.Client, url: str, bot: subprocess.Popen) -> None:
    """Until the playground answers and the bot has its model (a /status reply)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert bot.poll() is None, "the bot exited"
        try:
            client.get(f"{url}/playground/api/info")
            break
        except httpx.HTTPError:
            time.sleep(0.5)
    chat = f"{url}/playground/api/chats/{ADMIN}"
    client.post(f"{chat}/messages", json={"text": "/status"})
    events = client.get(f"{chat}/events", params={"after": 0, "timeout": 120}).json()["result"]
    assert any(e.get("type") == "message" for e in events["events"]), "the bot does not answer"


def measure(before: Path, after: Path, label: str, test_files: list[Path]) -> dict[str, float]:
    """The class's top-1 on its test photos (served model) and the other classes' top-1 before and after."""
    from ml.predictor import Predictor
    from ml.retrain import score_rows

    def others_top1(model_dir: Path) -> float:
        from ml import artifacts
        from ml.carried import Carried

        carried = Carried.load(model_dir, artifacts.read_model_json(model_dir))
        assert carried is not None
        rows = carried.select(split="test", view="center").frame
        rows = rows[rows["label"] != label].assign(path="")
        probs, classes = score_rows(model_dir, rows, Path(tempfile.gettempdir()))
        return float((np.array(classes)[probs.argmax(1)] == rows["label"].to_numpy()).mean())

    predictor = Predictor.load(after, cache_dir=Path(tempfile.gettempdir()) / "sneakerbot-bench-onnx")
    answers = predictor.predict([str(p) for p in test_files], k=1)
    return {"class_top1": float(np.mean([a.best.label == label for a in answers])), "class_n": len(test_files),
            "others_before": others_top1(before), "others_after": others_top1(after)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="air_jordan_11")
    parser.add_argument("--runs", type=int, default=2, help="1: cold only; 2: cold, then with the cache warm")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    print(machine_line())
    if not args.data.is_dir():
        print(f"skipped: the dataset {args.data} is not on this machine")
        return 0
    from ml.retrain import dataset_frame

    frame = dataset_frame(STARTER, args.data)
    mine = frame[frame["label"] == args.label]
    served = [Path(p) for p in mine.loc[mine["split"] != "test", "path"]]
    test_files = [Path(p) for p in mine.loc[mine["split"] == "test", "path"]]
    with tempfile.TemporaryDirectory(prefix="bench-addclass-") as tmp:
        model = without_class(STARTER, args.label, Path(tmp) / "without")
        server, bing = photo_server(served)
        print(f"{args.label}: {len(served)} train+val photos served by the local search engine, "
              f"{len(test_files)} test photos held back; the model starts with "
              f"{len(json.loads((model / 'model.json').read_text())['classes'])} classes")
        cache = None
        for run in range(args.runs):
            kind = "cold" if cache is None else "warm cache"
            print(f"run {run + 1} ({kind}):")
            seconds, verdict, data_dir = run_loop(model, args.label, bing, Path(tmp) / f"run{run}", cache)
            promoted = data_dir / "models" / "2"
            figures = measure(model, promoted, args.label, test_files) if verdict.startswith("✅") else {}
            print(f"  /addclass to verdict: {seconds / 60:.1f} min (target <= {10 if cache is None else 3})")
            if figures:
                print(f"  {args.label} top-1 on its {figures['class_n']} test photos: {figures['class_top1']:.1%} "
                      f"(target >= 80 %)")
                print(f"  the other classes' top-1: {figures['others_before']:.1%} -> {figures['others_after']:.1%} "
                      f"(target: a drop of at most 1 point)")
            else:
                print(f"  not promoted: {verdict}")
            cache = data_dir / "cache"
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
