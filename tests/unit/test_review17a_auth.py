"""Hostile review of the control API's SigV4 check (issue 17): requests botocore signs, then
altered as an attacker or a broken client would, checked by ``authenticate``."""

from __future__ import annotations

import dataclasses

import pytest

from poller.control.auth import authenticate
from poller.control.errors import ApiError
from tests.unit.test_c3_auth import loaded_resolver, signed

pytestmark = pytest.mark.anyio


async def test_review17a_the_credential_scope_date_must_be_the_request_date() -> None:
    """The date in ``Credential=<key>/<date>/...`` was never compared with X-Amz-Date; AWS
    refuses a scope of another day (the signature itself covers X-Amz-Date's day only)."""
    resolver = await loaded_resolver()
    request = signed("GET", "/2015-03-31/event-source-mappings/")
    assert authenticate(request, resolver=resolver, region="us-east-1") is not None
    day = request.headers["x-amz-date"][:8]
    other_day = "19991231"
    header = request.headers["authorization"].replace(f"/{day}/", f"/{other_day}/")
    altered = dataclasses.replace(request, headers={**request.headers, "authorization": header})
    with pytest.raises(ApiError) as refused:
        authenticate(altered, resolver=resolver, region="us-east-1")
    assert (refused.value.status, refused.value.code) == (403, "InvalidSignatureException")
    assert f"'{other_day}' != '{day}'" in refused.value.message
