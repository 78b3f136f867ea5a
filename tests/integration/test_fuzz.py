"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis): no input gives a 5xx, and the service answers
afterwards. Bounded: ``MAX_EXAMPLES`` generated requests per operation and generation mode (about 10-30 s in all).

Driven through schemathesis's strategies and hypothesis directly (its pytest plugin does not run on pytest 9).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.integration.conftest import assert_healthy

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 20


@pytest.fixture(scope="module")
def api_schema(base_url):
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_lists_the_api(api_schema):
    paths = {op.path for op in _operations(api_schema)}
    assert {"/v1/predict", "/v1/embed", "/v1/segment_anything", "/v1/models"} <= paths, paths


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_is_a_server_error(api_schema, base_url, mode):
    """Valid-looking inputs and schema-violating ones, for every operation; anything but a 5xx is fine here (the
    4xx messages themselves are tested one by one elsewhere)."""
    failures: list[str] = []
    counts: dict[str, int] = {}
    for operation in _operations(api_schema):
        label = f"{operation.method.upper()} {operation.path}"

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, phases=[Phase.generate], database=None,
                  suppress_health_check=list(HealthCheck), derandomize=True)
        def run(case):
            # A valid multipart upload carries a real (1x1 PNG) image that costs a full encoder pass (and a whole
            # segment_anything run): multipart is fuzzed with invalid inputs only, JSON bodies both ways.
            assume(mode == GenerationMode.NEGATIVE or not (case.media_type or "").startswith("multipart/"))
            response = case.call(base_url=base_url, timeout=120)
            counts[label] = counts.get(label, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{label} -> {response.status_code}: {response.text[:300]}\n"
                                f"{case.as_curl_command()[:600]}")

        try:
            run()
        except Unsatisfiable:  # nothing to violate (e.g. GET /v1/models takes no input)
            assert mode == GenerationMode.NEGATIVE, label
    print(f"\n{mode.value}: {sum(counts.values())} requests over {len(counts)} operations")
    assert len(counts) >= 4
    assert not failures, "\n\n".join(failures[:5])


def test_service_answers_after_fuzzing(base_url, http):
    assert_healthy(base_url)
    r = http.get(f"{base_url}/v1/models", timeout=60)
    assert r.status_code == 200 and r.json()[0]["name"] == "sam2.1-hiera-tiny"
