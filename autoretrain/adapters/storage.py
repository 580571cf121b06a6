"""The BlobStore port on Azure Blob Storage (Azurite locally), with azure-storage-blob.

Every read is pinned to the eTag the event named (If-Match), so a file replaced after its event
is never processed under the old version's key: it raises BlobChangedError instead. Copies stream
through this process, which works with a managed identity alone (no SAS for a server-side copy).
The customer's blob is only ever read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import (
    BlobProperties,
    BlobServiceClient,
    ContainerClient,
    ExponentialRetry,
    StorageStreamDownloader,
)

from autoretrain.domain import BlobRef, ListedBlob
from autoretrain.domain.errors import BlobChangedError, BlobMissingError, BlobRejectedError, StorageError

__all__ = ["AzureBlobStore", "DeadLetterContainer", "client_options", "safe_metadata"]

log = logging.getLogger("autoretrain.adapters.storage")

# Answers that mean "this request, as made, will never succeed": the name or the body is wrong.
_REJECTED = frozenset({400, 411, 413, 414, 416})
# When a listing fails on one name (Azurite answers 500 for a name with a control character), the
# listing is split by the next character of the prefix: printable ASCII one by one, and one listing
# of everything after '~' (other Unicode). Names under a prefix that still fails at this depth are
# left out, and said so in the log.
_SPLIT = [chr(c) for c in range(0x20, 0x7F)]
_SPLIT_DEPTH = 8


def client_options(retries: int = 2) -> dict[str, Any]:
    """Blob client options: the SDK's default retries (15 s backoff, tripled) can hold one call for
    minutes, while Event Grid waits 30 s and retries itself; here two retries wait about 3 s and 5 s."""
    return {
        "retry_policy": ExponentialRetry(
            initial_backoff=1, increment_base=2, retry_total=retries, random_jitter_range=1
        ),
        "connection_timeout": 10,
        "read_timeout": 30,
        # Reads and writes of a big blob go in 4 MiB pieces: the SDK's defaults (a first GET of 32 MiB,
        # one PUT for anything up to 64 MiB) hold that much in memory, several times over.
        "max_single_get_size": 4 * 1024 * 1024,
        "max_chunk_get_size": 4 * 1024 * 1024,
        "max_single_put_size": 4 * 1024 * 1024,
        "max_block_size": 4 * 1024 * 1024,
    }


# Printable ASCII travels in a metadata header as it is; everything else (and '%' itself) is
# percent-encoded as UTF-8, so `unquote` gives back the exact text (a reason naming `données/été.csv`).
_METADATA_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def safe_metadata(values: Mapping[str, str]) -> dict[str, str]:
    """Blob metadata travels in HTTP headers: ASCII only, no line breaks, bounded length. Values are
    percent-encoded (UTF-8) where they are not printable ASCII: `urllib.parse.unquote` reads them."""
    clean = {}
    for name, value in values.items():
        text = re.sub(r"%[0-9A-F]?$", "", quote(value, safe=_METADATA_SAFE)[:1024])  # no escape cut in two
        clean[re.sub(r"[^A-Za-z0-9_]", "_", name)] = text
    return clean


class _EmptyBlob(Exception):
    """A range read of a zero-length blob (the service answers 416)."""


def _msg(exc: AzureError) -> str:
    return (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0]


def _error(action: str, exc: AzureError) -> StorageError | BlobRejectedError:
    """A request the service rejects as made is permanent; anything else may pass."""
    status = getattr(exc, "status_code", None)
    if status in _REJECTED:
        return BlobRejectedError(f"{action}: the service rejects the request ({status}: {_msg(exc)}).")
    return StorageError(f"{action} ({_msg(exc)}).")


class AzureBlobStore:
    def __init__(self, service: BlobServiceClient, *, create_containers: bool = True) -> None:
        """`create_containers=False` on Azure: infra/ creates them, and the identity's roles are
        scoped to each container, where creating one is not allowed (and not needed)."""
        self._service = service
        self._create = create_containers
        self._ready: set[str] = set()
        # Prefixes a listing had to split, per container: each is told once (WARNING), then quietly.
        self._told: set[tuple[str, str, str]] = set()  # (what was told, container, prefix)
        self._unlistable: dict[str, tuple[str, ...]] = {}

    def _ensure_container(self, container: str) -> None:
        if container in self._ready or not self._create:
            return
        try:
            self._service.create_container(container)
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise StorageError(f"container {container!r}: cannot create it ({_msg(exc)}).") from exc
        self._ready.add(container)

    def _pinned(
        self, ref: BlobRef, offset: int | None = None, length: int | None = None
    ) -> StorageStreamDownloader[bytes]:
        blob = self._service.get_blob_client(ref.container, ref.name)
        try:
            return blob.download_blob(
                offset, length, etag=f'"{ref.etag}"', match_condition=MatchConditions.IfNotModified
            )
        except ResourceNotFoundError as exc:
            raise BlobMissingError(
                f"{ref.path}: no such blob (deleted, or never there), so version {ref.etag} cannot be read."
            ) from exc
        except ResourceModifiedError as exc:
            # Azurite answers 412, not 404, for a conditional read of a blob that does not exist.
            if not self._exists(blob):
                raise BlobMissingError(
                    f"{ref.path}: no such blob (deleted, or never there), so version {ref.etag} cannot be read."
                ) from exc
            raise BlobChangedError(
                f"{ref.path}: version {ref.etag} was replaced or deleted before it was read; "
                "a newer version is processed under its own event."
            ) from exc
        except AzureError as exc:
            if offset is not None and getattr(exc, "status_code", None) == 416:
                raise _EmptyBlob from exc
            raise _error(f"{ref.path}: cannot read it", exc) from exc

    @staticmethod
    def _exists(blob: Any) -> bool:
        try:
            return bool(blob.exists())
        except AzureError:
            return True  # cannot tell: the safe reading is "replaced", which keeps a record

    def read_head(self, ref: BlobRef, max_bytes: int) -> bytes:
        try:
            downloader = self._pinned(ref, offset=0, length=max_bytes)
        except _EmptyBlob:
            return b""  # a zero-length blob has no byte range to ask for
        try:
            return downloader.readall()
        except AzureError as exc:
            raise _error(f"{ref.path}: cannot read it", exc) from exc

    def copy_to(
        self, ref: BlobRef, container: str, name: str, metadata: Mapping[str, str], content: bytes | None = None
    ) -> BlobRef:
        self._ensure_container(container)
        target = self._service.get_blob_client(container, name)
        if content is None:
            # A streamed copy looks first: a second delivery must not read a big file again.
            existing = self._copy_of(target, ref)
            if existing is not None:
                return existing
            downloader = self._pinned(ref)
            body: Any = downloader.chunks()
            length = downloader.size
        else:  # the bytes in hand: one request (a copy already there answers 409, handled below)
            body, length = content, len(content)
        try:
            # If-None-Match: * at commit: of two concurrent copies one commits, the other keeps it.
            result = target.upload_blob(
                body, length=length, overwrite=False, metadata=safe_metadata({**metadata, "source_etag": ref.etag}),
            )
        except ResourceExistsError:
            existing = self._copy_of(target, ref)
            if existing is None:
                raise StorageError(
                    f"{container}/{name} exists and is not a copy of {ref.path} version {ref.etag}; "
                    "move it away and the event will be retried."
                ) from None
            return existing
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise BlobChangedError(f"{ref.path}: version {ref.etag} changed while being copied.") from exc
        except AzureError as exc:
            raise _error(f"{ref.path}: cannot copy it to {container}/{name}", exc) from exc
        return BlobRef(container, name, str(result["etag"]))

    def _copy_of(self, target: object, ref: BlobRef) -> BlobRef | None:
        """The copy already at `target` when it is one of exactly this blob version."""
        try:
            props = target.get_blob_properties()  # type: ignore[attr-defined]
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _error(f"cannot read {ref.path}'s copy", exc) from exc
        if (props.metadata or {}).get("source_etag") != ref.etag:
            return None
        return BlobRef(props.container, props.name, str(props.etag))

    def list_blobs(self, container: str) -> Iterator[ListedBlob]:
        self._ensure_container(container)
        client = self._service.get_container_client(container)
        seen: set[str] = set()
        splits: list[str] = []
        for blob in self._listing(client, container, "", 0, splits):
            if blob.name in seen:
                continue
            seen.add(blob.name)
            modified = blob.last_modified
            if modified.tzinfo is None:
                modified = modified.replace(tzinfo=UTC)
            settings = blob.content_settings
            yield ListedBlob(
                BlobRef(container, blob.name, str(blob.etag)), int(blob.size or 0), modified,
                settings.content_type if settings else None,
            )
        self._report_unlistable(container, splits)

    def _first(self, what: str, container: str, prefix: str) -> bool:
        """Whether this is the first time `what` is told for this prefix (then it is noted)."""
        key = (what, container, prefix)
        first = key not in self._told
        self._told.add(key)
        return first

    def unlistable(self, container: str) -> tuple[str, ...]:
        """The prefixes under which the last listing of `container` met a name it could not list."""
        return self._unlistable.get(container, ())

    def scan_unlistable(self, container: str) -> tuple[str, ...]:
        """List `container` (never creating it) and return the prefixes under which a name cannot be
        listed; none for a container that does not exist. StorageError when it cannot be listed."""
        try:
            if not self._service.get_container_client(container).exists():
                return ()
            scanner = AzureBlobStore(self._service, create_containers=False)
            for _ in scanner.list_blobs(container):
                pass
        except AzureError as exc:
            raise StorageError(f"cannot list {container!r} ({_msg(exc)}).") from exc
        return scanner.unlistable(container)

    def _report_unlistable(self, container: str, splits: list[str]) -> None:
        """One WARNING per prefix that hides an unlistable name (the deepest split), the first time."""
        deepest = tuple(p for p in splits if not any(q != p and q.startswith(p) for q in splits))
        self._unlistable[container] = deepest
        for prefix in deepest:
            if not self._first("unlistable", container, prefix):
                continue
            log.warning(
                "storage.unlistable container=%s prefix=%r: a blob whose name starts with this prefix and then "
                "holds a control character cannot be listed, so no listing (or reconcile) finds it; rename it, "
                "or give its name to `autoretrain replay '<name>'` to ingest it", container, prefix,
            )
    def _listing(
        self, client: ContainerClient, container: str, prefix: str, depth: int, splits: list[str]
    ) -> Iterator[BlobProperties]:
        """List under `prefix`; when the service fails on a name in it, split the prefix instead
        (noted in `splits`)."""
        # One retry for the whole listing, none for the split ones: a 500 there is the name. Nor for
        # the whole listing of a container whose last listing had to be split: the same name is
        # most likely still there, and a retry would hold every listing (each poll of the local
        # Event Grid) for the retry's back-off, 1-2 s.
        retries = 1 if depth == 0 and not self._unlistable.get(container) else 0
        try:
            # Materialised per prefix: a failure half-way must not yield half a listing twice.
            items = list(client.list_blobs(name_starts_with=prefix or None, retry_total=retries))
        except HttpResponseError as exc:
            if exc.status_code is None or exc.status_code < 500 or depth >= _SPLIT_DEPTH:
                if depth == 0:
                    raise _error(f"cannot list container {container!r}", exc) from exc
                log.log(
                    logging.WARNING if self._first("left_out", container, prefix) else logging.DEBUG,
                    "storage.unlistable container=%s prefix=%r reason=%r: names under this prefix are left out; "
                    "rename or delete the blob whose name the service cannot list",
                    container, prefix, _msg(exc),
                )
                return
            splits.append(prefix)
            log.log(
                logging.WARNING if self._first("split", container, prefix) else logging.DEBUG,
                "storage.listing_split container=%s prefix=%r reason=%r: a name under this prefix cannot be "
                "listed (Azurite answers 500 for a control character); the rest is listed prefix by prefix",
                container, prefix, _msg(exc),
            )
            for char in _SPLIT:
                yield from self._listing(client, container, prefix + char, depth + 1, splits)
            yield from self._after(client, container, prefix, depth)
            return
        except AzureError as exc:
            raise _error(f"cannot list container {container!r}", exc) from exc
        yield from items

    def _after(self, client: ContainerClient, container: str, prefix: str, depth: int) -> Iterator[BlobProperties]:
        """Names under `prefix` whose next character is past '~' (non-ASCII), from a marker."""
        pages = client.list_blobs(name_starts_with=prefix or None, retry_total=0).by_page(
            continuation_token=prefix + "~\U0010ffff"
        )
        try:
            items = [blob for page in pages for blob in page]
        except AzureError as exc:
            log.warning(
                "storage.unlistable container=%s prefix=%r reason=%r: names past '~' under this prefix are left out",
                container, prefix, _msg(exc),
            )
            return
        yield from (blob for blob in items if not blob.name.startswith(tuple(prefix + c for c in _SPLIT)))

    def describe(self, container: str, name: str) -> ListedBlob | None:
        try:
            props = self._service.get_blob_client(container, name).get_blob_properties()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _error(f"{container}/{name}: cannot read its properties", exc) from exc
        ref = BlobRef(container, name, str(props.etag).strip('"'))
        return ListedBlob(ref, int(props.size), props.last_modified, props.content_settings.content_type)

    def read(self, container: str, name: str, max_bytes: int) -> bytes | None:
        blob = self._service.get_blob_client(container, name)
        try:
            return bytes(blob.download_blob(0, max_bytes).readall())
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            if getattr(exc, "status_code", None) == 416:
                return b""  # a zero-length blob has no byte range to ask for
            raise _error(f"{container}/{name}: cannot read it", exc) from exc

    def download_to(self, ref: BlobRef, path: Path) -> None:
        downloader = self._pinned(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        try:
            with partial.open("wb") as out:
                for chunk in downloader.chunks():
                    out.write(chunk)
        except AzureError as exc:
            raise _error(f"{ref.path}: cannot download it", exc) from exc
        partial.replace(path)

    def upload(self, container: str, name: str, data: bytes) -> BlobRef:
        self._ensure_container(container)
        try:
            result = self._service.get_blob_client(container, name).upload_blob(data, overwrite=True)
        except AzureError as exc:
            raise StorageError(f"cannot upload {container}/{name} ({_msg(exc)}).") from exc
        return BlobRef(container, name, str(result["etag"]))


class DeadLetterContainer:
    """The dead-letter records Event Grid wrote to a container (one blob per record batch).

    A record is kept after it was redelivered, marked with `replayed_at` in its metadata: it stays
    the evidence of what happened, and a second `replay` skips it."""

    def __init__(self, service: BlobServiceClient, container: str) -> None:
        self._container = service.get_container_client(container)
        self.name = container

    def pending(self) -> Iterator[tuple[str, bytes]]:
        """(blob name, content) of each record not redelivered yet; nothing when the container is absent."""
        try:
            if not self._container.exists():
                return
            for blob in self._container.list_blobs(include=["metadata"]):
                if not (blob.metadata or {}).get("replayed_at"):
                    yield blob.name, bytes(self._container.get_blob_client(blob.name).download_blob().readall())
        except AzureError as exc:
            raise _error(f"container {self.name!r}: cannot read its dead-letter records", exc) from exc

    def mark_replayed(self, name: str, stamp: str) -> None:
        client = self._container.get_blob_client(name)
        try:
            metadata = client.get_blob_properties().metadata or {}
            client.set_blob_metadata({**metadata, "replayed_at": stamp})
        except AzureError as exc:
            raise _error(f"{self.name}/{name}: cannot mark it replayed", exc) from exc
