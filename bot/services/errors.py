"""The services' small exception hierarchy; handlers turn each into a polite reply or alert."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error a service raises on purpose."""


class PhotoRejected(ServiceError):
    """A photo could not be used; ``reason`` picks the reply (see ``bot.render.REJECTIONS``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FeedbackRejected(ServiceError):
    """A button press that must change nothing; ``reason`` picks the alert."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownPrediction(FeedbackRejected):
    """No prediction with that id (forged or mistyped button data)."""

    def __init__(self) -> None:
        super().__init__("unknown")


class NotYourPrediction(FeedbackRejected):
    """The prediction belongs to someone else."""

    def __init__(self) -> None:
        super().__init__("not_yours")


class PredictionExpired(FeedbackRejected):
    """The photo is gone (retention) so the answer can no longer be filed."""

    def __init__(self) -> None:
        super().__init__("expired")


class UnknownLabel(FeedbackRejected):
    """A label the current model does not know."""

    def __init__(self) -> None:
        super().__init__("unknown_label")


class ModelUnavailable(ServiceError):
    """No model could be loaded (no registry entry and no starter model)."""
