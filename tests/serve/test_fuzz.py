"""Schema fuzzing of the OpenAPI document with schemathesis: no 5xx on any generated
request, and every answer conforms to the schema it declares."""

from __future__ import annotations

from typing import Any

import pytest

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.serve import create_app

from .conftest import serving

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402


@pytest.mark.slow  # hundreds of generated requests through the whole app
def test_no_server_error_on_any_generated_request(local_scorer: CrossEncoderScorer) -> None:
    # Driven through hypothesis directly: schemathesis' pytest plugin does not run on
    # this pytest. A small client batch limit keeps each request cheap on a shared CPU.
    with serving(create_app(local_scorer, max_client_batch_size=16)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/rerank", "/rerank", "/score"}
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=25,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def fuzz(case: Any) -> None:
                case.call_and_validate(checks=[not_a_server_error], timeout=30)

            fuzz()
