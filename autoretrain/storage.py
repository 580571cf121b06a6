"""The BlobStore port on Azure Blob Storage (Azurite locally), with azure-storage-blob.

Every read is pinned to the eTag the event named (If-Match), so a file replaced after its event
is never processed under the old version's key: it raises BlobChangedError instead. Copies stream
through this process, which works with a managed identity alone (no SAS for a server-side copy).
The customer's blob is only ever read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, StorageStreamDownloader

from autoretrain.domain import BlobRef
from autoretrain.errors import BlobChangedError, StorageError

__all__ = ["AzureBlobStore", "safe_metadata"]

_CHUNK = 4 * 1024 * 1024


def safe_metadata(values: Mapping[str, str]) -> dict[str, str]:
    """Blob metadata travels in HTTP headers: ASCII only, no line breaks, bounded length."""
    clean = {}
    for name, value in values.items():
        text = re.sub(r"[^\x20-\x7e]", "?", value)[:1024]
        clean[re.sub(r"[^A-Za-z0-9_]", "_", name)] = text
    return clean


class _EmptyBlob(Exception):
    """A range read of a zero-length blob (the service answers 416)."""


def _msg(exc: AzureError) -> str:
    return (getattr(exc, "message", None) or str(exc)).splitlines()[0]


class AzureBlobStore:
    def __init__(self, service: BlobServiceClient, *, create_containers: bool = True) -> None:
        """`create_containers=False` on Azure: infra/ creates them, and the identity's roles are
        scoped to each container, where creating one is not allowed (and not needed)."""
        self._service = service
        self._create = create_containers
        self._ready: set[str] = set()

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
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise BlobChangedError(
                f"{ref.path}: version {ref.etag} was replaced or deleted before it was read; "
                "a newer version is processed under its own event."
            ) from exc
        except AzureError as exc:
            if offset is not None and getattr(exc, "status_code", None) == 416:
                raise _EmptyBlob from exc
            raise StorageError(f"{ref.path}: cannot read it ({_msg(exc)}).") from exc

    def read_head(self, ref: BlobRef, max_bytes: int) -> bytes:
        try:
            downloader = self._pinned(ref, offset=0, length=max_bytes)
        except _EmptyBlob:
            return b""  # a zero-length blob has no byte range to ask for
        try:
            return downloader.readall()
        except AzureError as exc:
            raise StorageError(f"{ref.path}: cannot read it ({_msg(exc)}).") from exc

    def copy_to(self, ref: BlobRef, container: str, name: str, metadata: Mapping[str, str]) -> BlobRef:
        self._ensure_container(container)
        downloader = self._pinned(ref)
        target = self._service.get_blob_client(container, name)
        try:
            result = target.upload_blob(
                downloader.chunks(), length=downloader.size, overwrite=True,
                metadata=safe_metadata(metadata),
            )
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise BlobChangedError(f"{ref.path}: version {ref.etag} changed while being copied.") from exc
        except AzureError as exc:
            raise StorageError(f"{ref.path}: cannot copy it to {container}/{name} ({_msg(exc)}).") from exc
        return BlobRef(container, name, str(result["etag"]))

    def download_to(self, ref: BlobRef, path: Path) -> None:
        downloader = self._pinned(ref)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        try:
            with partial.open("wb") as out:
                for chunk in downloader.chunks():
                    out.write(chunk)
        except AzureError as exc:
            raise StorageError(f"{ref.path}: cannot download it ({_msg(exc)}).") from exc
        partial.replace(path)

    def upload(self, container: str, name: str, data: bytes) -> BlobRef:
        self._ensure_container(container)
        try:
            result = self._service.get_blob_client(container, name).upload_blob(data, overwrite=True)
        except AzureError as exc:
            raise StorageError(f"cannot upload {container}/{name} ({_msg(exc)}).") from exc
        return BlobRef(container, name, str(result["etag"]))
