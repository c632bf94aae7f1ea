"""Per-record outcomes are data, not exceptions: a rejected record is a small frozen ``Reject``."""
from __future__ import annotations

from dataclasses import asdict, dataclass

# Reason codes (stable: reports, tests and users filter on them)
REASONS = {
    "url_invalid": "not an http(s) URL",
    "url_forbidden": "address refused by the network allow/deny lists (link-local, metadata endpoints...)",
    "http_status": "the server answered with an error status (after retries for 5xx/429)",
    "timeout": "connect or read timed out (after retries)",
    "connection": "connection refused, reset or broken mid-body (after retries)",
    "too_large": "body larger than the cap, or an image with more pixels than allowed",
    "redirect": "too many redirects",
    "file_missing": "a file named by the manifest cannot be read",
    "empty": "no bytes",
    "not_image": "bytes are not an image of a known format",
    "undecodable": "an image format was recognised but could not be decoded",
    "truncated": "the image data ends early",
    "decompression_bomb": "the image claims far more pixels or metadata than allowed",
    "base64_invalid": "not valid base64",
    "csv_non_numeric": "a pixel is not a number (e.g. 'fwefew')",
    "csv_missing": "a pixel value is missing",
    "csv_out_of_range": "a pixel is outside 0..255 or not an integer",
    "csv_wrong_length": "the row does not have 1 label + H*W*C pixels",
    "blank": "every pixel has the same value (e.g. an all-zero row)",
    "label_missing": "the record has no label",
    "label_unknown": "the label is not in the class set",
    "duplicate": "the same pixels as an earlier record of the dataset (the first one is kept)",
}


@dataclass(frozen=True, slots=True)
class Reject:
    source: str
    position: str
    reason: str
    detail: str = ""

    @property
    def key(self) -> str:
        return f"{self.source}:{self.position}"

    def to_json(self) -> dict:
        return {"key": self.key, **asdict(self)}


class BadRecord(Exception):
    """Raised inside per-record helpers and turned into a Reject by their caller; never leaves a chunk."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail
