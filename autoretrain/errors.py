"""The errors autoretrain raises, in one hierarchy.

    AutoretrainError
    ├── ConfigError        a setting is missing or malformed; fix the environment and restart
    ├── EventError         an event is malformed or not ours; it is rejected, never retried
    │   └── ForeignEventError   well-formed, but from a topic or container we do not serve
    ├── ContractError      a data file breaks the data contract; the file is quarantined
    ├── StorageError       Blob or Table Storage failed; transient, so the event is retried
    │   └── BlobChangedError    the blob version an event names was replaced or deleted
    ├── LedgerError        the ledger refused a state change (a lost race, an unknown key)
    └── WorkspaceError     the workspace (Azure ML or the local one) failed an operation

Every message is one line that names the bad value and says what to do.
"""

from __future__ import annotations

__all__ = [
    "AutoretrainError",
    "BlobChangedError",
    "ConfigError",
    "ContractError",
    "EventError",
    "ForeignEventError",
    "LedgerError",
    "StorageError",
    "WorkspaceError",
]


class AutoretrainError(Exception):
    """Base of every error autoretrain raises on purpose."""


class ConfigError(AutoretrainError):
    """A setting is missing or malformed."""


class EventError(AutoretrainError):
    """An event cannot be parsed into one of our event types."""


class ForeignEventError(EventError):
    """A well-formed event that is not ours to handle (another topic, container or experiment)."""


class ContractError(AutoretrainError):
    """A data file breaks the data contract."""


class StorageError(AutoretrainError):
    """Blob or Table Storage failed."""


class BlobChangedError(StorageError):
    """The blob version an event names is gone: replaced (new eTag) or deleted. Not transient."""


class LedgerError(AutoretrainError):
    """The ledger refused a state change."""


class WorkspaceError(AutoretrainError):
    """The workspace failed an operation."""
