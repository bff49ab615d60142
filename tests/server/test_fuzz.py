"""schemathesis over the live server's own /openapi.json: requests generated from the document, valid and not,
must never get a 5xx, must be refused when they break the document, and every response must be one the
document describes (status code, content type, body schema)."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.helpers import LiveServer

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES_PER_OPERATION = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def live(demo_model_dir):
    """Short answers (at most 4 tokens) keep each generated request quick."""
    server = LiveServer(demo_model_dir, "--api-key", KEY, "--max-output-tokens", "4")
    yield server
    server.stop()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_keeps_to_the_document(live, mode):
    api = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 7

    for operation in operations:
        if mode.is_negative and not operation.body:
            continue  # GET /health, /v1/models, /metrics take nothing that could break the document
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def keeps_to_the_document(case):
            case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=60)

        keeps_to_the_document()
