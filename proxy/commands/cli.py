"""The ``registry-proxy`` command."""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import structlog

from proxy import __version__
from proxy.config import ROWS, SECTIONS, ConfigError, Settings, load_settings
from proxy.ops.logs import configure_logging

log = structlog.get_logger("proxy")

# The settings the serve and warm commands take as flags too (proxy/config.py's rows name them).
_FLAGS = ("PROXY_STORAGE", "PROXY_UPSTREAM_URL", "PROXY_LOG_FORMAT", "PROXY_TAG_TTL")


# --- settings on the command line: proxy/config.py's rows --------------------------------------


def plain(text: str) -> str:
    """Markdown help as terminal text: no backticks, links as their words."""
    return re.sub(r"\[([^]]+)\]\([^)]*\)", r"\1", text).replace("`", "")


def help_text(width: int = 100) -> str:
    """Every setting for ``--help``: section by section, each with its default."""
    lines = ["settings (environment variables; flags override some):"]
    for name, title in SECTIONS.items():
        lines += ["", f"  {plain(title)}"]
        for row in ROWS:
            if row.section == name:
                text = f"{plain(row.help)} [default: {plain(row.shown_default)}]"
                lines.append(f"    {row.variable}")
                lines += textwrap.wrap(
                    text, width, initial_indent="      ", subsequent_indent="      "
                )
    return "\n".join(lines)


def add_flags(parser: argparse.ArgumentParser, *variables: str) -> None:
    """Flags that override these settings, as their rows name them (``args.PROXY_...``)."""
    for row in ROWS:
        if row.variable in variables:
            assert row.flag is not None, row.variable
            # argparse formats help with %: a literal one is doubled.
            parser.add_argument(
                row.flag, dest=row.variable, help=plain(row.help).replace("%", "%%")
            )


def flag_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The variables set by ``add_flags`` flags that were given."""
    given = {row.variable: getattr(args, row.variable, None) for row in ROWS}
    return {variable: value for variable, value in given.items() if value is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry-proxy",
        description="Pull-through caching container registry. Settings come from PROXY_* "
        "environment variables (see README); flags override them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the proxy",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(serve, "PROXY_LISTEN", *_FLAGS)
    commands.add_parser(
        "healthcheck",
        help="exit 0 if the proxy on PROXY_LISTEN answers /healthz (for container HEALTHCHECKs)",
    )
    ranges = commands.add_parser(
        "codebuild-ranges",
        help="print AWS CodeBuild's address ranges of a region from an ip-ranges.json file",
        description="Reads AWS's published ip-ranges.json (download it yourself) and prints the "
        "CODEBUILD prefixes of --region, for PROXY_ALLOW_CIDRS or a security group.",
    )
    ranges.add_argument("file", type=Path, help="ip-ranges.json")
    ranges.add_argument("--region", required=True, help="e.g. us-east-1")
    ranges.add_argument(
        "--format",
        choices=("lines", "env"),
        default="lines",
        help="one per line, or PROXY_ALLOW_CIDRS=...",
    )
    warm = commands.add_parser(
        "warm",
        help="fetch images into the cache ahead of the builds (same settings as serve)",
        description="Fetch manifests and blobs of IMAGE[:TAG] (or @DIGEST) into the cache. "
        "Idempotent: what is cached is not fetched again, and tags inside PROXY_TAG_TTL cost no "
        "upstream request at all.",
    )
    warm.add_argument("images", nargs="*", metavar="IMAGE[:TAG]")
    warm.add_argument("--from-file", type=Path, help="file with one image per line (# comments)")
    warm.add_argument(
        "--platform",
        action="append",
        help="only this platform of multi-platform images, e.g. linux/amd64 (repeatable)",
    )
    add_flags(warm, *_FLAGS)
    from proxy.commands.cache import add_parser as add_cache_parser

    add_cache_parser(commands)
    from proxy.commands.certs import add_parser as add_certs_parser

    add_certs_parser(commands)
    return parser


def settings_from(args: argparse.Namespace, env: dict[str, str]) -> Settings:
    return load_settings({**env, **flag_overrides(args)})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "codebuild-ranges":
        return print_codebuild_ranges(args)
    if args.command == "certs":
        from proxy.commands.certs import run as run_certs

        return run_certs(args)
    try:
        settings = settings_from(args, dict(os.environ))
    except ConfigError as exc:
        print(f"registry-proxy: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.operations.log_format, settings.operations.log_level)
    if args.command == "serve":
        return serve(settings)
    if args.command == "warm":
        return run_warm(settings, args)
    if args.command == "healthcheck":
        return healthcheck(settings)
    if args.command == "cache":
        return run_cache(settings, args)
    return 2


def print_codebuild_ranges(args: argparse.Namespace) -> int:
    import json

    from proxy.http.access import codebuild_ranges

    try:
        document = json.loads(args.file.read_text())
    except (OSError, ValueError) as exc:
        print(f"registry-proxy: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    ranges = codebuild_ranges(document, args.region)
    if not ranges:
        print(f"registry-proxy: no CODEBUILD ranges for region {args.region!r}", file=sys.stderr)
        return 1
    if args.format == "env":
        print("PROXY_ALLOW_CIDRS=" + ",".join(ranges))
    else:
        print("\n".join(ranges))
    return 0


def healthcheck(settings: Settings) -> int:
    import urllib.request

    host = settings.listen.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.listen.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"registry-proxy: {url}: {exc}", file=sys.stderr)
        return 1


def run_warm(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from proxy.commands.warm import read_image_list, warm
    from proxy.storage import StorageError

    images = list(args.images)
    if args.from_file is not None:
        try:
            images += read_image_list(args.from_file)
        except OSError as exc:
            print(f"registry-proxy: cannot read --from-file: {exc}", file=sys.stderr)
            return 2
    if not images:
        print("registry-proxy: warm needs at least one IMAGE or --from-file", file=sys.stderr)
        return 2
    try:
        failures = asyncio.run(warm(settings, images, args.platform))
    except StorageError as exc:
        print(f"registry-proxy: storage error: {exc}", file=sys.stderr)
        return 1
    return 1 if failures else 0


def run_cache(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from proxy.commands.cache import run

    return asyncio.run(run(settings, args))


def log_upstream_identities(settings: Settings) -> None:
    """One ``upstream.identity`` line per upstream: whom it sees the proxy pull as, the user name
    (never the token) or ``anonymous`` (sharing the anonymous rate limit of the address the
    proxy pulls from)."""
    for upstream in settings.upstreams:
        log.info(
            "upstream.identity",
            upstream=upstream.host,
            url=upstream.url,
            account=upstream.username or "anonymous",
        )


def serve(settings: Settings) -> int:
    from proxy.commands.startup import StartupError, check_startup
    from proxy.http.app import create_app, run_app
    from proxy.storage import StorageError

    try:
        check_startup(settings)
    except StartupError as exc:
        print(f"registry-proxy: cannot start: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    log.info(
        "proxy.starting",
        listen=f"{settings.listen.host}:{settings.listen.port}",
        upstream=settings.upstream.url,
        upstream_account=settings.upstream.username or "anonymous",
        storage=str(settings.storage.location),
        tag_ttl=settings.policy.tag_ttl,
    )
    log_upstream_identities(settings)
    try:
        run_app(app, settings)
    except StorageError as exc:
        print(f"registry-proxy: storage error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"registry-proxy: cannot listen on PROXY_LISTEN="
            f"{settings.listen.host}:{settings.listen.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
