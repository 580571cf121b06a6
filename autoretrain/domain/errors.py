"""The errors autoretrain raises, in one hierarchy with two branches that decide what happens next.

    AutoretrainError
    ├── ConfigError             a setting is missing or malformed; fix the environment and restart
    ├── EventError              an event is malformed; it is rejected (answered 2xx), never retried
    │   └── ForeignEventError   well-formed, but from a topic or container we do not serve
    ├── PublishError            `autoretrain publish` cannot publish ml/ as it is (a YAML, a file it names)
    ├── RetrainRefused          `autoretrain retrain` cannot start: the version is unknown, in work or gone
    ├── TransientError          retrying may help: raised, so Event Grid redelivers (reconcile too)
    │   ├── StorageError        Blob or Table Storage is unreachable, throttling or timing out
    │   ├── LedgerError         the ledger refused a state change (a lost race); read it again
    │   ├── NotReadyError       the work this event needs is not recorded yet (ingest still running)
    │   └── WorkspaceUnavailableError   Azure ML or the local workspace is throttling or unreachable
    ├── PermanentError          retrying cannot help: recorded in the ledger with the reason and
    │   │                       answered 2xx, with one log line
    │   ├── ContractError       a data file breaks the data contract; the file is quarantined
    │   ├── BlobChangedError    the blob version an event names was replaced; skipped
    │   │   └── BlobMissingError    ... or no blob of that name exists (deleted, or never there):
    │   │                           ingest then leaves no ledger record (a phantom event)
    │   ├── BlobRejectedError   storage refuses the request as made (a name it cannot hold)
    │   └── WorkspaceRejectedError      the workspace refused the request as made; failed
    │       └── JobNotFoundError        the workspace does not know the job
    └── WorkspaceError          base of the two workspace errors, and of the ones not classified yet,
                                which are treated as transient

A `WorkspaceError` that is neither transient nor permanent is retried: when in doubt, retrying is
safe, because every step is idempotent by work key, and the ledger bounds how often a blob version
is taken over before it is recorded as failed.

Every message is one line that names the bad value and says what to do.
"""

from __future__ import annotations

__all__ = [
    "AutoretrainError",
    "BlobChangedError",
    "BlobMissingError",
    "BlobRejectedError",
    "ConfigError",
    "ContractError",
    "EventError",
    "ForeignEventError",
    "JobNotFoundError",
    "LedgerError",
    "NotReadyError",
    "PermanentError",
    "PublishError",
    "StorageError",
    "TransientError",
    "WorkspaceError",
    "WorkspaceRejectedError",
    "WorkspaceUnavailableError",
    "one_line",
]


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut at `limit` characters; its type when it has none."""
    text = " ".join(str(exc).split())
    return text[:limit] if text else type(exc).__name__


class AutoretrainError(Exception):
    """Base of every error autoretrain raises on purpose."""


class ConfigError(AutoretrainError):
    """A setting is missing or malformed."""


class EventError(AutoretrainError):
    """An event cannot be parsed into one of our event types."""


class ForeignEventError(EventError):
    """A well-formed event that is not ours to handle (another topic, container or experiment)."""


class PublishError(AutoretrainError):
    """The pipeline or a component cannot be published as it is: a YAML or a file it names is wrong."""


class RetrainRefused(AutoretrainError):
    """`autoretrain retrain` cannot start: the blob version is unknown, still in work, or gone."""


class TransientError(AutoretrainError):
    """Retrying may help: the caller raises, so the event is delivered again."""


class PermanentError(AutoretrainError):
    """Retrying cannot help: the blob version gets a final ledger state with this reason."""


class ContractError(PermanentError):
    """A data file breaks the data contract."""


class StorageError(TransientError):
    """Blob or Table Storage failed in a way that may pass."""


class BlobChangedError(PermanentError):
    """The blob version an event names is gone: replaced (new eTag) or deleted."""


class BlobMissingError(BlobChangedError):
    """No blob of that name exists at all (deleted, or an event for a blob the store never had)."""


class BlobRejectedError(PermanentError):
    """Storage refused the request as made (for example a name it cannot hold)."""


class LedgerError(TransientError):
    """The ledger refused a state change: another delivery changed the record first."""


class NotReadyError(TransientError):
    """The event arrived before the state it needs was recorded (events can be reordered)."""


class WorkspaceError(AutoretrainError):
    """The workspace failed an operation (unclassified: treated as transient)."""


class WorkspaceUnavailableError(WorkspaceError, TransientError):
    """The workspace is throttling, unreachable or refusing our identity for now."""


class WorkspaceRejectedError(WorkspaceError, PermanentError):
    """The workspace refused the request as made; the same request will be refused again."""


class JobNotFoundError(WorkspaceRejectedError):
    """The workspace does not know the job."""
