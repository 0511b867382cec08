"""The registry grammar: names, tags, digests, API paths and Range headers."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.registry.errors import ErrorCode, NotFound, RegistryError
from proxy.registry.reference import (
    ByteRange,
    Digest,
    Endpoint,
    RangeNotSatisfiable,
    Reference,
    parse_api_path,
    parse_range,
    validate_name,
    validate_tag,
)

HEX = "a" * 64


@pytest.mark.parametrize(
    "name", ["golang", "library/golang", "a/b/c", "my-org/my_repo", "a__b", "x.y/z-1", "a---b"]
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "UPPER",
        "a//b",
        "/a",
        "a/",
        "..",
        "a/../b",
        "a/./b",
        "-a",
        "a-",
        "a%2Fb",
        "a b",
        "é",
        "a" * 256,
        "a_-b",
        "._a",
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(RegistryError) as info:
        validate_name(name)
    assert info.value.code is ErrorCode.NAME_INVALID
    assert info.value.code.status == 400


@pytest.mark.parametrize("tag", ["latest", "1.21.5-bookworm", "_x", "A" * 128])
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".x", "-x", "a" * 129, "a/b", "a:b", "a%20"])
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(RegistryError) as info:
        validate_tag(tag)
    assert info.value.code is ErrorCode.TAG_INVALID


def test_digest_parse_and_str() -> None:
    digest = Digest.parse(f"sha256:{HEX}")
    assert str(digest) == f"sha256:{HEX}"
    assert Digest.of(b"") == Digest.parse(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize(
    "value", ["sha256:" + "A" * 64, "sha256:abc", "sha512:" + "a" * 128, "sha256:", ":x", "x:"]
)
def test_invalid_digests(value: str) -> None:
    with pytest.raises(RegistryError) as info:
        Digest.parse(value)
    assert info.value.code is ErrorCode.DIGEST_INVALID


def test_reference_is_tag_or_digest() -> None:
    assert Reference.parse("latest").tag == "latest"
    assert Reference.parse(f"sha256:{HEX}").digest == Digest(HEX)


def test_reference_from_url_is_tag_or_digest_or_no_manifest() -> None:
    assert Reference.from_url("latest") == Reference.parse("latest")
    assert Reference.from_url(f"sha256:{HEX}") == Reference.parse(f"sha256:{HEX}")
    for value in (".INVALID_MANIFEST_NAME", "-x", "a" * 129, ""):
        with pytest.raises(NotFound):  # MANIFEST_UNKNOWN at the edge (test_routes)
            Reference.from_url(value)
    with pytest.raises(RegistryError) as info:
        Reference.from_url("sha256:zzz")  # a digest, malformed: the client's error
    assert info.value.code is ErrorCode.DIGEST_INVALID


@pytest.mark.parametrize(
    ("path", "endpoint", "name", "reference"),
    [
        ("/v2/", Endpoint.BASE, "", ""),
        ("/v2", Endpoint.BASE, "", ""),
        ("/v2/library/golang/manifests/1.21", Endpoint.MANIFEST, "library/golang", "1.21"),
        ("/v2/golang/blobs/sha256:x", Endpoint.BLOB, "golang", "sha256:x"),
        ("/v2/a/b/c/tags/list", Endpoint.TAGS, "a/b/c", ""),
        ("/v2/a/blobs/uploads/", Endpoint.UPLOAD, "a", ""),
        ("/v2/a/blobs/uploads/123-abc", Endpoint.UPLOAD, "a", ""),
        # A repository may itself be called "manifests": the last marker wins.
        ("/v2/x/manifests/manifests/latest", Endpoint.MANIFEST, "x/manifests", "latest"),
    ],
)
def test_parse_api_path(path: str, endpoint: Endpoint, name: str, reference: str) -> None:
    parsed = parse_api_path(path)
    assert (parsed.endpoint, parsed.name, parsed.reference) == (endpoint, name, reference)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/../etc/passwd/manifests/x",
        "/v2/a%2F..%2Fb/manifests/x",
        "/v2/A/manifests/x",
        "/v2//manifests/x",
    ],
)
def test_parse_api_path_rejects_bad_names(path: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_api_path(path)
    assert info.value.code.status == 400


@pytest.mark.parametrize("path", ["/v3/", "/v2/a/other/x", "/v2/a/manifests/", "/etc/passwd"])
def test_parse_api_path_unknown(path: str) -> None:
    with pytest.raises(NotFound):
        parse_api_path(path)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, ByteRange(0, 4)),
        ("bytes=5-", 10, ByteRange(5, 9)),
        ("bytes=-3", 10, ByteRange(7, 9)),
        ("bytes=-30", 10, ByteRange(0, 9)),
        ("bytes=8-100", 10, ByteRange(8, 9)),
        ("bytes=0-0", 10, ByteRange(0, 0)),
        ("bytes=5-2", 10, None),  # invalid: ignored
        ("bytes=0-1,4-5", 10, None),  # several ranges: whole entity
        ("items=0-1", 10, None),
        ("bytes=-", 10, None),
        ("bytes=0-99999999999999999999", 10, ByteRange(0, 9)),  # an end past any blob
        ("bytes=-99999999999999999999", 10, ByteRange(0, 9)),  # a suffix longer than any
        ("bytes=0-" + "1" * 5000, 10, ByteRange(0, 9)),  # more digits than int() parses
        ("bytes=00000000000000000000003-4", 10, ByteRange(3, 4)),  # leading zeros
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10-", 10),
        ("bytes=-0", 10),
        ("bytes=0-", 0),
        # A start beyond the blob is unsatisfiable however many digits it has.
        ("bytes=99999999999999999999-", 10),
        ("bytes=9223372036854775807-", 10),
        ("bytes=18446744073709551615-18446744073709551616", 10),
        ("bytes=" + "9" * 5000 + "-", 10),
    ],
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


@given(st.text(max_size=300))
def test_name_validation_never_admits_traversal(value: str) -> None:
    try:
        name = validate_name(value)
    except RegistryError as exc:
        assert exc.code.status == 400
        return
    assert ".." not in name.split("/") and "%" not in name and not name.startswith("/")
    assert set(name) <= set(string.ascii_lowercase + string.digits + "._-/")


@given(st.text(alphabet=string.printable, max_size=120))
def test_parse_api_path_only_raises_registry_errors(tail: str) -> None:
    try:
        parsed = parse_api_path("/v2/" + tail)
    except RegistryError as exc:
        assert 400 <= exc.code.status < 500
        return
    if parsed.name:
        assert validate_name(parsed.name) == parsed.name


@given(
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=0, max_value=10**12),
    st.integers(min_value=1, max_value=10**12),
)
def test_parse_range_stays_inside_the_entity(first: int, last: int, size: int) -> None:
    try:
        result = parse_range(f"bytes={first}-{last}", size)
    except RangeNotSatisfiable:
        assert first >= size
        return
    if result is not None:
        assert 0 <= result.start <= result.end < size


@given(st.text(max_size=60), st.integers(min_value=0, max_value=10**9))
def test_parse_range_never_crashes(header: str, size: int) -> None:
    try:
        result = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if result is not None:
        assert 0 <= result.start <= result.end < size
