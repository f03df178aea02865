"""The app against its own OpenAPI document with schemathesis (issue 15, "Also"): bounded generation of valid
and invalid requests for every operation; every response must be documented, match its schema, and no 5xx.

The bound is ``EXAMPLES`` cases per operation and mode (~40 s on 2 cores for all; ``$SCHEMATHESIS_EXAMPLES``
raises it for a longer run)."""

import os

import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module", params=["mlm", "ner", "classification"])
def schema(request, services, make_app):
    from fastapi.testclient import TestClient

    app = make_app(services[request.param], max_body_bytes=1 << 16)
    with TestClient(app):  # runs the lifespan (batchers closed at the end)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        # over max_texts_per_request is refused with 413 (documented), a rejection schemathesis does not list
        rejection = schema.config.checks.negative_data_rejection
        rejection.expected_statuses = [*rejection.expected_statuses, "413"]  # a new list: the default is shared
        yield schema


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_no_5xx_and_no_schema_violation(schema, mode):
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/embeddings", "/v1/classify", "/v1/ner", "/v1/fill-mask"}
    for op in operations:
        if mode == GenerationMode.NEGATIVE and op.method.upper() != "POST":
            continue  # GET /healthz, /metrics, /v1/models take no input: nothing to make invalid
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call()
            checks = CHECKS + ([negative_data_rejection] if mode == GenerationMode.NEGATIVE else [])
            case.validate_response(response, checks=checks)

        check()
