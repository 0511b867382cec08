"""``registry-proxy cache ls|du|gc|verify``: look into the cache and look after it.

They read the same settings as ``serve`` (``PROXY_STORAGE`` and the rest) and work on the same
storage, beside running servers: ``gc`` is the same sweep the server runs (safe with others at
once), ``verify`` re-hashes every blob and manifest and removes what does not match its digest
(a server would refuse to serve it anyway, and fetches it again on the next request).

Storage goes through ``FailSafeStorage`` as in the server; a command that met any storage
failure says so and exits 1, so a scheduled ``gc`` never reports success over an outage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from proxy.cache.keys import blob_key, manifest_key
from proxy.cache.manifests import TagRecord
from proxy.cache.upkeep.housekeeping import Housekeeper, SweepReport
from proxy.cache.upkeep.inventory import Entry, Inventory, Kind, tag_parts
from proxy.config import Settings
from proxy.config_values import human_bytes
from proxy.registry.reference import Digest
from proxy.services import create_storage, housekeeper
from proxy.storage import ObjectNotFound, StorageError
from proxy.storage.failsafe import FailSafeStorage

Clock = Callable[[], float]


def add_parser(commands: Any) -> None:
    """The ``cache`` command and its subcommands, on the CLI's subparsers."""
    cache = commands.add_parser(
        "cache",
        help="inspect and maintain the cache (same settings as serve)",
        description="List, size, clean up and verify the cache that PROXY_STORAGE names. "
        "Safe beside running servers.",
    )
    from proxy.commands.cli import add_flags

    tools = cache.add_subparsers(dest="cache_command", required=True)
    listing = tools.add_parser("ls", help="tags with digests, sizes and last use")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    usage = tools.add_parser("du", help="bytes in the cache: total, per kind, per repository")
    usage.add_argument("--json", action="store_true", help="one JSON document")
    gc = tools.add_parser(
        "gc",
        help="delete what expired or is over the size limit, merge use records, remove "
        "orphaned temporary files",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")
    add_flags(gc, "PROXY_CACHE_EXPIRE_UNUSED", "PROXY_CACHE_MAX_SIZE")
    tools.add_parser(
        "verify", help="re-hash every blob and manifest; remove those that do not match"
    )
    for tool in (listing, usage, gc, tools.choices["verify"]):
        add_flags(tool, "PROXY_STORAGE", "PROXY_LOG_FORMAT")


@dataclass(slots=True)
class Output:
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    def progress(self, text: str) -> None:
        """A status line that rewrites itself, on a terminal only."""
        if self.err.isatty():
            self.err.write(f"\r\x1b[2K{text}")
            self.err.flush()

    def progress_done(self) -> None:
        if self.err.isatty():
            self.err.write("\r\x1b[2K")
            self.err.flush()


async def run(
    settings: Settings,
    args: argparse.Namespace,
    *,
    output: Output | None = None,
    clock: Clock = time.time,
) -> int:
    """Run one ``cache`` subcommand; returns the exit status."""
    output = output or Output()
    storage = FailSafeStorage(create_storage(settings), cooldown=0)
    try:
        await storage.open()
    except StorageError as exc:
        print(f"registry-proxy: storage error: {exc}", file=output.err)
        return 1
    try:
        keeper = housekeeper(settings, storage)
        keeper.clock = clock
        command = args.cache_command
        try:
            if command == "ls":
                status = await list_tags(keeper, output, clock, as_json=args.json)
            elif command == "du":
                status = await disk_usage(keeper, output, as_json=args.json)
            elif command == "gc":
                status = await collect_garbage(keeper, output, clock, dry_run=args.dry_run)
            else:
                status = await verify(storage, output)
        except StorageError as exc:
            output.progress_done()
            print(f"registry-proxy: storage error: {exc}", file=output.err)
            return 1
        if storage.errors:
            print(
                f"registry-proxy: {storage.errors} storage errors (last: {storage.last_error})",
                file=output.err,
            )
            return 1
        return status
    finally:
        await storage.close()


# --- ls -------------------------------------------------------------------------------------


@dataclass(slots=True)
class TaggedImage:
    upstream: str
    repository: str
    tag: str
    digest: str | None
    media_type: str | None
    bytes: int  # the tag's manifest, its platform manifests and their blobs, as cached
    complete: bool  # every manifest and blob it names is in the cache
    last_used: float


async def tagged_images(keeper: Housekeeper) -> tuple[list[TaggedImage], Inventory]:
    inventory = await keeper.inventory()
    images = []
    for entry in sorted(inventory.of_kind(Kind.TAG), key=lambda e: e.key):
        found = await keeper.storage.get(entry.key)
        record = TagRecord.from_json(found[0]) if found is not None else None
        host, repository, tag = tag_parts(entry.key)
        size, complete = image_size(inventory, keeper, record.digest.hex) if record else (0, False)
        images.append(
            TaggedImage(
                host,
                repository,
                tag,
                str(record.digest) if record else None,
                record.media_type if record else None,
                size,
                complete,
                entry.used,
            )
        )
    return images, inventory


def image_size(inventory: Inventory, keeper: Housekeeper, top: str) -> tuple[int, bool]:
    """Bytes of the distinct entries a manifest names (itself, children, blobs) that are
    cached, and whether all of them are."""
    seen: set[str] = set()
    total = 0
    complete = True
    for key in _closure(keeper, top):
        if key in seen:
            continue
        seen.add(key)
        entry = inventory.entries.get(key)
        if entry is None:
            complete = False
        else:
            total += entry.size
    return total, complete


def _closure(keeper: Housekeeper, top: str) -> Iterator[str]:
    pending = [top]
    while pending:
        hex_digest = pending.pop()
        yield manifest_key(Digest(hex_digest))
        refs = keeper.references.get(hex_digest)
        if refs is None:
            continue
        pending.extend(refs[0])
        for blob in refs[1]:
            yield blob_key(Digest(blob))


async def list_tags(keeper: Housekeeper, output: Output, clock: Clock, *, as_json: bool) -> int:
    output.progress("reading the cache ...")
    images, _ = await tagged_images(keeper)
    output.progress_done()
    if as_json:
        document = [
            {**asdict(image), "last_used_at": timestamp(image.last_used)} for image in images
        ]
        json.dump(document, output.out, indent=2)
        output.out.write("\n")
        return 0
    rows: list[tuple[str, ...]] = [("REPOSITORY", "TAG", "DIGEST", "SIZE", "LAST USED")]
    for image in images:
        rows.append(
            (
                f"{image.upstream}/{image.repository}",
                image.tag,
                (image.digest or "?")[:19],
                human_bytes(image.bytes) + ("" if image.complete else " (partial)"),
                age(clock() - image.last_used),
            )
        )
    _table(rows, output.out)
    return 0


# --- du -------------------------------------------------------------------------------------


async def disk_usage(keeper: Housekeeper, output: Output, *, as_json: bool) -> int:
    output.progress("reading the cache ...")
    images, inventory = await tagged_images(keeper)
    output.progress_done()
    kinds = {kind.value: {"entries": n, "bytes": b} for kind, (n, b) in inventory.totals().items()}
    kinds["use-records"] = {
        "entries": len(inventory.records.keys),
        "bytes": inventory.records.bytes,
    }
    repositories: dict[str, set[str]] = {}
    for image in images:
        if image.digest is not None:
            keys = repositories.setdefault(f"{image.upstream}/{image.repository}", set())
            keys.update(_closure(keeper, Digest.parse(image.digest).hex))
    per_repository = {
        name: sum(inventory.entries[k].size for k in keys if k in inventory.entries)
        for name, keys in sorted(repositories.items())
    }
    limit = keeper.current_limit(inventory.bytes)
    document = {
        "bytes": inventory.bytes,
        "limit_bytes": limit,
        "kinds": kinds,
        "repositories": per_repository,
    }
    if as_json:
        json.dump(document, output.out, indent=2)
        output.out.write("\n")
        return 0
    out = output.out
    limit_text = f" of {human_bytes(limit)} allowed" if limit is not None else ", no size limit"
    out.write(f"{human_bytes(inventory.bytes)} in the cache{limit_text}\n\n")
    rows: list[tuple[str, ...]] = [("KIND", "ENTRIES", "SIZE")]
    rows += [(k, str(v["entries"]), human_bytes(v["bytes"])) for k, v in kinds.items()]
    _table(rows, out)
    out.write("\n")
    _table([("REPOSITORY", "SIZE"), *((n, human_bytes(b)) for n, b in per_repository.items())], out)
    out.write("(blobs shared by repositories count in each)\n")
    return 0


# --- gc -------------------------------------------------------------------------------------


async def collect_garbage(
    keeper: Housekeeper, output: Output, clock: Clock, *, dry_run: bool
) -> int:
    output.progress("taking the inventory ...")
    report = await keeper.sweep(dry_run=dry_run)
    output.progress_done()
    print_sweep(report, output.out, clock)
    return 0


def print_sweep(report: SweepReport, out: TextIO, clock: Clock) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    now = clock()
    for reason, entries in (("expired", report.expired), ("evicted", report.evicted)):
        for entry in entries:
            out.write(
                f"{verb} {reason} {entry.kind.value} {describe(entry)} "
                f"{human_bytes(entry.size)}, last used {age(now - entry.last_used)}\n"
            )
    for entry in report.links:
        out.write(f"{verb} dangling link {entry.key}\n")
    for key in report.fleet_records:
        out.write(f"{verb} fleet record {key} (its instance stopped reporting)\n")
    for path in report.temp_files:
        out.write(f"{verb} orphaned temporary file {path}\n")
    freed = report.bytes_before - report.bytes_after
    out.write(
        f"{'dry run: ' if report.dry_run else ''}{len(report.expired)} expired, "
        f"{len(report.evicted)} evicted, {human_bytes(freed)} freed of "
        f"{human_bytes(report.bytes_before)} ({report.entries} entries); "
        f"{len(report.links)} dangling links; {len(report.temp_files)} orphaned temporary files; "
        f"{report.records_merged} use records merged; {report.seconds:.1f} s\n"
    )


def describe(entry: Entry) -> str:
    if entry.kind in (Kind.REFERRERS, Kind.LINK):
        return entry.key
    if entry.kind is Kind.TAG:
        host, repository, tag = tag_parts(entry.key)
        return f"{host}/{repository}:{tag}"
    return f"sha256:{entry.digest_hex}"


# --- verify ---------------------------------------------------------------------------------


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    bytes: int = 0
    removed: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


async def verify(storage: FailSafeStorage, output: Output) -> int:
    """Re-hash every blob and manifest and parse every tag record; remove what is wrong."""
    report = VerifyReport()
    entries = [e async for e in _listed(storage)]
    total_bytes = sum(size for _, size in entries) or 1
    for index, (key, _) in enumerate(entries):
        output.progress(
            f"verify {index + 1}/{len(entries)} "
            f"[{100 * report.bytes // total_bytes:3d}%] {human_bytes(report.bytes)}"
        )
        problem = await _check(storage, key, report)
        report.checked += 1
        if problem is None:
            continue
        if problem == "unreadable":
            report.unreadable.append(key)
            output.out.write(f"unreadable {key}\n")
            continue
        await storage.delete(key)
        report.removed.append(key)
        output.out.write(f"removed {key}: {problem}\n")
    output.progress_done()
    output.out.write(
        f"{report.checked} entries checked, {human_bytes(report.bytes)} hashed; "
        f"{len(report.removed)} removed, {len(report.unreadable)} unreadable\n"
    )
    return 1 if report.removed or report.unreadable else 0


async def _listed(storage: FailSafeStorage) -> AsyncIterator[tuple[str, int]]:
    for prefix in ("blobs/", "manifests/", "tags/"):
        async for listed in storage.list_objects(prefix):
            yield listed.key, listed.size


async def _check(storage: FailSafeStorage, key: str, report: VerifyReport) -> str | None:
    """What is wrong with the entry ("unreadable", a description), or None."""
    name = key.rsplit("/", 1)[1]
    if key.startswith("tags/"):
        found = await storage.get(key)
        if found is None:
            return None  # gone meanwhile (a failure to read it is counted by the storage)
        return None if TagRecord.from_json(found[0]) is not None else "not a tag record"
    hasher = hashlib.sha256()
    try:
        async for chunk in storage.read(key):
            hasher.update(chunk)
            report.bytes += len(chunk)
    except ObjectNotFound:
        return None  # deleted meanwhile (a sweep elsewhere): nothing to verify
    except StorageError:
        return "unreadable"
    actual = hasher.hexdigest()
    return None if actual == name else f"content hashes to sha256:{actual}"


# --- formatting -----------------------------------------------------------------------------


def age(seconds: float) -> str:
    if seconds < 0:
        seconds = 0
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit} ago"
    return "just now"


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        out.write("\n")
