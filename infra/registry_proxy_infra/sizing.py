"""The proxy's limits, derived from the Fargate task size instead of guessed.

Each upstream fetch in progress holds memory (an S3 upload keeps up to two parts of 8 MiB plus
botocore's buffers: about 37 MB measured) and disk (its spool file, as large as the blob, kept
until the slowest client following the fetch has read it). So the number of fetches at once is
the smaller of what the memory and what the ephemeral storage can hold, and the proxy is told
both budgets so it can check them at start-up (``PROXY_MEMORY_LIMIT``) and stream a download
through memory rather than fill the disk (``PROXY_SPOOL_MAX_SIZE``, ``PROXY_SPOOL_MIN_FREE``).

The memory figures are the proxy's own (``proxy/commands/startup.py``); a test keeps them equal.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024**2
GiB = 1024**3

# proxy/commands/startup.py: BASE_MEMORY and S3_FETCH_MEMORY.
BASE_MEMORY_MIB = 256
S3_FETCH_MEMORY_MIB = 48  # an S3 upload (40) and the disk-full memory window (8)
# Ephemeral storage that is not the spool's: the image's layers, the container's writable layer.
EPHEMERAL_RESERVED_GIB = 4
# Free space the proxy keeps on the spool's filesystem: the margin for fetches admitted before
# their size was known.
SPOOL_MIN_FREE_GIB = 1
# Above this, more parallel fetches buy nothing: the upstream and the NAT are the limit.
MAX_UPSTREAM_FETCHES = 64


class SizingError(ValueError):
    """The task is too small for even one upstream fetch."""


@dataclass(frozen=True, slots=True)
class ProxySizes:
    max_upstream_fetches: int
    spool_max_bytes: int
    spool_min_free_bytes: int
    memory_limit_bytes: int

    @property
    def environment(self) -> dict[str, str]:
        """The proxy's variables for these sizes."""
        return {
            "PROXY_MAX_UPSTREAM_FETCHES": str(self.max_upstream_fetches),
            "PROXY_SPOOL_MAX_SIZE": _size(self.spool_max_bytes),
            "PROXY_SPOOL_MIN_FREE": _size(self.spool_min_free_bytes),
            "PROXY_MEMORY_LIMIT": _size(self.memory_limit_bytes),
        }


def fetches_fitting_memory(memory_mib: int) -> int:
    return max(0, (memory_mib - BASE_MEMORY_MIB) // S3_FETCH_MEMORY_MIB)


def derive_sizes(
    memory_mib: int, ephemeral_storage_gib: int, spool_per_fetch_mib: int
) -> ProxySizes:
    """Sizes for a task of ``memory_mib`` and ``ephemeral_storage_gib``, planning
    ``spool_per_fetch_mib`` of spool for each fetch (the size of the largest layers pulled)."""
    spool_gib = ephemeral_storage_gib - EPHEMERAL_RESERVED_GIB - SPOOL_MIN_FREE_GIB
    by_disk = spool_gib * 1024 // spool_per_fetch_mib
    by_memory = fetches_fitting_memory(memory_mib)
    fetches = min(MAX_UPSTREAM_FETCHES, by_disk, by_memory)
    if fetches < 1:
        raise SizingError(
            f"memoryMiB={memory_mib} and ephemeralStorageGiB={ephemeral_storage_gib} leave no "
            f"room for one upstream fetch of spoolPerFetchMiB={spool_per_fetch_mib}"
        )
    return ProxySizes(
        max_upstream_fetches=fetches,
        spool_max_bytes=spool_gib * GiB,
        spool_min_free_bytes=SPOOL_MIN_FREE_GIB * GiB,
        memory_limit_bytes=memory_mib * MiB,
    )


def _size(size: int) -> str:
    if size % GiB == 0:
        return f"{size // GiB}GiB"
    return f"{size // MiB}MiB"
