"""`python -m pimail.tls.ensure`: make sure the internal CA and server certificate exist.

The server runs this as a short-lived child process at start (and later on
its renewal schedule), so that the `cryptography` library never loads into
the long-running server (about 8 MB of RSS on a 512 MB Pi). Arguments come
as one JSON object on the command line; the result is one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import clock
from .ca import CA_KEY, ca_dir, ensure_certificates


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    data_dir = Path(request["data_dir"])
    time_wait = float(request.get("time_wait", 0))
    if time_wait > 0 and not (ca_dir(data_dir) / CA_KEY).exists():
        # The first CA: worth waiting a little for network time (clock.py).
        clock.wait_for_sync(time_wait)
    synced = clock.synchronized()
    result = ensure_certificates(
        data_dir,
        request["hostname"],
        request.get("domains", []),
        request.get("extra_names", []),
        clock_synced=synced is not False,
    )
    print(
        json.dumps(
            {
                "name": result.name,
                "serial": result.info.serial_hex,
                "not_after": result.info.not_after.isoformat(),
                "issued": result.issued,
                "reason": result.reason,
                "clock_synced": synced,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
