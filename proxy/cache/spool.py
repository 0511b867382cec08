"""The spool: a local directory holding the blobs being downloaded from upstreams right now.

Every client of a download reads its spool file (``BlobFetch``), so no blob is ever held in
memory. Spool files live only as long as their download and its readers; the ones a killed
process left behind are removed when the next one opens the spool.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from proxy.tempfiles import remove_orphans, temp_name

log = structlog.get_logger(__name__)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def open(self) -> None:
        """Create the directory and remove files abandoned by processes that are gone."""
        self.directory.mkdir(parents=True, exist_ok=True)
        removed = remove_orphans(self.directory)
        if removed:
            log.info("spool.recovered", removed_files=removed, directory=str(self.directory))

    def new_path(self) -> Path:
        """A path for a new spool file (the caller creates it exclusively)."""
        return self.directory / temp_name()
