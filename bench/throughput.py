"""10,000 bills against the zero-latency sandbox: a first `mlconnector sync` versus a plain
requests loop making the same BILL calls (target ≤ 1.3×).

usage: python bench/throughput.py [N]
"""

import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))
from _common import prepare  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000


def plain_loop(fb, bill) -> float:
    """The same work, hand-written: page FreshBooks, create vendors and bills in BILL."""
    s = requests.Session()
    t = time.perf_counter()
    tok = s.post(f"{fb.base_url}/auth/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": fb.issue_refresh_token(),
        "client_id": fb.client_id, "client_secret": fb.client_secret}).json()["access_token"]
    fbh = {"Authorization": f"Bearer {tok}"}
    root = f"{fb.base_url}/accounting/account/{fb.account_id}"
    login = s.post(f"{bill.base_url}/v3/login", json={
        "username": bill.username, "password": bill.password,
        "organizationId": bill.organization_id, "devKey": bill.dev_key}).json()
    bh = {"devKey": bill.dev_key, "sessionId": login["sessionId"]}
    vendor_map = {}
    page = 1
    while True:
        r = s.get(f"{root}/bill_vendors/bill_vendors", headers=fbh,
                  params={"page": page, "per_page": 100}).json()["response"]["result"]
        for v in r["bill_vendors"]:
            s.get(f"{bill.base_url}/v3/vendors", headers=bh,
                  params={"filters": f'name:eq:"{v["vendor_name"]}"'})
            made = s.post(f"{bill.base_url}/v3/vendors", headers=bh,
                          json={"name": v["vendor_name"]}).json()
            vendor_map[v["vendorid"]] = made["id"]
        if page >= r["pages"]:
            break
        page += 1
    page = 1
    seen_vendor = set()
    while True:
        r = s.get(f"{root}/bills/bills", headers=fbh,
                  params={"page": page, "per_page": 100}).json()["response"]["result"]
        for b in r["bills"]:
            vid = vendor_map[b["vendorid"]]
            if vid not in seen_vendor:
                seen_vendor.add(vid)
                s.get(f"{bill.base_url}/v3/bills", headers=bh,
                      params={"filters": f'vendorId:eq:"{vid}"', "max": 100})
            s.post(f"{bill.base_url}/v3/bills", headers=bh, json={
                "vendorId": vid, "dueDate": b["due_date"],
                "invoice": {"invoiceNumber": b["bill_number"], "invoiceDate": b["issue_date"]},
                "billLineItems": [{"amount": float(li["amount"]["amount"]),
                                   "description": li["description"]} for li in b["lines"]]})
        if page >= r["pages"]:
            break
        page += 1
    return time.perf_counter() - t


fb, bill, path, env = prepare(n)
try:
    baseline = plain_loop(fb, bill)
finally:
    fb.stop()
    bill.stop()

fb, bill, path, env = prepare(n)
try:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mlconnector", "--config", str(path), "sync",
                           "freshbooks-bill"], env=env, capture_output=True, text=True)
    ours = time.perf_counter() - t
    assert len(bill.bills) == n, done.stdout + done.stderr
finally:
    fb.stop()
    bill.stop()
print(f"throughput: {n} bills: mlconnector {ours:.1f} s ({n / ours:.0f} bills/s), plain "
      f"requests loop {baseline:.1f} s ({n / baseline:.0f} bills/s): ratio {ours / baseline:.2f}×")
