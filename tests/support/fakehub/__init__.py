"""The fake Docker Hub, split by role (``hub`` says how they fit together):

* ``hub``: ``FakeHub``, the servers' lifecycle, addresses and options;
* ``content``: blobs, manifests, tags and the image builders;
* ``registry``: the distribution API, the token service, the rate limit;
* ``cdn``: blob bytes behind the registry's redirect;
* ``faults``: the one fault-injection mechanism (``hub.inject(kind, ...)``);
* ``records``: every request seen, and the counters read from them;
* ``serving``: what the registry and the CDN share (faults before a response, bodies).
"""

from support.fakehub.content import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    ImageInfo,
    IndexInfo,
)
from support.fakehub.faults import Fault
from support.fakehub.hub import FakeHub
from support.fakehub.records import RecordedRequest, ServerName
from support.fakehub.registry import SERVICE

__all__ = [
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_MANIFEST",
    "SERVICE",
    "FakeHub",
    "Fault",
    "ImageInfo",
    "IndexInfo",
    "RecordedRequest",
    "ServerName",
]
