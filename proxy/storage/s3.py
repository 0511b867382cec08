"""The cache in S3 (or any S3-compatible server), shared by every proxy instance on the bucket.

Objects live at ``<prefix>/<key>`` in the bucket (just ``<key>`` when the prefix is empty).

One aiobotocore client is created in ``open()`` and closed in ``close()``. Credentials and region
come from the standard AWS chain: environment variables locally, the task role on Fargate (region
``us-east-1`` when none is configured). ``open()`` checks the bucket with HeadBucket, so a missing
bucket or bad credentials stop start-up with one line that names the bucket. The role needs
s3:ListBucket on the bucket (HeadBucket, ListObjectsV2, and a 404 rather than a 403 for a missing
key) and GetObject, PutObject, DeleteObject (also used by DeleteObjects) and
AbortMultipartUpload on the objects.

Writes never replace an object with other bytes. Content-addressed objects are written with
``If-None-Match: *`` (PutObject, and CompleteMultipartUpload for large blobs): when writers in
several instances race on the same digest, the first one to finish stores the object and the others
get 412 PreconditionFailed (or 409 ConditionalRequestConflict while the first is in progress),
which means "already there, same bytes" and counts as success.

A blob writer buffers up to one part (``part_size``, 8 MiB by default, or larger when a known blob
size would need more than S3's 10,000 parts). A blob that fits in one part goes up with one
PutObject at commit; a larger one becomes a multipart upload while it streams: each full part is
uploaded in the background while the next one fills, so at most two parts are held in memory
whatever the blob size. ``commit()`` (called only after the base class verified the digest)
completes the upload, after checking that the parts hold exactly the bytes written; a mismatch,
``abort()`` or any failure aborts it, so nothing is left behind. After a failed part the writer
refuses to commit (the upload would have a hole); the blob pump detaches from it instead.
(A process killed mid-upload leaves an incomplete multipart upload: the bucket's lifecycle rule
``AbortIncompleteMultipartUpload`` removes those.)

Errors: throttling (SlowDown, 503), other 5xx responses, connection errors and timeouts are retried
by botocore's retry handler, configured on the client: ``retries={"mode": retry_mode,
"total_max_attempts": max_attempts}`` ("standard" mode and 5 attempts in all by default; the delay
before retry n is random up to 2**(n-1) seconds, capped at 20 s; "adaptive" mode also slows the
client's own request rate after throttling). Timeouts are ``connect_timeout`` and ``read_timeout``
(between two reads of a response, not the whole transfer). What still fails after the retries, and
every other S3 error, is raised as ``StorageError`` naming the operation, the object and S3's error
code, except "no such key", which is ``None`` from ``stat()`` and ``get()`` and ``ObjectNotFound``
from ``read()``.

``read()`` asks for the range in ranged GetObjects of ``read_part_size`` (128 MiB by default), the
next one requested before the current one ends; a body that breaks off is asked for again from
the first byte not yet passed on (twice in a row at most, then ``StorageError``), and a reader
whose consumer stops reading gives its connections back after ``release_after`` seconds. See
``proxy.storage.parts``.

S3 stores ``binary/octet-stream`` as the content type of an object written without one; ``stat()``
reports that as ``None``, the same as the filesystem backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from proxy.storage import parts
from proxy.storage.base import (
    BlobWriter,
    ListedObject,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    check_key,
)
from proxy.storage.parts import OpenPart, read_parts

log = structlog.get_logger(__name__)

MiB = 1024 * 1024
#: S3's smallest part size (for every part but the last).
MIN_PART_SIZE = 5 * MiB
DEFAULT_PART_SIZE = 8 * MiB
#: S3's largest part number: a writer that knows the blob size raises its part size to fit.
MAX_PARTS = 10_000
#: Keys per ListObjectsV2 request (S3's maximum).
LIST_PAGE_SIZE = 1000
#: Keys per DeleteObjects request (S3's maximum).
DELETE_BATCH = 1000
DEFAULT_REGION = "us-east-1"
#: The content type S3 gives an object stored without one.
S3_DEFAULT_CONTENT_TYPE = "binary/octet-stream"

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
#: Conditional-write failures: the object exists (412), or a write of it is in progress (409).
EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})
#: A read whose range starts at or past the end of the object.
INVALID_RANGE_CODES = frozenset({"InvalidRange"})

_S3Error = (ClientError, BotoCoreError)


def _answered(exc: BaseException, codes: frozenset[str]) -> bool:
    """S3 answered with one of ``codes``: an answer the caller expects, not a failure."""
    return isinstance(exc, ClientError) and error_code(exc) in codes


def error_code(exc: BaseException) -> str:
    """S3's error code ("NoSuchKey", "SlowDown", "403", ...), or the exception's class name."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(status) if status else "Unknown"
    return type(exc).__name__


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        message = exc.response.get("Error", {}).get("Message") or ""
        code = error_code(exc)
        return f"{code} ({message})" if message and message != code else code
    return f"{type(exc).__name__}: {exc}"


class S3Storage(Storage):
    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        region: str | None = None,
        retry_mode: str = "standard",
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_pool_connections: int = 64,
        path_style: bool | None = None,
        read_part_size: int = parts.DEFAULT_PART_SIZE,
        release_after: float = parts.DEFAULT_RELEASE_AFTER,
    ) -> None:
        """``path_style`` None means path-style addressing with a custom ``endpoint_url`` (what
        S3-compatible servers expect) and the AWS default otherwise."""
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if retry_mode not in {"standard", "adaptive", "legacy"}:
            raise ValueError(f"unknown retry mode: {retry_mode!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        self.region = region
        self.retry_mode = retry_mode
        self.max_attempts = max_attempts
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_pool_connections = max_pool_connections
        self.path_style = endpoint_url is not None if path_style is None else path_style
        self.read_part_size = read_part_size
        self.release_after = release_after
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        session = AioSession()
        # botocore reads AWS_DEFAULT_REGION and the config file; ECS and other SDKs set AWS_REGION.
        region = (
            self.region
            or session.get_config_variable("region")
            or os.environ.get("AWS_REGION")
            or DEFAULT_REGION
        )
        config = AioConfig(
            region_name=region,
            signature_version="s3v4",
            # total_max_attempts counts the first attempt; botocore's "max_attempts" would not.
            retries={"mode": self.retry_mode, "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=self.max_pool_connections,
            s3={"addressing_style": "path" if self.path_style else "auto"},
        )
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                session.create_client("s3", endpoint_url=self.endpoint_url, config=config)
            )
            self._stack = stack
            await self._check_bucket(region)
        except BaseException:
            self._client = None
            self._stack = None
            await stack.aclose()
            raise
        log.info(
            "storage.opened",
            backend="s3",
            bucket=self.bucket,
            prefix=self.prefix,
            region=region,
            endpoint_url=self.endpoint_url,
        )

    async def _check_bucket(self, region: str) -> None:
        where = f"S3 bucket {self.bucket!r}"
        if self.endpoint_url:
            where += f" at {self.endpoint_url}"
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise StorageError(
                f"{where}: no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, or run with a task role) (PROXY_STORAGE)"
            ) from None
        except ClientError as exc:
            code = error_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            if code in {"404", "NoSuchBucket", "NotFound"} or status == 404:
                detail = "does not exist"
            elif code in {"403", "AccessDenied", "Forbidden"} or status == 403:
                detail = (
                    f"access denied ({_describe(exc)}): check the AWS credentials and that they "
                    "may use the bucket"
                )
            elif status in {301, 307, 400} and headers.get("x-amz-bucket-region"):
                actual = headers["x-amz-bucket-region"]
                detail = f"is in region {actual}, not {region} (set AWS_DEFAULT_REGION={actual})"
            else:
                detail = f"HeadBucket failed: {_describe(exc)}"
            raise StorageError(f"{where} {detail} (PROXY_STORAGE)") from None
        except BotoCoreError as exc:
            raise StorageError(f"{where}: cannot reach S3: {exc} (PROXY_STORAGE)") from None

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @property
    def client(self) -> Any:
        """The aiobotocore S3 client (only between ``open()`` and ``close()``)."""
        if self._client is None:
            raise StorageError(f"{self!r} is not open")
        return self._client

    def object_key(self, key: str) -> str:
        """The S3 object key of a storage key."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, operation: str, key: str | None, exc: BaseException) -> StorageError:
        target = f"s3://{self.bucket}/{self.object_key(key)}" if key else f"s3://{self.bucket}"
        return StorageError(f"S3 {operation} {target}: {_describe(exc)}")

    # -- reading -----------------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo | None:
        name = self.object_key(key)
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=name)
        except _S3Error as exc:
            if _answered(exc, NOT_FOUND_CODES):
                return None
            raise self._error("HeadObject", key, exc) from exc
        return _info(head)

    async def get(self, key: str) -> tuple[bytes, ObjectInfo] | None:
        name = self.object_key(key)
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=name)
            async with response["Body"] as body:
                data: bytes = await body.read()
        except _S3Error as exc:
            if _answered(exc, NOT_FOUND_CODES):
                return None
            raise self._error("GetObject", key, exc) from exc
        info = _info(response)
        return data, ObjectInfo(len(data), info.content_type)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The range as ranged GetObjects of ``read_part_size`` (see ``proxy.storage.parts``)."""
        if start < 0:
            raise ValueError(f"negative read offset: {start}")
        if end is not None and end < start:
            return
        name = self.object_key(key)

        async def open_part(first: int, last: int) -> OpenPart | None:
            try:
                response = await self.client.get_object(
                    Bucket=self.bucket, Key=name, Range=f"bytes={first}-{last}"
                )
            except _S3Error as exc:
                if _answered(exc, NOT_FOUND_CODES):
                    raise ObjectNotFound(key) from None
                if _answered(exc, INVALID_RANGE_CODES):
                    return None  # starts at or past the end: nothing to send (as a file would)
                raise self._error("GetObject", key, exc) from exc
            body = _PartBody(
                response["Body"], lambda exc: self._error("GetObject (body)", key, exc)
            )
            last, total = _part_bounds(response, first)
            return OpenPart(body, first, last, total)

        async for chunk in read_parts(
            open_part,
            start,
            end,
            part_size=self.read_part_size,
            release_after=self.release_after,
        ):
            yield chunk

    # -- writing -----------------------------------------------------------------------------

    async def put(
        self, key: str, data: bytes, *, content_type: str | None = None, overwrite: bool = False
    ) -> bool:
        params = self._put_params(key, content_type)
        if not overwrite:
            params["IfNoneMatch"] = "*"
        try:
            await self.client.put_object(Body=data, **params)
        except _S3Error as exc:
            if not overwrite and _answered(exc, EXISTS_CODES):
                return False
            raise self._error("PutObject", key, exc) from exc
        return True

    def _put_params(self, key: str, content_type: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(key)}
        if content_type is not None:
            params["ContentType"] = content_type
        return params

    async def writer(
        self,
        key: str,
        expected_hex: str,
        expected_size: int | None = None,
        *,
        content_type: str | None = None,
    ) -> S3BlobWriter:
        check_key(key)
        if self._client is None:  # fail now rather than at the first part
            raise StorageError(f"{self!r} is not open")
        return S3BlobWriter(self, key, expected_hex, expected_size, content_type)

    async def delete(self, key: str) -> None:
        try:
            await self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except _S3Error as exc:
            raise self._error("DeleteObject", key, exc) from exc

    async def delete_many(self, keys: list[str]) -> None:
        names = [self.object_key(key) for key in keys]
        for start in range(0, len(names), DELETE_BATCH):
            batch = names[start : start + DELETE_BATCH]
            try:
                response = await self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": name} for name in batch], "Quiet": True},
                )
            except _S3Error as exc:
                raise StorageError(
                    f"S3 DeleteObjects s3://{self.bucket} ({len(batch)} keys): {_describe(exc)}"
                ) from exc
            # DeleteObjects answers 200 and lists per-key failures in the body.
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"S3 DeleteObjects s3://{self.bucket}/{first.get('Key')}: "
                    f"{first.get('Code')} ({first.get('Message')}); {len(errors)} keys failed"
                )

    async def list_objects(self, prefix: str) -> AsyncIterator[ListedObject]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=base + prefix,
                PaginationConfig={"PageSize": LIST_PAGE_SIZE},
            )
            async for page in pages:
                for item in page.get("Contents", []):
                    name: str = item["Key"]
                    yield ListedObject(
                        name[len(base) :], int(item["Size"]), item["LastModified"].timestamp()
                    )
        except _S3Error as exc:
            raise StorageError(
                f"S3 ListObjectsV2 s3://{self.bucket}/{base}{prefix}: {_describe(exc)}"
            ) from exc

    async def check(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except _S3Error as exc:
            raise self._error("HeadBucket", None, exc) from exc

    async def presigned_url(self, key: str, expires_in: int) -> str | None:
        try:
            url: str = await self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.object_key(key)},
                ExpiresIn=expires_in,
            )
        except _S3Error as exc:
            raise self._error("presign GetObject", key, exc) from exc
        return url


class _PartBody:
    """A GetObject body whose failures are StorageErrors (which ``read_parts`` resumes from)."""

    def __init__(self, stream: Any, error: Callable[[BaseException], StorageError]) -> None:
        self._stream = stream
        self._error = error

    async def read(self, size: int) -> bytes:
        try:
            chunk: bytes = await self._stream.read(size)
        except (*_S3Error, aiohttp.ClientError, OSError) as exc:
            raise self._error(exc) from exc
        return chunk

    def close(self) -> None:
        self._stream.close()


def _part_bounds(response: dict[str, Any], first: int) -> tuple[int, int]:
    """(last byte, object size) of a ranged GetObject response."""
    content_range = response.get("ContentRange")
    if content_range:  # "bytes FIRST-LAST/TOTAL"
        span, _, total = str(content_range).removeprefix("bytes ").partition("/")
        return int(span.partition("-")[2]), int(total)
    # No Content-Range: the server sent the whole object (as S3 does for an empty one).
    size = int(response["ContentLength"])
    if first != 0:
        raise StorageError(f"S3 ignored the Range of a read from byte {first}")
    return size - 1, size


def _info(response: dict[str, Any]) -> ObjectInfo:
    content_type = response.get("ContentType")
    if content_type == S3_DEFAULT_CONTENT_TYPE:
        content_type = None
    return ObjectInfo(int(response["ContentLength"]), content_type)


class S3BlobWriter(BlobWriter):
    """Streams a blob into S3: one PutObject when it fits in a part, else a multipart upload.

    Holds the part being filled plus at most one part being uploaded in the background.
    ``peak_buffered`` records the most bytes it ever held at once (tests check the bound).

    The buffer is an ``io.BytesIO`` handed to botocore as the request body as it is: aiohttp
    then sends it in 64 KiB pieces, where a ``bytes`` body would be copied whole once or twice
    more on its way to the socket.
    """

    def __init__(
        self,
        storage: S3Storage,
        key: str,
        expected_hex: str,
        expected_size: int | None,
        content_type: str | None,
    ) -> None:
        super().__init__(key, expected_hex, expected_size)
        self.storage = storage
        self.content_type = content_type
        self.object_key = storage.object_key(key)
        self.part_size = storage.part_size
        if expected_size is not None:
            self.part_size = max(self.part_size, -(-expected_size // MAX_PARTS))
        self.upload_id: str | None = None
        self.peak_buffered = 0
        self._buffer = io.BytesIO()
        self._buffered = 0
        self._parts: list[dict[str, Any]] = []
        self._next_part = 1
        self._uploading: asyncio.Task[None] | None = None
        self._uploading_bytes = 0
        self._uploaded = 0
        self._failed: StorageError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held right now: the part being filled and the one being uploaded."""
        return self._buffered + self._uploading_bytes

    def _note_peak(self) -> None:
        self.peak_buffered = max(self.peak_buffered, self.buffered)

    async def _write(self, chunk: bytes) -> None:
        self._check_not_failed()
        self._buffer.write(chunk)
        self._buffered += len(chunk)
        self._note_peak()
        try:
            while self._buffered >= self.part_size:
                await self._send_part()
        except StorageError as exc:
            self._failed = exc
            raise

    def _check_not_failed(self) -> None:
        # After a failed part the upload has a hole: it must never be completed.
        if self._failed is not None:
            raise StorageError(f"{self.key}: an earlier write failed: {self._failed}")

    def _take_buffer(self, limit: int | None = None) -> tuple[io.BytesIO, int]:
        """The buffer (at most ``limit`` bytes of it, rewound) and its size; a new buffer holds
        the rest."""
        part, size = self._buffer, self._buffered
        rest = b""
        if limit is not None and size > limit:
            with part.getbuffer() as view:
                rest = bytes(view[limit:])
            part.truncate(limit)
            size = limit
        self._buffer = io.BytesIO(rest)
        self._buffer.seek(0, io.SEEK_END)
        self._buffered = len(rest)
        part.seek(0)
        return part, size

    async def _send_part(self) -> None:
        """Hand the first full part of the buffer to a background upload."""
        await self._wait_upload()  # at most one part in flight
        if self.upload_id is None:
            await self._create_upload()
        part, size = self._take_buffer(self.part_size)
        number = self._next_part
        self._next_part += 1
        self._uploading_bytes = size
        self._uploading = asyncio.create_task(self._upload_part(number, part, size))
        self._note_peak()

    async def _create_upload(self) -> None:
        params: dict[str, Any] = {"Bucket": self.storage.bucket, "Key": self.object_key}
        if self.content_type is not None:
            params["ContentType"] = self.content_type
        try:
            response = await self.storage.client.create_multipart_upload(**params)
        except _S3Error as exc:
            raise self.storage._error("CreateMultipartUpload", self.key, exc) from exc
        self.upload_id = str(response["UploadId"])

    async def _upload_part(self, number: int, body: io.BytesIO, size: int) -> None:
        try:
            response = await self.storage.client.upload_part(
                Bucket=self.storage.bucket,
                Key=self.object_key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=body,
            )
        except _S3Error as exc:
            raise self.storage._error(f"UploadPart {number}", self.key, exc) from exc
        finally:
            self._uploading_bytes = 0
            body.close()
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self._uploaded += size

    async def _wait_upload(self) -> None:
        task, self._uploading = self._uploading, None
        if task is not None:
            await task

    async def _commit(self) -> None:
        try:
            self._check_not_failed()
            if self.upload_id is None:
                await self._put_whole()
            else:
                await self._complete()
        except BaseException:
            await self._abort()
            raise
        finally:
            self._take_buffer()[0].close()

    async def _put_whole(self) -> None:
        params = self.storage._put_params(self.key, self.content_type)
        body, size = self._take_buffer()
        self._check_complete(size)
        try:
            await self.storage.client.put_object(Body=body, IfNoneMatch="*", **params)
        except _S3Error as exc:
            if _answered(exc, EXISTS_CODES):
                log.debug("storage.already_stored", key=self.key, code=error_code(exc))
                return
            raise self.storage._error("PutObject", self.key, exc) from exc
        finally:
            body.close()

    async def _complete(self) -> None:
        await self._wait_upload()
        if self._buffered:
            await self._upload_part(self._next_part, *self._take_buffer())
            self._next_part += 1
        parts = sorted(self._parts, key=lambda part: int(part["PartNumber"]))
        if [part["PartNumber"] for part in parts] != list(range(1, len(parts) + 1)):
            raise StorageError(f"{self.key}: multipart upload is missing parts")
        self._check_complete(self._uploaded)
        try:
            await self.storage.client.complete_multipart_upload(
                Bucket=self.storage.bucket,
                Key=self.object_key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except _S3Error as exc:
            if _answered(exc, EXISTS_CODES):
                # Another writer stored this digest first: same bytes. A refused completion
                # leaves our upload pending, so abort it.
                log.debug("storage.already_stored", key=self.key, code=error_code(exc))
                await self._abort()
                return
            raise self.storage._error("CompleteMultipartUpload", self.key, exc) from exc
        self.upload_id = None

    def _check_complete(self, stored: int) -> None:
        """Refuse to publish anything but exactly the bytes that were written and verified."""
        if stored != self.size:
            raise StorageError(f"{self.key}: {stored} bytes uploaded, {self.size} written")

    async def _abort(self) -> None:
        """Drop the buffer and any multipart upload; never raises (a failed abort is logged)."""
        self._take_buffer()[0].close()
        task, self._uploading = self._uploading, None
        if task is not None:
            task.cancel()
            # Wait for it without raising its error (or swallowing our own cancellation).
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()
        upload_id, self.upload_id = self.upload_id, None
        if upload_id is None:
            return
        try:
            await self.storage.client.abort_multipart_upload(
                Bucket=self.storage.bucket, Key=self.object_key, UploadId=upload_id
            )
        except _S3Error as exc:
            # The bucket's AbortIncompleteMultipartUpload lifecycle rule cleans it up later.
            log.warning(
                "storage.abort_failed",
                key=self.key,
                upload_id=upload_id,
                detail=_describe(exc),
            )
