"""Test images without a Docker daemon, and skopeo to move them around.

:func:`build_oci_layout` writes an OCI image layout with seeded random content, so the digests
are the same on every run on a given machine (gzip output depends on the zlib build).  The
image is multi-platform (linux/amd64 and linux/arm64/v8 by default); the first layer is shared
by all platforms, the rest are per platform.

:class:`Skopeo` runs skopeo isolated from the machine's configuration (no policy check, empty
registries.conf and registries.d, no stored credentials) with a timeout on every call.
:func:`push_image` copies a layout into a registry, as an OCI index or, with
``docker_v2s2=True``, as a Docker manifest list, and returns the digests as the registry
reports them.  :func:`verify_dir_copy` checks what ``skopeo copy --all ... dir:OUT`` wrote.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.binaries import run_program

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
REF_NAME = "org.opencontainers.image.ref.name"

FIXED_MTIME = 1_700_000_000
CREATED = "2024-01-01T00:00:00Z"
DEFAULT_TIMEOUT = 180.0
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


# ---------------------------------------------------------------------- building a layout


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    def as_dict(self) -> dict[str, str]:
        d = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Platform:
        return cls(os=d["os"], architecture=d["architecture"], variant=d.get("variant"))


AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64", "v8")
DEFAULT_PLATFORMS: tuple[Platform, ...] = (AMD64, ARM64)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class LayoutImage:
    """One platform's image inside the layout."""

    platform: Platform
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageLayout:
    path: Path
    tags: tuple[str, ...]
    index: Descriptor
    images: tuple[LayoutImage, ...]

    @property
    def blob_digests(self) -> tuple[str, ...]:
        """Config and layer digests (the blobs a registry stores besides manifests), sorted."""
        digests = {d.digest for img in self.images for d in (img.config, *img.layers)}
        return tuple(sorted(digests))

    @property
    def total_size(self) -> int:
        blobs = {d.digest: d.size for img in self.images for d in (img.config, *img.layers)}
        return sum(blobs.values())


class _LayoutWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.blobs = path / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def put(self, media_type: str, data: bytes) -> Descriptor:
        digest = sha256_digest(data)
        target = self.blobs / digest.removeprefix("sha256:")
        if not target.exists():
            target.write_bytes(data)
        return Descriptor(media_type, digest, len(data))


def _tar_layer(
    files: Sequence[tuple[str, bytes | None, int]], symlinks: Mapping[str, str]
) -> bytes:
    """Uncompressed tar: ``files`` are (path, content or None for a directory, mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content, mode in files:
            info = tarfile.TarInfo(name)
            info.mtime = FIXED_MTIME
            info.mode = mode
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        for name, target in symlinks.items():
            info = tarfile.TarInfo(name)
            info.mtime = FIXED_MTIME
            info.mode = 0o777
            info.type = tarfile.SYMTYPE
            info.linkname = target
            info.uname = info.gname = "root"
            tar.addfile(info)
    return buf.getvalue()


def _random_bytes(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _base_layer(seed: int, size: int, include_busybox: bool) -> bytes:
    files: list[tuple[str, bytes | None, int]] = [
        ("bin", None, 0o755),
        ("etc", None, 0o755),
        ("etc/os-release", b'NAME="registry-proxy test image"\nID=rptest\n', 0o644),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/group", b"root:x:0:\n", 0o644),
        ("opt", None, 0o755),
        ("opt/base", None, 0o755),
        ("opt/base/data.bin", _random_bytes(f"{seed}:base", size), 0o644),
        ("root", None, 0o700),
        ("tmp", None, 0o1777),
    ]
    symlinks: dict[str, str] = {}
    if include_busybox:
        busybox = shutil.which("busybox")
        if busybox is None:
            raise RuntimeError("include_busybox=True needs busybox (Debian: busybox-static)")
        files.append(("bin/busybox", Path(busybox).read_bytes(), 0o755))
        for applet in ("sh", "ls", "cat", "echo", "true", "sleep", "uname"):
            symlinks[f"bin/{applet}"] = "busybox"
    return _tar_layer(files, symlinks)


def _platform_layer(seed: int, platform: Platform, index: int, size: int) -> bytes:
    slug = str(platform).replace("/", "-")
    files: list[tuple[str, bytes | None, int]] = [
        ("opt", None, 0o755),
        (f"opt/{slug}", None, 0o755),
        (f"opt/{slug}/layer-{index}.txt", f"{platform} layer {index}\n".encode(), 0o644),
        (f"opt/{slug}/layer-{index}.bin", _random_bytes(f"{seed}:{slug}:{index}", size), 0o644),
    ]
    return _tar_layer(files, {})


def build_oci_layout(
    path: Path,
    *,
    tags: Sequence[str] = ("latest",),
    seed: int = 0,
    base_layer_size: int = 768 * 1024,
    platform_layer_sizes: Sequence[int] = (384 * 1024, 128 * 1024),
    platforms: Sequence[Platform] = DEFAULT_PLATFORMS,
    include_busybox: bool = False,
    compresslevel: int = 1,
) -> ImageLayout:
    """Write an OCI image layout at ``path`` holding one multi-platform image.

    Each platform gets ``1 + len(platform_layer_sizes)`` gzip tar layers: the shared base
    layer (``base_layer_size`` random bytes, plus busybox if asked) and one layer of random
    bytes per entry of ``platform_layer_sizes``.  Random data does not compress, so the sizes
    are close to the blob sizes: the default is about 1.8 MB of distinct blobs.  ``index.json``
    names the image index with each of ``tags`` as ``org.opencontainers.image.ref.name``.
    """
    writer = _LayoutWriter(path)

    def gzip_layer(tar: bytes) -> tuple[Descriptor, str]:
        blob = gzip.compress(tar, compresslevel=compresslevel, mtime=0)
        return writer.put(OCI_LAYER_GZIP, blob), sha256_digest(tar)

    base, base_diff = gzip_layer(_base_layer(seed, base_layer_size, include_busybox))
    images: list[LayoutImage] = []
    for platform in platforms:
        layers = [base]
        diff_ids = [base_diff]
        for i, size in enumerate(platform_layer_sizes):
            desc, diff_id = gzip_layer(_platform_layer(seed, platform, i, size))
            layers.append(desc)
            diff_ids.append(diff_id)
        config = {
            "created": CREATED,
            **platform.as_dict(),
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "WorkingDir": "/",
                "Labels": {"org.example.registry-proxy.test-seed": str(seed)},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [
                {"created": CREATED, "created_by": f"registry-proxy test layer {n}"}
                for n in range(len(layers))
            ],
        }
        config_desc = writer.put(OCI_CONFIG, canonical_json(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.as_dict(),
            "layers": [d.as_dict() for d in layers],
        }
        manifest_desc = writer.put(OCI_MANIFEST, canonical_json(manifest))
        images.append(LayoutImage(platform, manifest_desc, config_desc, tuple(layers)))

    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**img.manifest.as_dict(), "platform": img.platform.as_dict()} for img in images
        ],
    }
    index_desc = writer.put(OCI_INDEX, canonical_json(index))
    top = {
        "schemaVersion": 2,
        "manifests": [{**index_desc.as_dict(), "annotations": {REF_NAME: tag}} for tag in tags],
    }
    (path / "index.json").write_bytes(canonical_json(top))
    (path / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    return ImageLayout(path=path, tags=tuple(tags), index=index_desc, images=tuple(images))


# ---------------------------------------------------------------------- skopeo


class SkopeoError(RuntimeError):
    pass


@dataclass
class Skopeo:
    """skopeo isolated from the machine's configuration, with a timeout on every call."""

    workdir: Path
    binary: str = "skopeo"
    timeout: float = DEFAULT_TIMEOUT
    debug: bool = False
    _env: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "registries.d").mkdir(exist_ok=True)
        registries_conf = self.workdir / "registries.conf"
        registries_conf.write_text("unqualified-search-registries = []\n")
        self.tmpdir = self.workdir / "tmp"
        self.tmpdir.mkdir(exist_ok=True)
        env = dict(os.environ)
        env["CONTAINERS_REGISTRIES_CONF"] = str(registries_conf)
        env["REGISTRY_AUTH_FILE"] = str(self.workdir / "auth.json")
        env["TMPDIR"] = str(self.tmpdir)
        self._env = env

    @property
    def env(self) -> dict[str, str]:
        return dict(self._env)

    def command(self, *args: str) -> list[str]:
        """The full argv (with the global isolation flags) for ``skopeo ARGS``."""
        flags = ["--insecure-policy", "--registries.d", str(self.workdir / "registries.d")]
        if self.debug:
            flags.append("--debug")
        return [self.binary, *flags, *args]

    def run(
        self, *args: str, timeout: float | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        argv = self.command(*args)
        proc = run_program(
            argv,
            env=self._env,
            timeout=timeout if timeout is not None else self.timeout,
            check=check,
            error=SkopeoError,
        )
        return proc

    def inspect_raw(
        self, reference: str, *, creds: str | None = None, timeout: float | None = None
    ) -> bytes:
        """Raw manifest bytes of ``docker://REFERENCE`` (plain http allowed)."""
        auth = ["--creds", creds] if creds else ["--no-creds"]
        proc = self.run(
            "inspect",
            "--raw",
            "--tls-verify=false",
            *auth,
            f"docker://{reference}",
            timeout=timeout,
        )
        return proc.stdout

    def copy_args_to_dir(
        self, reference: str, out: Path, *, all_images: bool = True, creds: str | None = None
    ) -> list[str]:
        """Arguments of ``skopeo copy`` from ``docker://REFERENCE`` (over http) to ``dir:OUT``."""
        auth = ["--src-creds", creds] if creds else ["--src-no-creds"]
        return [
            "copy",
            *(["--all"] if all_images else []),
            "--src-tls-verify=false",
            *auth,
            f"docker://{reference}",
            f"dir:{out}",
        ]

    def pull_to_dir(
        self,
        reference: str,
        out: Path,
        *,
        all_images: bool = True,
        creds: str | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        args = self.copy_args_to_dir(reference, out, all_images=all_images, creds=creds)
        return self.run(*args, timeout=timeout)

    def run_many(
        self, arg_lists: Sequence[Sequence[str]], *, timeout: float | None = None
    ) -> list[subprocess.CompletedProcess[bytes]]:
        """Start one skopeo per argument list, all at once, and wait for all of them.

        Output (stdout and stderr together) is in each result's ``stdout``.  When the shared
        ``timeout`` runs out, every process still running is killed and SkopeoError raised.
        """
        limit = timeout if timeout is not None else self.timeout
        logdir = Path(tempfile.mkdtemp(prefix="run-many-", dir=self.workdir))
        argvs = [self.command(*args) for args in arg_lists]
        logs = [(logdir / f"{i}.log").open("w+b") for i in range(len(argvs))]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for argv, log in zip(argvs, logs, strict=True):
                procs.append(
                    subprocess.Popen(
                        argv, env=self._env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
                    )
                )
            # Blocking waits, the deadline kept by a timer that kills what still runs: a
            # ``wait(timeout)`` polls with sleeps of up to 50 ms, which the benchmark's pull
            # times (about a second) would carry as steps of 50 ms.
            expired = threading.Event()

            def kill_all() -> None:
                expired.set()
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()

            timer = threading.Timer(limit, kill_all)
            timer.start()
            try:
                for proc in procs:
                    proc.wait()
            finally:
                timer.cancel()
            if expired.is_set():
                raise SkopeoError(
                    f"{len(procs)} concurrent skopeo runs did not finish within {limit} s"
                )
            results = []
            for argv, proc, log in zip(argvs, procs, logs, strict=True):
                log.seek(0)
                results.append(subprocess.CompletedProcess(argv, proc.returncode, log.read(), b""))
            return results
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            for log in logs:
                log.close()


# ---------------------------------------------------------------------- pushing


@dataclass(frozen=True)
class PushedManifest:
    platform: str
    digest: str
    media_type: str
    config_digest: str
    layer_digests: tuple[str, ...]


@dataclass(frozen=True)
class PushedImage:
    """An image as the registry it was pushed to reports it."""

    registry: str  # 127.0.0.1:PORT
    repository: str  # library/golang
    tag: str
    index_digest: str
    index_media_type: str
    index_bytes: bytes
    manifests: tuple[PushedManifest, ...]

    @property
    def reference(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"

    @property
    def blob_digests(self) -> tuple[str, ...]:
        digests = {d for m in self.manifests for d in (m.config_digest, *m.layer_digests)}
        return tuple(sorted(digests))

    @property
    def manifest_digests(self) -> tuple[str, ...]:
        """The index digest first, then each platform's manifest digest."""
        return (self.index_digest, *(m.digest for m in self.manifests))

    def platform(self, name: str) -> PushedManifest:
        for m in self.manifests:
            if m.platform == name:
                return m
        raise KeyError(name)


def push_image(
    skopeo: Skopeo,
    layout: ImageLayout,
    registry: str,
    repository: str,
    tag: str,
    *,
    username: str,
    password: str,
    docker_v2s2: bool = False,
    source_tag: str | None = None,
) -> PushedImage:
    """``skopeo copy --all`` the layout into ``registry/repository:tag``; read it back."""
    creds = f"{username}:{password}"
    src_tag = source_tag or layout.tags[0]
    skopeo.run(
        "copy",
        "--all",
        *(["--format", "v2s2"] if docker_v2s2 else []),
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        f"oci:{layout.path}:{src_tag}",
        f"docker://{registry}/{repository}:{tag}",
    )
    return inspect_image(skopeo, registry, repository, tag, creds=creds)


def inspect_image(
    skopeo: Skopeo, registry: str, repository: str, tag: str, *, creds: str | None
) -> PushedImage:
    """Read a multi-platform image's manifests back from the registry with skopeo."""
    raw = skopeo.inspect_raw(f"{registry}/{repository}:{tag}", creds=creds)
    index = json.loads(raw)
    media_type = index.get("mediaType", "")
    if media_type not in INDEX_TYPES:
        raise SkopeoError(f"{registry}/{repository}:{tag} is not an index: {media_type!r}")
    manifests = []
    for entry in index["manifests"]:
        raw_manifest = skopeo.inspect_raw(f"{registry}/{repository}@{entry['digest']}", creds=creds)
        if sha256_digest(raw_manifest) != entry["digest"]:
            raise SkopeoError(f"manifest {entry['digest']} read back with another digest")
        manifest = json.loads(raw_manifest)
        manifests.append(
            PushedManifest(
                platform=str(Platform.from_dict(entry["platform"])),
                digest=entry["digest"],
                media_type=entry["mediaType"],
                config_digest=manifest["config"]["digest"],
                layer_digests=tuple(layer["digest"] for layer in manifest["layers"]),
            )
        )
    return PushedImage(
        registry=registry,
        repository=repository,
        tag=tag,
        index_digest=sha256_digest(raw),
        index_media_type=media_type,
        index_bytes=raw,
        manifests=tuple(manifests),
    )


# ---------------------------------------------------------------------- checking a pull


def verify_dir_copy(out: Path, image: PushedImage) -> None:
    """Check what ``skopeo copy --all docker://... dir:OUT`` wrote against ``image``.

    skopeo's dir: transport writes the top-level manifest as ``manifest.json``, each
    platform's manifest as ``<hex>.manifest.json`` and each blob as a file named by its hex
    digest.  Raises AssertionError naming the first mismatch.
    """
    top = (out / "manifest.json").read_bytes()
    assert sha256_digest(top) == image.index_digest, (
        f"index digest {sha256_digest(top)} != upstream {image.index_digest}"
    )
    for m in image.manifests:
        path = out / f"{m.digest.removeprefix('sha256:')}.manifest.json"
        assert path.exists(), f"{m.platform} manifest {m.digest} missing from {out}"
        assert sha256_digest(path.read_bytes()) == m.digest, f"{path.name} has another digest"
    blob_files = {p.name: p for p in out.iterdir() if HEX64.match(p.name)}
    for name, path in blob_files.items():
        actual = file_digest(path)
        assert actual == f"sha256:{name}", f"blob file {name} hashes to {actual}"
    expected = {d.removeprefix("sha256:") for d in image.blob_digests}
    assert set(blob_files) == expected, (
        f"blob files differ: missing {sorted(expected - set(blob_files))}, "
        f"unexpected {sorted(set(blob_files) - expected)}"
    )
