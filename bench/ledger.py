"""QuickBooks -> ServiceNow: time, calls and peak memory of a first sync of N bills (the
query fallback: no watermark yet), at two sizes. The emulators run in this process, the
sync in a child that reports its own peak RSS (VmHWM). The ServiceNow emulator scans its
tables linearly, so the larger size costs it more than it costs mlconnector.

usage: python bench/ledger.py [SMALL] [LARGE]
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w


def run(n: int) -> tuple[float, float, int]:
    from mlconnector.sandbox import QuickBooksSandbox, ServiceNowSandbox

    qbo, sn = QuickBooksSandbox().start(), ServiceNowSandbox().start()
    qbo.per_minute = 10**9  # the real 500 a minute would make this a bench of waiting
    try:
        office = qbo.add_account("Office Supplies")["Id"]
        sn.add_gl_account("600100", "Office Supplies")
        vendors = [qbo.add_vendor(f"Vendor {i:03d}")["Id"] for i in range(50)]
        for i in range(n):
            qbo.add_bill(vendors[i % 50], [{"amount": f"{100 + i % 900}.{i % 100:02d}",
                                            "account_id": office}], doc_number=f"B-{i:06d}")
        work = Path(tempfile.mkdtemp(prefix="mlc-bench-ledger-"))
        path = work / "connectors.toml"
        path.write_text(tomli_w.dumps({
            "settings": {"data_dir": str(work / "data")},
            "systems": {"qbo": {"type": "quickbooks", "client_id": qbo.client_id,
                                "base_url": qbo.base_url, "auth_url": qbo.auth_url,
                                "realm_id": qbo.realm_id},
                        "sn": {"type": "servicenow", "base_url": sn.base_url,
                               "client_id": sn.client_id}},
            "pairs": {"quickbooks-servicenow": {
                "source": "qbo", "target": "sn",
                "lookups": {"gl_accounts": {"Office Supplies": "600100"}}}}}))
        env = dict(os.environ, MLCONNECTOR_QBO_CLIENT_SECRET=qbo.client_secret,
                   MLCONNECTOR_QBO_REFRESH_TOKEN=qbo.issue_refresh_token(),
                   MLCONNECTOR_SN_CLIENT_SECRET=sn.client_secret,
                   PYTHON_KEYRING_BACKEND="mlconnector.sandbox.keyring_backend.SandboxKeyring",
                   MLCONNECTOR_SANDBOX_KEYRING=str(work / "keyring.json"))
        code = ("import runpy, sys\n"
                f"sys.argv = ['mlconnector', '--config', {str(path)!r}, 'sync', "
                "'quickbooks-servicenow']\n"
                "try:\n    runpy.run_module('mlconnector', run_name='__main__')\n"
                "except SystemExit:\n    pass\n"
                "print([line.split()[1] for line in open('/proc/self/status')\n"
                "       if line.startswith('VmHWM')][0], file=sys.stderr)")
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True)
        seconds = time.monotonic() - started
        invoices = len(sn.rows("sn_shop_invoice"))
        assert invoices == n, done.stdout + done.stderr
        calls = len(sn.request_log) + len(qbo.request_log)
        return seconds, int(done.stderr.strip().splitlines()[-1]) / 1024, calls
    finally:
        qbo.stop()
        sn.stop()


small = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000
large = int(sys.argv[2]) if len(sys.argv) > 2 else 5_000
(t1, m1, c1), (t2, m2, c2) = run(small), run(large)
print(f"ledger: {small} bills in {t1:.1f} s ({c1} calls, {small / t1:.0f} bills/s), "
      f"peak RSS {m1:.1f} MB")
print(f"ledger: {large} bills in {t2:.1f} s ({c2} calls, {large / t2:.0f} bills/s), "
      f"peak RSS {m2:.1f} MB; memory ratio {m2 / m1:.2f}x")
