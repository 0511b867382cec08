"""The route of the registry API: every path under ``/v2``, matched by its prefix alone.

The API's handler parses the path itself (``proxy.registry.reference.parse_api_path``, memoized),
so the router has nothing to extract from it. aiohttp's routes for the same paths (a plain
``/v2`` and a dynamic ``/v2/{tail:[\\s\\S]*}``) cost each warm request two candidate resolutions, a
regular expression over the path and an unquoted copy of its tail that nothing reads: a few
microseconds of a request that takes about seventy. This resource answers with one string
comparison instead.
"""

from __future__ import annotations

from aiohttp.web_urldispatcher import Resource, _InfoDict
from yarl import URL

API_PREFIX = "/v2"
_SUBTREE = API_PREFIX + "/"


class ApiResource(Resource):
    """``/v2`` and every path below it, for any method its routes take."""

    @property
    def canonical(self) -> str:
        # Also the key of aiohttp's resource index: a request path is looked up by its prefixes.
        return API_PREFIX

    def _match(self, path: str) -> dict[str, str] | None:
        if path == API_PREFIX or path.startswith(_SUBTREE):
            return {}
        return None

    def raw_match(self, path: str) -> bool:
        return path == API_PREFIX

    def get_info(self) -> _InfoDict:
        return {"prefix": API_PREFIX}

    def url_for(self, **kwargs: str) -> URL:
        return URL.build(path=API_PREFIX, encoded=True)

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the registry API is served at the root of the app")

    def __repr__(self) -> str:
        return f"<ApiResource {API_PREFIX}>"
