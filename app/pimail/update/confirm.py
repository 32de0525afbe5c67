"""The mail check of pimail-update-confirm: is pimail on this slot serving mail?

SMTP on the first inbound listener greets, answers EHLO, and accepts the
first account as a recipient (the directory and the store answer RCPT; the
postmaster is not used: a box set up headless may have no postmaster alias);
the transaction is then reset, so nothing is delivered. IMAP on the first
listener greets. On a box not yet set up (no account) the greetings alone are
checked. Exit status 0 when all pass; the failure on stderr.
`python3 -m pimail.update.confirm [--config FILE]`
"""

from __future__ import annotations

import argparse
import smtplib
import socket
import sys

from .. import config, db
from ..auth.accounts import Directory


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def check(settings: config.Settings, timeout: float = 30.0) -> None:
    """Raises RuntimeError naming what failed."""
    accounts: list[str] = []
    if settings.db_path.exists():
        con = db.open_main(settings.db_path)
        try:
            accounts = [a.address for a in Directory(con).accounts()]
        finally:
            con.close()
    host, port = _host_port(settings.smtp.listen[0])
    try:
        with smtplib.SMTP(host, port, local_hostname="localhost", timeout=timeout) as smtp:
            code, _ = smtp.ehlo()
            if code != 250:
                raise RuntimeError(f"SMTP EHLO answered {code}")
            if accounts:
                code, text = smtp.mail("<>")
                if code != 250:
                    raise RuntimeError(f"SMTP MAIL answered {code} {text!r}")
                code, text = smtp.rcpt(accounts[0])
                if code not in (250, 251):
                    raise RuntimeError(f"SMTP RCPT {accounts[0]} answered {code}")
                smtp.rset()
    except (OSError, smtplib.SMTPException) as e:
        raise RuntimeError(f"SMTP on {host}:{port}: {e}") from e
    host, port = _host_port(settings.imap.listen[0])
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            greeting = s.recv(512)
            s.sendall(b"a LOGOUT\r\n")
    except OSError as e:
        raise RuntimeError(f"IMAP on {host}:{port}: {e}") from e
    if not greeting.startswith(b"* OK"):
        raise RuntimeError(f"IMAP on {host}:{port} greeted {greeting[:40]!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m pimail.update.confirm")
    p.add_argument("--config", default="/etc/pimail/pimail.toml")
    args = p.parse_args(argv)
    try:
        check(config.load(args.config, None))
    except (RuntimeError, config.ConfigError) as e:
        print(f"pimail-update-confirm: {e}", file=sys.stderr)
        return 1
    print("pimail-update-confirm: mail check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
