"""Scan a whole proxy cache and report every entry that is not what its name says.

The cache is content-addressed: a blob or manifest is stored under the sha256 of its bytes. A scan
re-hashes every such entry and reports the ones whose bytes do not hash to their name, whose name
is not a digest at all, or that sit in the wrong fan-out directory. It also lists what a crash may
leave behind: temporary files of writes in progress (``tmp/``), download spools (``spool/``),
tag records that do not parse, and, in S3, multipart uploads never completed.

Layouts (``proxy.cache.keys`` and the two storage backends):

    filesystem   <cache>/data/blobs/sha256/<2 hex>/<64 hex>      blob bytes
                 <cache>/data/manifests/sha256/<2 hex>/<64 hex>  manifest bytes
                 <cache>/data/tags/<upstream>/<repo>/_tag/<tag>  JSON tag record
                 <cache>/tmp/, <cache>/spool/                    writes and downloads in progress
    S3           <prefix>/blobs/..., <prefix>/manifests/..., <prefix>/tags/... (same keys)

Use::

    report = scan_directory(cache_dir)
    assert report.problems == [], report.describe()
    assert report.temp_files == []

    report = scan_s3(moto.client(), bucket, prefix)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

HEX64 = re.compile(r"[0-9a-f]{64}")
CONTENT_KINDS = ("blobs", "manifests")
TEMP_DIRS = ("tmp", "spool")
READ_CHUNK = 1 << 20

ProblemKind = Literal["digest_mismatch", "bad_name", "misplaced", "unreadable", "bad_tag_record"]


@dataclass(frozen=True)
class Problem:
    """One cache entry that is not what its name says."""

    kind: ProblemKind
    location: str
    """The file path, or ``s3://bucket/key``."""
    detail: str


@dataclass
class ScanReport:
    """What a scan found. A healthy cache has no ``problems``; a quiet one no ``temp_files``."""

    root: str
    blobs: int = 0
    manifests: int = 0
    tag_records: int = 0
    bytes_verified: int = 0
    problems: list[Problem] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    """Temporary files (filesystem) or incomplete multipart uploads (S3)."""
    digests: set[str] = field(default_factory=set)
    """``sha256:<hex>`` of every entry that verified."""

    @property
    def entries(self) -> int:
        return self.blobs + self.manifests

    def describe(self) -> str:
        lines = [
            f"cache scan of {self.root}: {self.blobs} blobs, {self.manifests} manifests, "
            f"{self.tag_records} tag records, {self.bytes_verified} bytes verified, "
            f"{len(self.problems)} problems, {len(self.temp_files)} temporary files"
        ]
        lines += [f"  {p.kind}: {p.location}: {p.detail}" for p in self.problems[:50]]
        lines += [f"  temporary: {t}" for t in self.temp_files[:50]]
        return "\n".join(lines)


def hash_stream(stream: BinaryIO) -> tuple[str, int]:
    """(hex sha256, size) of everything ``stream`` yields, read in bounded chunks."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(READ_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _check_content(
    report: ScanReport, kind: str, relative: str, location: str, stream: BinaryIO
) -> None:
    """Verify one content-addressed entry; ``relative`` is its key below ``<kind>/``."""
    parts = relative.split("/")
    if len(parts) != 3 or parts[0] != "sha256" or not HEX64.fullmatch(parts[2]):
        report.problems.append(Problem("bad_name", location, f"not {kind}/sha256/xx/<64 hex>"))
        return
    name = parts[2]
    if parts[1] != name[:2]:
        report.problems.append(Problem("misplaced", location, f"fan-out directory {parts[1]!r}"))
    actual, size = hash_stream(stream)
    report.bytes_verified += size
    if actual != name:
        report.problems.append(
            Problem("digest_mismatch", location, f"{size} bytes hash to sha256:{actual}")
        )
        return
    report.digests.add(f"sha256:{name}")
    if kind == "blobs":
        report.blobs += 1
    else:
        report.manifests += 1


def _check_tag_record(report: ScanReport, location: str, data: bytes) -> None:
    report.tag_records += 1
    try:
        record = json.loads(data)
        digest = record["digest"]
        valid = isinstance(digest, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
        if not valid or not isinstance(record["media_type"], str):
            raise ValueError(f"bad fields: {record!r}")
        float(record["checked_at"])
    except (ValueError, KeyError, TypeError) as exc:
        report.problems.append(Problem("bad_tag_record", location, str(exc)[:200]))


# ---------------------------------------------------------------------- filesystem


def _files_under(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        return
    for base, _, files in os.walk(directory):
        for name in sorted(files):
            yield Path(base) / name


def temp_files(cache_dir: Path, extra_dirs: Iterable[Path] = ()) -> list[str]:
    """Every file in the cache's ``tmp/`` and ``spool/`` (and ``extra_dirs``), sorted; not the
    spool's marker (``registry-proxy-spool/.registry-proxy``: it stays)."""
    dirs = [cache_dir / name for name in TEMP_DIRS] + list(extra_dirs)
    return sorted(
        str(path)
        for directory in dirs
        for path in _files_under(directory)
        if path.name != ".registry-proxy"
    )


def scan_directory(cache_dir: Path, *, spool_dir: Path | None = None) -> ScanReport:
    """Re-hash every blob and manifest of a filesystem cache (``PROXY_STORAGE=<cache_dir>``).

    ``spool_dir`` is where downloads are spooled when it is not ``<cache_dir>/spool``.
    """
    report = ScanReport(str(cache_dir))
    data = cache_dir / "data"
    for kind in CONTENT_KINDS:
        for path in _files_under(data / kind):
            relative = path.relative_to(data / kind).as_posix()
            try:
                with path.open("rb") as stream:
                    _check_content(report, kind, relative, str(path), stream)
            except OSError as exc:
                report.problems.append(Problem("unreadable", str(path), str(exc)))
    for path in _files_under(data / "tags"):
        try:
            _check_tag_record(report, str(path), path.read_bytes())
        except OSError as exc:
            report.problems.append(Problem("unreadable", str(path), str(exc)))
    report.temp_files = temp_files(cache_dir, [spool_dir] if spool_dir is not None else [])
    return report


# ---------------------------------------------------------------------- S3


def _list_keys(client: Any, bucket: str, prefix: str) -> Iterator[str]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield str(item["Key"])


def scan_s3(client: Any, bucket: str, prefix: str = "") -> ScanReport:
    """Re-hash every blob and manifest of an S3 cache (``PROXY_STORAGE=s3://bucket/prefix``).

    ``client`` is a synchronous botocore S3 client (``support.moto.MotoServer.client()``).
    Incomplete multipart uploads under the prefix are reported as ``temp_files``.
    """
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    report = ScanReport(f"s3://{bucket}/{base}")
    for kind in CONTENT_KINDS:
        for key in _list_keys(client, bucket, f"{base}{kind}/"):
            location = f"s3://{bucket}/{key}"
            try:
                body = client.get_object(Bucket=bucket, Key=key)["Body"]
                with body:
                    _check_content(report, kind, key[len(f"{base}{kind}/") :], location, body)
            except Exception as exc:  # botocore raises many kinds; each is a finding
                report.problems.append(Problem("unreadable", location, repr(exc)))
    for key in _list_keys(client, bucket, f"{base}tags/"):
        location = f"s3://{bucket}/{key}"
        try:
            data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            report.problems.append(Problem("unreadable", location, repr(exc)))
            continue
        _check_tag_record(report, location, data)
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=base)
    report.temp_files = sorted(
        f"s3://{bucket}/{upload['Key']} (upload {upload['UploadId']})"
        for upload in uploads.get("Uploads", [])
    )
    return report
