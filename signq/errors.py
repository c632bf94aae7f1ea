"""signq's exception tree.

    SignqError                      base of everything signq raises on purpose
    ├── ConfigError                 a bad setting, flag or environment variable (permanent)
    ├── ManifestError               a manifest cannot be read: names file, line and problem (permanent)
    ├── StorageKeyError             a storage key would escape the storage root (permanent)
    ├── JobNotFound                 no job with that id in the job store (permanent)
    ├── DatasetNotFound             no finished dataset with that name/version (permanent)
    ├── ModelNotFound               no complete model version with that name/version (permanent)
    └── TransientError              infrastructure hiccup worth retrying (storage, broker)

Per-record failures (a 404, an undecodable image, a CSV row with junk) are *not* exceptions: they are
`Reject` records, counted and written with the chunk's output (see ``signq.records``).
All exceptions pickle and JSON-serialize cleanly (``super().__init__(*args)``).
"""


class SignqError(Exception):
    """Base class for errors signq raises on purpose."""


class ConfigError(SignqError, ValueError):
    """A setting, flag or environment variable has an invalid value."""


class ManifestError(SignqError, ValueError):
    """A manifest is unreadable as a whole (not one bad record)."""

    def __init__(self, source, line, problem):
        super().__init__(source, line, problem)
        self.source, self.line, self.problem = source, line, problem

    def __str__(self):
        where = f"{self.source}, line {self.line}" if self.line else str(self.source)
        return f"{where}: {self.problem}"


class StorageKeyError(SignqError, ValueError):
    """A key derived from user input would escape the storage root."""


class JobNotFound(SignqError, LookupError):
    """No job with that id."""


class DatasetNotFound(SignqError, LookupError):
    """No finished dataset with that name (or version)."""


class ModelNotFound(SignqError, LookupError):
    """No complete model version with that name (or version)."""


class TransientError(SignqError):
    """A failure of infrastructure that a retry may fix."""
