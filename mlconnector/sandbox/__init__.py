"""Offline emulators of the six APIs, served over HTTP on 127.0.0.1, for the tests, the
bench scripts and `mlconnector demo`. They follow the fact sheets in `api/`, not the
connectors."""

from .bill import BillSandbox
from .freshbooks import FreshBooksSandbox
from .quickbooks import QuickBooksSandbox
from .salesforce import SalesforceSandbox
from .server import Knobs
from .servicenow import ServiceNowSandbox
from .servicetitan import ServiceTitanSandbox

__all__ = ["BillSandbox", "FreshBooksSandbox", "Knobs", "QuickBooksSandbox",
           "SalesforceSandbox", "ServiceNowSandbox", "ServiceTitanSandbox"]
