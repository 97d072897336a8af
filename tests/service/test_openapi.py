"""The running HTTP API against its contract, docs/openapi.yaml (schemathesis)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings

from .. import servicekit as kit
from ..support import populate

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
schema = schemathesis.openapi.from_path(str(SPEC))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.Served]:
    url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'api.sqlite3'}"
    populate(url)
    with kit.running(url) as served:
        yield served


@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_api_conforms_to_openapi(case: schemathesis.Case, api: kit.Served) -> None:
    """Generated requests, valid and not: status codes and bodies match the document, no 5xx
    other than the documented 503 defer; the documented bearer token is enforced."""
    case.call_and_validate(base_url=api.http_url, headers=api.http_headers())


def test_document_lists_exactly_the_served_paths(api: kit.Served) -> None:
    """Every documented path is served and an undocumented one is 404."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    documented = set(yaml.safe_load(SPEC.read_text())["paths"])
    assert documented == {"/healthz", "/readyz", "/metrics", "/v1/auth", "/v1/relay"}
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(urllib.request.Request(api.http_url + "/v1/other",
                                                      headers=api.http_headers()), timeout=5)
    assert info.value.code == 404
