"""Shared set-up for the bench scripts: sandboxes seeded with N bills, a config, env."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import tomli_w

CATEGORIES = ["Software", "Advertising", "Contractors", "Rent"]


def prepare(n_bills: int, *, latency: float = 0.0, vendors: int = 50):
    """Start both emulators, seed them and write a config; returns (fb, bill, config path,
    env). The caller stops the sandboxes."""
    from mlconnector.sandbox import BillSandbox, FreshBooksSandbox, Knobs

    fb = FreshBooksSandbox(Knobs()).start()
    bill = BillSandbox(Knobs(latency=latency)).start()
    bill.hourly_limit = 10**9  # the real 20,000 calls an hour would stop a 100k-bill run
    gl = {}
    cats = []
    for name in CATEGORIES:
        cats.append(fb.add_category(name)["categoryid"])
        gl[name] = bill.add_chart_of_account(name)["id"]
    vendor_ids = [fb.add_vendor(f"Vendor {i:03d}", primary_contact_email=f"ap{i}@v.example")
                  ["vendorid"] for i in range(vendors)]
    for i in range(n_bills):
        fb.add_bill(vendor_ids[i % vendors], bill_number=f"B-{i:06d}", lines=[
            {"categoryid": cats[i % len(cats)], "description": "work", "quantity": 1,
             "unit_cost": f"{100 + i % 900}.{i % 100:02d}"}])
    work = Path(tempfile.mkdtemp(prefix="mlc-bench-"))
    doc = {
        "settings": {"data_dir": str(work / "data")},
        "systems": {
            "books": {"type": "freshbooks", "client_id": fb.client_id, "base_url": fb.base_url},
            "ap": {"type": "bill", "base_url": bill.base_url,
                   "organization_id": bill.organization_id, "username": bill.username},
        },
        "pairs": {"freshbooks-bill": {"source": "books", "target": "ap",
                                      "lookups": {"gl_accounts": gl}}},
    }
    path = work / "connectors.toml"
    path.write_text(tomli_w.dumps(doc))
    env = dict(os.environ)
    env.update({
        "MLCONNECTOR_BOOKS_CLIENT_SECRET": fb.client_secret,
        "MLCONNECTOR_BOOKS_REFRESH_TOKEN": fb.issue_refresh_token(),
        "MLCONNECTOR_AP_DEV_KEY": bill.dev_key,
        "MLCONNECTOR_AP_PASSWORD": bill.password,
        "PYTHON_KEYRING_BACKEND": "mlconnector.sandbox.keyring_backend.SandboxKeyring",
        "MLCONNECTOR_SANDBOX_KEYRING": str(work / "keyring.json"),
    })
    return fb, bill, path, env
