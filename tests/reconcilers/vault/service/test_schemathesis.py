"""schemathesis against the vault API's own OpenAPI description: cases generated from the document for every
listed operation, sent to a real, unsealed service on loopback; no answer may be a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.reconcilers.vault.service.conftest import Served

pytestmark = pytest.mark.slow

SKIP = {("PUT", "/sys/seal"), ("POST", "/sys/seal")}     # sealing would turn every later answer into 503


def test_schemathesis_finds_no_server_error(vault: Served) -> None:
    headers = {"X-Vault-Token": vault.root_token}
    doc = requests.get(f"{vault.url}/v1/sys/internal/specs/openapi", headers=headers, timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    checked: list[str] = []
    failures: list[tuple[str, str, int, str]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in SKIP:
            continue

        @settings(max_examples=15, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            answer = case.call(base_url=f"{vault.url}/v1", headers=headers, timeout=10)
            if answer.status_code >= 500:
                failures.append((case.method, case.formatted_path, answer.status_code, answer.text[:200]))

        call()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) >= 20, checked          # the document lists the API, and every operation was exercised
    assert failures == []
