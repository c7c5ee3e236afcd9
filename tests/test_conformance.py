"""What every connector promises the engine, checked the same way for each: its error table
maps the API's own answers onto what the engine does (re-authenticate, retry, hold, park,
abort) and keeps the server's code and message; its endpoints are named in the users'
words; a read-only system refuses writes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from requests.structures import CaseInsensitiveDict

from mlconnector.clock import FakeClock
from mlconnector.connectors import bill, freshbooks, quickbooks, salesforce, servicenow
from mlconnector.errors import (
    AuthError,
    NotFound,
    ReauthRequired,
    RejectedError,
    RetryableError,
    Throttled,
    UnavailableError,
)
from mlconnector.http import Response, default_classify


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    text = body if isinstance(body, str) else json.dumps(body)
    parsed = None if isinstance(body, str) else body
    return Response(status, CaseInsensitiveDict(headers or {}), parsed, text, 0.01)


# system -> (classify, {situation: an answer in that API's own words})
CASES: dict[str, tuple[Any, dict[str, Response]]] = {
    "freshbooks": (freshbooks.classify, {
        "expired": answer(401, {"response": {"errors": [{"errno": 1003, "message":
                                                          "The server could not verify"}]}}),
        "throttled": answer(429, {"response": {"errors": [{"errno": 429, "message": "slow"}]}},
                            {"Retry-After": "1"}),
        "missing": answer(404, {"response": {"errors": [{"errno": 1012, "message":
                                                          "Requested resource not found"}]}}),
        "refused": answer(422, {"response": {"errors": [{"errno": 1004, "field": "email",
                                                          "message": "Invalid email"}]}}),
        "down": answer(503, "<html>503 Service Temporarily Unavailable</html>"),
    }),
    "bill": (bill.classify, {
        "expired": answer(401, [{"code": "BDC_1109", "message": "Session is invalid."}]),
        "throttled": answer(429, [{"code": "BDC_1322", "message": "Max concurrent"}]),
        "missing": answer(404, [{"code": "BDC_1001", "message": "not found"}]),
        "refused": answer(400, [{"code": "BDC_1002", "message": "invoiceNumber is invalid"}]),
        "down": answer(503, [{"code": "BDC_1001", "message": "system error"}]),
    }),
    "quickbooks": (quickbooks.classify, {
        "expired": answer(401, {"fault": {"error": [{"message": "AuthenticationFailed",
                                                     "code": "3200"}],
                                          "type": "AUTHENTICATION"}}),
        "throttled": answer(429, '<IntuitResponse><Fault type="SERVICE"><Error code="3001">'
                                 '<Message>ThrottleExceeded</Message></Error></Fault>'
                                 '</IntuitResponse>'),
        "missing": answer(400, {"Fault": {"Error": [{"Message": "Object Not Found",
                                                     "code": "610"}],
                                          "type": "ValidationFault"}}),
        "refused": answer(400, {"Fault": {"Error": [{"Message": "Error parsing query",
                                                     "code": "4000"}],
                                          "type": "ValidationFault"}}),
        "down": answer(503, {"Fault": {"Error": [{"Message": "SystemFault", "code": "10000"}],
                                       "type": "SystemFault"}}),
    }),
    "servicenow": (servicenow.classify, {
        "expired": answer(401, {"error": {"message": "User Not Authenticated",
                                          "detail": "Required to provide Auth information"},
                                "status": "failure"}),
        "throttled": answer(429, {"error": {"message": "Rate limit exceeded", "detail": None},
                                  "status": "failure"}, {"Retry-After": "30"}),
        "missing": answer(404, {"error": {"message": "No Record found", "detail": None},
                                "status": "failure"}),
        "refused": answer(400, {"error": {"message": "Invalid date", "detail": "invoice_date"},
                                "status": "failure"}),
        "down": answer(502, "Bad Gateway"),
    }),
    "salesforce": (salesforce.classify, {
        "expired": answer(401, [{"message": "Session expired or invalid",
                                 "errorCode": "INVALID_SESSION_ID"}]),
        "missing": answer(404, [{"message": "The requested resource does not exist",
                                 "errorCode": "NOT_FOUND"}]),
        "refused": answer(400, [{"message": "Required fields are missing: [Name]",
                                 "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["Name"]}]),
        "down": answer(503, [{"message": "unavailable", "errorCode": "SERVER_UNAVAILABLE"}]),
    }),
}
EXPECTED = {"expired": ReauthRequired, "throttled": (Throttled, RetryableError),
            "missing": NotFound, "refused": RejectedError, "down": RetryableError}


def engine_view(classify, resp: Response, system: str):
    """What the HTTP layer hands the engine: the connector's table, then the defaults."""
    return classify(resp) or default_classify(resp, system, FakeClock())


@pytest.mark.parametrize("system,situation", [(s, k) for s, (_, cases) in CASES.items()
                                              for k in cases])
def test_error_tables_map_each_situation_to_the_engines_action(system, situation):
    classify, cases = CASES[system]
    err = engine_view(classify, cases[situation], system)
    assert isinstance(err, EXPECTED[situation]), (system, situation, err)
    if situation == "refused":  # the server's own words reach the person
        body = cases[situation].text
        assert any(word in str(err) for word in ("invalid", "Invalid", "parsing", "Required")
                   if word in body)


def test_rate_limit_waits_honour_the_api():
    qbo = quickbooks.classify(CASES["quickbooks"][1]["throttled"])
    assert isinstance(qbo, Throttled) and qbo.retry_after == 60  # Intuit: wait 60 s
    sn = engine_view(servicenow.classify, CASES["servicenow"][1]["throttled"], "servicenow")
    assert isinstance(sn, Throttled) and sn.retry_after == 30    # Retry-After


def test_permissions_and_spent_quotas_stop_the_run_with_what_to_do():
    sn = servicenow.classify(answer(403, {"error": {"message": "Operation Failed", "detail":
                                                    "ACL Exception Insert Failed"},
                                          "status": "failure"}))
    assert isinstance(sn, AuthError) and "import_set_loader" in (sn.fix or "")
    sf = salesforce.classify(answer(403, [{"message": "TotalRequests Limit exceeded.",
                                           "errorCode": "REQUEST_LIMIT_EXCEEDED"}]))
    assert isinstance(sf, UnavailableError)  # exit 5: the next run carries on


def test_a_fault_in_a_200_is_still_an_error():
    fb = freshbooks.classify(answer(200, {"response": {"errors": [{"errno": 1005,
                                                                   "message": "Parse error"}]}}))
    qb = quickbooks.classify(answer(200, {"Fault": {"Error": [{"Message": "x", "code": "4001"}],
                                                    "type": "ValidationFault"}}))
    assert isinstance(fb, RejectedError) and isinstance(qb, RejectedError)


CONNECTORS = [freshbooks.FreshBooks, bill.Bill, quickbooks.QuickBooks,
              servicenow.ServiceNow, salesforce.Salesforce]


@pytest.mark.parametrize("cls", [c for c in CONNECTORS if c.endpoints],
                         ids=lambda c: c.system_type)
def test_endpoints_are_named_in_the_users_words(cls):
    for name, ep in cls.endpoints.items():
        assert ep.label and ep.label != "record", (cls.system_type, name)


def test_read_only_systems_refuse_writes():
    conn = quickbooks.QuickBooks(http=None, realm_id="1")  # type: ignore[arg-type]
    with pytest.raises(RejectedError):
        conn.create("bills", {})
    with pytest.raises(RejectedError):
        conn.update("bills", "1", {})
