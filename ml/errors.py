"""The ML package's small exception hierarchy; third-party errors are mapped to it at the boundary."""

from __future__ import annotations


class MLError(Exception):
    """Base of every error raised on purpose by ``ml``."""


class BadImage(MLError):
    """An input could not be used as a photo."""


class NotAnImage(BadImage):
    """The bytes are not an image format we can decode."""


class CorruptImage(BadImage):
    """The file looks like an image but decoding it failed."""


class ImageTooSmall(BadImage):
    """The image is smaller than the minimum side length."""


class ImageTooLarge(BadImage):
    """The image has more pixels than we agree to decode (decompression bomb guard)."""


class UnknownBackbone(MLError, KeyError):
    """No backbone is registered under that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown backbone"


class WeightsUnavailable(MLError):
    """Pretrained weights are not on this machine (nothing is downloaded at run time)."""


class ModelDirError(MLError):
    """A model directory is missing files or has an unsupported format."""


class DatasetError(MLError):
    """A dataset folder cannot be used (empty, one class, too few images to split)."""
