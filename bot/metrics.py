"""The bot's Prometheus metrics: one ``BotMetrics`` per runtime, on its own ``CollectorRegistry``.

Each runtime has its own registry (never prometheus-client's global one), so several bots can
run in one process (the tests do). Handlers reach it through ``metrics_of(context)``, which
gives a do-nothing stand-in when the Application was built without one.

- ``sneakerbot_updates_total{kind}``: updates received, by kind (photo, document, callback,
  command, other), counted by a ``TypeHandler`` in group -1 before any other handler;
- ``sneakerbot_photo_reply_seconds``: from the photo handler starting to its answer being sent;
- ``sneakerbot_predictions_total{verdict}``: predictions made, by ``ml.verdicts.Verdict`` (sneaker,
  unsure, not_sneaker, unknown_sneaker);
- ``sneakerbot_prediction_details_total{detail}``: of those, the ones with an ``ml.verdicts.Detail``
  (other_footwear: a not_sneaker that is a shoe, not a sneaker);
- ``sneakerbot_feedback_total{kind}``: feedback stored, by button (correct, wrong, sneaker,
  label, not_listed);
- ``sneakerbot_model_version``: the model version served now (read at scrape time; 0 when the
  served model is not in the registry);
- ``sneakerbot_build_info{version, python, ptb}``: always 1.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from telegram import Update

from ml.verdicts import VERDICTS, Detail

METRICS_KEY = "metrics"  # where the Application's ``bot_data`` keeps the runtime's metrics
UPDATE_KINDS = ("photo", "document", "callback", "command", "other")
# Button actions (``bot.render.Action``) that store feedback, by the name the metric uses;
# paging and the page counter are not feedback.
FEEDBACK_KINDS = {"c": "correct", "w": "wrong", "s": "sneaker", "l": "label", "n": "not_listed"}
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServedVersion(Protocol):
    """What the model-version gauge reads (``bot.services.models.ModelHolder`` is one)."""

    def current(self) -> Any: ...


def update_kind(update: object) -> str:
    """The kind an update is counted under."""
    if not isinstance(update, Update):
        return "other"
    if update.callback_query is not None:
        return "callback"
    message = update.message
    if message is None:
        return "other"  # edited messages, channel posts, ...: not answered
    if message.photo:
        return "photo"
    if message.document is not None:
        return "document"
    if message.text and message.text.startswith("/") and any(e.type == "bot_command" and e.offset == 0
                                                             for e in message.entities):
        return "command"
    return "other"


def build_version() -> str:
    """The installed sneakerbot version, or "unknown" when run from a bare checkout."""
    try:
        return importlib.metadata.version("sneakerbot")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class BotMetrics:
    """The metrics of one bot runtime."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.updates = Counter("sneakerbot_updates", "Updates received, by kind", ["kind"], registry=self.registry)
        self.photo_latency = Histogram("sneakerbot_photo_reply_seconds", "From a photo's handler starting to its "
                                       "answer being sent", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter("sneakerbot_predictions", "Predictions made, by verdict", ["verdict"],
                                   registry=self.registry)
        self.prediction_details = Counter("sneakerbot_prediction_details", "Predictions with a detail "
                                          "(why the verdict was given), by detail", ["detail"], registry=self.registry)
        self.feedback_stored = Counter("sneakerbot_feedback", "Feedback stored, by kind", ["kind"],
                                       registry=self.registry)
        self.model_version = Gauge("sneakerbot_model_version", "The model version served", registry=self.registry)
        self.build = Info("sneakerbot_build", "The running build", registry=self.registry)
        self.build.info({"version": build_version(), "python": platform.python_version(), "ptb": _ptb_version()})
        for kind in UPDATE_KINDS:  # every series exists from the start (a rate over a missing series is empty)
            self.updates.labels(kind)
        for verdict in VERDICTS:
            self.predictions.labels(verdict)
        for detail in Detail:
            self.prediction_details.labels(detail.value)
        for kind in FEEDBACK_KINDS.values():
            self.feedback_stored.labels(kind)

    # --- what handlers call ----------------------------------------------
    def update_received(self, update: object) -> None:
        """Count one update by its kind."""
        self.updates.labels(update_kind(update)).inc()

    def prediction(self, verdict: str, detail: str | None = None) -> None:
        """Count one prediction, and its detail when it has one."""
        self.predictions.labels(verdict).inc()
        if detail is not None:
            self.prediction_details.labels(detail).inc()

    def photo_answered(self, seconds: float) -> None:
        """A photo got its answer ``seconds`` after its handler started."""
        self.photo_latency.observe(seconds)

    def feedback(self, action: str) -> None:
        """Feedback stored through a button with ``action`` (``bot.render.Action``); paging is not counted."""
        kind = FEEDBACK_KINDS.get(action)
        if kind is not None:
            self.feedback_stored.labels(kind).inc()

    # --- wiring ------------------------------------------------------------
    def watch_model(self, holder: ServedVersion) -> None:
        """Read the served model's version from ``holder`` at every scrape (hot swaps included)."""
        self.model_version.set_function(lambda: float(holder.current().version or 0))

    async def on_update(self, update: object, context: object) -> None:
        """A PTB ``TypeHandler`` callback (group -1): count the update, let the other handlers run."""
        self.update_received(update)

    def exposition(self) -> bytes:
        """The Prometheus text format of this runtime's metrics."""
        return generate_latest(self.registry)


class _NoMetrics(BotMetrics):
    """Stands in when an Application has no metrics: every call does nothing."""

    def __init__(self) -> None:  # no registry, no collectors
        pass

    def update_received(self, update: object) -> None:
        pass

    def prediction(self, verdict: str, detail: str | None = None) -> None:
        pass

    def photo_answered(self, seconds: float) -> None:
        pass

    def feedback(self, action: str) -> None:
        pass


NO_METRICS: BotMetrics = _NoMetrics()


def metrics_of(context: Any) -> BotMetrics:
    """The runtime's metrics from a handler's context (``bot_data``), or the do-nothing stand-in."""
    metrics = context.application.bot_data.get(METRICS_KEY)
    return metrics if isinstance(metrics, BotMetrics) else NO_METRICS


def _ptb_version() -> str:
    import telegram

    return telegram.__version__
