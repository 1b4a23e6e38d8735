"""The scraper's exceptions: one small hierarchy, each failure with a short reason code.

Third-party errors (requests, PIL, selenium) are mapped to these at the boundary,
so the pipeline can count failures by ``reason`` without knowing any library.

The kinds of unusable image are ``ml.errors``'s (``ml`` owns decoding, ``ml.images``, and
knows nothing of the scraper): the scraper's image errors subclass them, adding the
``reason`` the report counts and membership in ``ScraperError``. So ``except BadImage``
or ``except ml.errors.CorruptImage`` catch the scraper's too, and ``except ScraperError``
still catches every scraper failure.
"""

from __future__ import annotations

from ml import errors as ml_errors


class ScraperError(Exception):
    """Base of every scraper error."""

    #: Short code the run report counts failures by.
    reason: str = "error"


class SourceError(ScraperError):
    """A search source failed (network error, unexpected answer)."""

    reason = "source_error"


class FetchError(ScraperError):
    """A download failed; ``reason`` is what the run report counts."""

    reason = "fetch_error"


class FetchTimeout(FetchError):
    """The connect or total download deadline passed."""

    reason = "timeout"


class ConnectionFailed(FetchError):
    """The host could not be reached (DNS, refused, reset)."""

    reason = "connection"


class HTTPStatusError(FetchError):
    """The server answered with a non-success status."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} for {url}")
        self.status = status
        self.reason = f"http_{status}"


class TooManyRedirects(FetchError):
    """A redirect chain was longer than allowed (or looped)."""

    reason = "redirects"


class TooLarge(FetchError):
    """The body was larger than the configured maximum."""

    reason = "too_large"


class NotAnImage(FetchError, ml_errors.NotAnImage):
    """The body's first bytes are not any known image format, whatever the headers say."""

    reason = "not_image"


class RefusedURL(FetchError):
    """The URL's scheme is not http(s)."""

    reason = "bad_scheme"


class RefusedAddress(FetchError):
    """The host resolves to a private, loopback or otherwise internal address."""

    reason = "private_address"


class ImageError(ScraperError, ml_errors.BadImage):
    """Downloaded bytes that cannot be used as a training image."""

    reason = "bad_image"


class CorruptImage(ImageError, ml_errors.CorruptImage):
    """The image does not decode fully (or Pillow cannot tell what it is, though its first bytes passed the sniff)."""

    reason = "corrupt"


class ImageTooSmall(ImageError, ml_errors.ImageTooSmall):
    """The image's shorter side is below the configured minimum."""

    reason = "too_small"


class ImageTooManyPixels(ImageError, ml_errors.ImageTooLarge):
    """The image has more pixels than we are willing to decode (decompression bomb)."""

    reason = "too_many_pixels"
