"""The registry grammar: repository names, tags, digests, byte ranges and API paths.

Everything the proxy later turns into a storage key or an upstream URL passes through here first,
so a value that leaves this module is known to match the distribution grammar:

    name      := component ('/' component)*          (at most 255 characters)
    component := [a-z0-9]+ (('.' | '_' | '__' | '-'+) [a-z0-9]+)*
    tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest    := 'sha256:' [a-f0-9]{64}               (the only algorithm we store)

Paths are parsed from the raw (still percent-encoded) request path: none of the grammars admits
'%', so an encoded slash or dot can never become part of a name.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum

from proxy.registry.errors import ErrorCode, NotFound, RegistryError

NAME_MAX_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
# Any algorithm the OCI spec's grammar admits; we recognise it to answer "unsupported" precisely.
_ANY_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")


@dataclass(frozen=True, slots=True)
class Digest:
    """A sha256 content digest, e.g. ``sha256:3f...``."""

    hex: str

    @classmethod
    def parse(cls, value: str) -> Digest:
        if _DIGEST_RE.fullmatch(value):
            return cls(value[len("sha256:") :])
        if _ANY_DIGEST_RE.fullmatch(value):
            raise RegistryError(ErrorCode.DIGEST_INVALID, f"unsupported digest algorithm: {value}")
        raise RegistryError(ErrorCode.DIGEST_INVALID, f"invalid digest: {value!r}")

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


def is_digest(value: str) -> bool:
    return ":" in value


def validate_name(name: str) -> str:
    if len(name) > NAME_MAX_LENGTH or not _NAME_RE.fullmatch(name):
        raise RegistryError(ErrorCode.NAME_INVALID, f"invalid repository name: {name!r}")
    return name


def validate_tag(tag: str) -> str:
    if not _TAG_RE.fullmatch(tag):
        raise RegistryError(ErrorCode.TAG_INVALID, f"invalid tag: {tag!r}")
    return tag


@dataclass(frozen=True, slots=True)
class Reference:
    """What a manifest request names: a tag or a digest (exactly one is set)."""

    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, value: str) -> Reference:
        if is_digest(value):
            return cls(digest=Digest.parse(value))
        return cls(tag=validate_tag(value))

    @classmethod
    def from_url(cls, value: str) -> Reference:
        """The reference of a ``/v2/<name>/manifests/<reference>`` request.

        A value that is neither a tag nor a digest names no manifest at all: NotFound (404
        MANIFEST_UNKNOWN at the edge), as the distribution spec's conformance suite expects of a
        "nonexistent manifest" such as ``.INVALID_MANIFEST_NAME``. A malformed *digest* stays 400
        DIGEST_INVALID: the client meant a digest and got its syntax wrong.
        """
        if is_digest(value) or _TAG_RE.fullmatch(value):
            return cls.parse(value)
        raise NotFound(f"not a tag or a digest: {value[:200]!r}")

    def __str__(self) -> str:
        return self.tag if self.tag is not None else str(self.digest)


class Endpoint(Enum):
    BASE = "base"
    MANIFEST = "manifest"
    BLOB = "blob"
    TAGS = "tags"
    REFERRERS = "referrers"
    UPLOAD = "upload"


@dataclass(frozen=True, slots=True)
class ApiPath:
    """A parsed ``/v2/...`` path. ``name`` is validated; ``reference`` is raw for manifests
    (and the subject digest, raw, for referrers)."""

    endpoint: Endpoint
    name: str = ""
    reference: str = ""


def parse_api_path(raw_path: str) -> ApiPath:
    """Split a raw ``/v2/...`` path into endpoint, repository name and reference.

    Raises NotFound for paths that are not part of the API at all, and the grammar's errors
    for names, tags and digests that are malformed.
    """
    if raw_path in ("/v2", "/v2/"):
        return ApiPath(Endpoint.BASE)
    if not raw_path.startswith("/v2/"):
        raise NotFound("not a registry API path")
    rest = raw_path[len("/v2/") :]
    # Uploads end in /blobs/uploads/ or /blobs/uploads/<uuid>: recognise them before blobs.
    upload = re.fullmatch(r"(.+)/blobs/uploads/?[^/]*", rest)
    if upload:
        return ApiPath(Endpoint.UPLOAD, validate_name(upload.group(1)))
    if rest.endswith("/tags/list"):
        return ApiPath(Endpoint.TAGS, validate_name(rest[: -len("/tags/list")]))
    for marker, endpoint in (
        ("/manifests/", Endpoint.MANIFEST),
        ("/blobs/", Endpoint.BLOB),
        ("/referrers/", Endpoint.REFERRERS),
    ):
        name, sep, reference = rest.rpartition(marker)
        if sep and reference and "/" not in reference:
            return ApiPath(endpoint, validate_name(name), reference)
    raise NotFound("not a registry API path")


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range already resolved against a known size."""

    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class RangeNotSatisfiable(Exception):
    """The Range header is well formed but selects no byte of the entity."""


_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")  # ASCII digits: \d admits others
# Any position with more digits than this lies beyond every blob; int() is never asked to parse a
# long digit string (Python refuses over 4300 digits, and it is needless work below that).
_MAX_POSITION_DIGITS = 19
_BEYOND_ANY_BLOB: int = 10**_MAX_POSITION_DIGITS


def _position(digits: str) -> int:
    """A byte position as written in a Range header; huge ones become ``_BEYOND_ANY_BLOB``."""
    significant = digits.lstrip("0")
    if len(significant) > _MAX_POSITION_DIGITS:
        return _BEYOND_ANY_BLOB
    return int(significant or "0")


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Resolve a ``Range`` header against ``size``.

    Returns None when the whole entity should be sent: no header, a malformed one, or several
    ranges (RFC 9110 lets a server ignore Range; registries clients only ever ask for one).
    Raises RangeNotSatisfiable when the single range selects nothing, however many digits its
    start has: ``bytes=<20 digits>-`` is well formed and starts beyond the blob.
    """
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    start = _position(first)
    end = _position(last) if last else None
    if end is not None and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    end = size - 1 if end is None else end
    return ByteRange(start, min(end, size - 1))
