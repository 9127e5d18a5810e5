"""Fuzzing the running server with its own OpenAPI schema (schemathesis): generated requests, valid and
invalid, never get a 5xx, a status code the schema does not list, a body or header that breaks the documented
schema, or a wrong content type; invalid ones are refused. Plus the hostile bodies a generator rarely writes."""

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from svc_live import Live, live_server

from service.settings import Settings

ERROR_KEYS = {"error", "error_type", "request_id"}  # every error body (request_id: X-Request-ID)

# What the schema cannot say, the server still checks: the sparsities the checkpoint was trained for, its
# named sizes, "at most one size selector", the operator's limits on texts and tokens. A schema-valid request
# may so get a (documented) 422, and the check "schema-valid data is accepted" is left out.
EXCLUDED = [positive_data_acceptance]
KEY = "fuzz-key"


def _schema(live: Live) -> Any:
    return schemathesis.openapi.from_url(live.url + "/openapi.json")


def _fuzz(schema: Any, mode: GenerationMode, examples: int, headers: dict[str, str] | None = None) -> list[str]:
    """Run `examples` generated cases per operation (fixed seed: CI reruns the same ones); failures as text."""
    failures, sent = [], Counter[str]()
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=examples if op.method.upper() == "POST" else 10,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            sent[case.operation.label] += 1
            case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid: GET /healthz has no parameters
            assert mode is GenerationMode.NEGATIVE, op.label
        except Exception as e:  # schemathesis' failure report: the check, the response, a curl to replay it
            failures.append(f"{op.label} ({mode.value}): {e}")
    print(f"\nfuzzed ({mode.value}{', with a key' if headers else ''}): {sum(sent.values())} requests, {dict(sent)}")
    return failures


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_generated_requests_conform_to_the_schema(server: Live, mode: GenerationMode) -> None:
    failures = _fuzz(_schema(server), mode, examples=60)
    assert not failures, "\n\n".join(failures)


def test_boundary_cases_conform_to_the_schema(server: Live) -> None:
    """schemathesis' coverage cases: every bound, type and required field of every operation, just in and out."""
    schema = _schema(server)
    failures, count = [], 0
    for result in schema.get_all_operations():
        op = result.ok()
        cases = schema.iter_coverage_cases(
            op, generation_modes=list(GenerationMode), generation_config=schema.config.generation
        )
        for case in cases:
            count += 1
            try:
                case.call_and_validate(excluded_checks=EXCLUDED)
            except Exception as e:
                failures.append(f"{op.label}: {e}")
    assert count > 100 and not failures, "\n\n".join(failures[:5])
    print(f"\nboundary cases: {count} requests")


@pytest.fixture(scope="module")
def keyed(make_settings: Callable[..., Settings]) -> Iterator[Live]:
    with live_server(make_settings(api_key=KEY)) as live:
        yield live


def test_with_an_api_key_the_schema_asks_for_it_and_the_server_enforces_it(keyed: Live, server: Live) -> None:
    """With a key, schemathesis also sends each case without it and with a wrong one: both must get 401."""
    spec = httpx.get(keyed.url + "/openapi.json").json()
    assert spec["paths"]["/v1/classify"]["post"]["security"] == [{"HTTPBearer": []}]
    open_spec = httpx.get(server.url + "/openapi.json").json()  # no key: the schema does not ask for one
    assert "security" not in open_spec["paths"]["/v1/classify"]["post"]
    assert "securitySchemes" not in open_spec.get("components", {})
    failures = _fuzz(_schema(keyed), GenerationMode.POSITIVE, examples=25, headers={"Authorization": f"Bearer {KEY}"})
    assert not failures, "\n\n".join(failures)


HOSTILE_BODIES = {
    "not UTF-8": b'{"inputs": ["\xff\xfe"]}',
    "nested too deeply": b"[" * 100_000 + b"]" * 100_000,
    "a 5000-digit number": b'{"inputs": ["w1"], "latency_budget_ms": ' + b"9" * 5000 + b"}",
    "10**400 as sparsity": b'{"inputs": ["w1"], "sparsity": 1' + b"0" * 400 + b"}",
    "1e400 as sparsity": b'{"inputs": ["w1"], "sparsity": 1e400}',
    "NaN as sparsity": b'{"inputs": ["w1"], "sparsity": NaN}',
    "nested inputs": b'{"inputs": ' + b"[" * 500 + b'"w1"' + b"]" * 500 + b"}",
    "a null byte": b'{"inputs": ["w1\\u0000w2"], "size": "\\u0000"}',
    "lone surrogate": b'{"inputs": ["\\ud800"]}',
    "a huge size name": b'{"inputs": ["w1"], "size": "' + b"s" * 500_000 + b'"}',
    "10**400 texts": b'{"inputs": ' + b"1" + b"0" * 400 + b"}",
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_bodies_are_422_in_one_shape(api: httpx.Client, body: bytes) -> None:
    r = api.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and set(r.json()) == ERROR_KEYS, r.text[:300]
    assert r.json()["error_type"] == "validation" and len(r.text) < 2000  # the input is not echoed back
    assert api.get("/healthz").status_code == 200
