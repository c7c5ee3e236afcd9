"""Offline emulators of the FreshBooks and BILL APIs, served over HTTP on 127.0.0.1, for the
tests, the bench scripts and `mlconnector demo`. They follow the fact sheets in
`api/freshbooks.md` and `api/bill.md`, not the connectors."""

from .bill import BillSandbox
from .freshbooks import FreshBooksSandbox
from .server import Knobs

__all__ = ["BillSandbox", "FreshBooksSandbox", "Knobs"]
