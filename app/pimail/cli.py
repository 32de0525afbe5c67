"""The `pimail` command: serve, and manage domains, users, aliases and the index.

Management commands write `pimail.db` directly; they work while the server
runs, and the server sees each change at the next lookup (it caches nothing).
Passwords are never taken from the command line (it shows in `ps` and shell
history): they are asked at a prompt on a terminal, else read from stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import shutil
import sys
import time
from pathlib import Path

from . import __version__, config, db
from .auth.accounts import Directory, DirectoryError
from .auth.passwords import hash_password

MIN_PASSWORD = 8


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = config.load(args.config, args.data)
    except config.ConfigError as e:
        print(f"pimail: configuration: {e}", file=sys.stderr)
        return 2
    try:
        return args.func(settings, args) or 0
    except (DirectoryError, config.ConfigError, ValueError) as e:
        print(f"pimail: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pimail", description="A mail server for a Raspberry Pi.")
    p.add_argument("--version", action="version", version=f"pimail {__version__}")
    p.add_argument("--config", help="TOML settings file (default: $PIMAIL_CONFIG)")
    p.add_argument("--data", help="data directory (overrides the settings)")
    sub = p.add_subparsers(metavar="COMMAND")

    s = sub.add_parser("serve", help="run the server")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("domain", help="local mail domains").add_subparsers(metavar="ACTION")
    x = d.add_parser("add", help="add a domain")
    x.add_argument("name")
    x.set_defaults(func=cmd_domain_add)
    x = d.add_parser("list", help="list domains")
    x.set_defaults(func=cmd_domain_list)
    x = d.add_parser("remove", help="remove a domain without accounts")
    x.add_argument("name")
    x.set_defaults(func=cmd_domain_remove)

    u = sub.add_parser("user", help="mail accounts").add_subparsers(metavar="ACTION")
    x = u.add_parser("add", help="add an account (password from a prompt or stdin)")
    x.add_argument("address")
    x.add_argument("--admin", action="store_true", help="may use the admin pages")
    x.set_defaults(func=cmd_user_add)
    x = u.add_parser("list", help="list accounts")
    x.set_defaults(func=cmd_user_list)
    x = u.add_parser("remove", help="remove an account (its mail is moved aside, not deleted)")
    x.add_argument("address")
    x.set_defaults(func=cmd_user_remove)
    x = u.add_parser("passwd", help="set an account's password (from a prompt or stdin)")
    x.add_argument("address")
    x.set_defaults(func=cmd_user_passwd)

    a = sub.add_parser("alias", help="aliases and catch-alls").add_subparsers(metavar="ACTION")
    x = a.add_parser("add", help="alias SOURCE (local@domain or @domain) to TARGET...")
    x.add_argument("source")
    x.add_argument("targets", nargs="+")
    x.set_defaults(func=cmd_alias_add)
    x = a.add_parser("list", help="list aliases")
    x.set_defaults(func=cmd_alias_list)
    x = a.add_parser("remove", help="remove an alias (or only some of its targets)")
    x.add_argument("source")
    x.add_argument("targets", nargs="*")
    x.set_defaults(func=cmd_alias_remove)

    x = u.add_parser("hash", help="print a password hash (for pimail.toml), password from stdin")
    x.set_defaults(func=cmd_user_hash)

    st = sub.add_parser("setup", help="headless setup").add_subparsers(metavar="ACTION")
    x = st.add_parser("apply", help="apply a pimail.toml [setup] table (domain, admin, hash)")
    x.add_argument("file")
    x.set_defaults(func=cmd_setup_apply)

    r = sub.add_parser("reindex", help="rebuild the mail index from the Maildirs")
    r.set_defaults(func=cmd_reindex)

    t = sub.add_parser("cert", help="TLS certificates").add_subparsers(metavar="ACTION")
    x = t.add_parser("ca", help="print the internal CA certificate (PEM) to trust on devices")
    x.set_defaults(func=cmd_cert_ca)
    x = t.add_parser("status", help="the certificates in use: names, issuer, expiry")
    x.set_defaults(func=cmd_cert_status)
    x = t.add_parser("renew", help="get an ACME certificate now (the server answers HTTP-01)")
    x.set_defaults(func=cmd_cert_renew)

    c = sub.add_parser("config", help="settings").add_subparsers(metavar="ACTION")
    x = c.add_parser("show", help="print the settings in force")
    x.set_defaults(func=cmd_config_show)
    x = c.add_parser("set", help="store a setting in the database (KEY JSON-VALUE)")
    x.add_argument("key")
    x.add_argument("value")
    x.set_defaults(func=cmd_config_set)
    x = c.add_parser("unset", help="remove a setting from the database")
    x.add_argument("key")
    x.set_defaults(func=cmd_config_unset)
    return p


def _directory(settings: config.Settings) -> Directory:
    return Directory(db.open_main(settings.db_path))


def cmd_serve(settings: config.Settings, args: argparse.Namespace) -> int:
    from .app import AlreadyRunning, configure_logging, serve

    configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except AlreadyRunning as e:
        print(f"pimail: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_domain_add(settings: config.Settings, args: argparse.Namespace) -> None:
    print(f"added domain {_directory(settings).add_domain(args.name)}")


def cmd_domain_list(settings: config.Settings, args: argparse.Namespace) -> None:
    for name in _directory(settings).domains():
        print(name)


def cmd_domain_remove(settings: config.Settings, args: argparse.Namespace) -> None:
    _directory(settings).remove_domain(args.name)
    print(f"removed domain {args.name}")


def read_password(prompt: str = "Password: ") -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != first:
            raise ValueError("the passwords differ")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
    return password


def cmd_user_add(settings: config.Settings, args: argparse.Namespace) -> None:
    directory = _directory(settings)
    # Check the address before asking for a password.
    if directory.account(args.address):
        raise DirectoryError(f"account {args.address} exists already")
    account = directory.add_account(args.address, hash_password(read_password()), args.admin)
    print(f"added account {account.address}" + (" (admin)" if args.admin else ""))


def cmd_user_list(settings: config.Settings, args: argparse.Namespace) -> None:
    for account in _directory(settings).accounts():
        print(account.address + ("  admin" if account.is_admin else ""))


def cmd_user_remove(settings: config.Settings, args: argparse.Namespace) -> None:
    account = _directory(settings).remove_account(args.address)
    maildir = settings.mail_dir / account.domain / account.localpart
    if maildir.is_dir():
        target = (
            settings.data_dir
            / "removed"
            / account.domain
            / (f"{account.localpart}-{time.strftime('%Y%m%d-%H%M%S')}")
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(maildir), target)
        print(f"removed account {account.address}; its mail is kept in {target}")
    else:
        print(f"removed account {account.address}")


def cmd_user_passwd(settings: config.Settings, args: argparse.Namespace) -> None:
    directory = _directory(settings)
    if directory.account(args.address) is None:
        raise DirectoryError(f"no account {args.address}")
    directory.set_password(args.address, hash_password(read_password("New password: ")))
    print(f"password changed for {args.address}")


def cmd_user_hash(settings: config.Settings, args: argparse.Namespace) -> None:
    print(hash_password(read_password()))


def cmd_setup_apply(settings: config.Settings, args: argparse.Namespace) -> int:
    """Headless first boot: what a [setup] table asks for, idempotently.

    [setup]
    domain = "example.org"
    hostname = "mail.example.org"       # optional
    admin = "admin@example.org"
    password_hash = "$scrypt$..."       # from `pimail user hash`
    setup_token = "..."                 # optional: the web wizard asks for it
    """
    import tomllib

    with open(args.file, "rb") as f:
        setup = tomllib.load(f).get("setup", {})
    if not isinstance(setup, dict) or not setup:
        print(f"pimail: {args.file} has no [setup] table", file=sys.stderr)
        return 1
    directory = _directory(settings)
    if "domain" in setup and not directory.is_local_domain(setup["domain"]):
        print(f"added domain {directory.add_domain(setup['domain'])}")
    if "hostname" in setup:
        config.validate_override("hostname", setup["hostname"])
        directory.con.execute(
            "INSERT INTO settings (key, value) VALUES ('hostname', ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (json.dumps(setup["hostname"]),),
        )
        print(f"hostname = {setup['hostname']}")
    if "admin" in setup:
        stored = setup.get("password_hash", "")
        if not stored.startswith("$scrypt$"):
            print("pimail: [setup] admin needs a password_hash (pimail user hash)", file=sys.stderr)
            return 1
        if directory.account(setup["admin"]) is None:
            account = directory.add_account(setup["admin"], stored, is_admin=True)
            print(f"added account {account.address} (admin)")
    if "setup_token" in setup:
        token = settings.data_dir / "setup-token"
        token.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(str(setup["setup_token"]) + "\n")
        print("setup token stored")
    return 0


def cmd_alias_add(settings: config.Settings, args: argparse.Namespace) -> None:
    _directory(settings).add_alias(args.source, args.targets)
    print(f"alias {args.source} -> {', '.join(args.targets)}")


def cmd_alias_list(settings: config.Settings, args: argparse.Namespace) -> None:
    for source, targets in _directory(settings).aliases():
        print(f"{source} -> {', '.join(targets)}")


def cmd_alias_remove(settings: config.Settings, args: argparse.Namespace) -> None:
    _directory(settings).remove_alias(args.source, args.targets)
    print(f"removed alias {args.source}")


def cmd_reindex(settings: config.Settings, args: argparse.Namespace) -> int:
    from .app import AlreadyRunning, lock_data_dir
    from .store.store import Store

    try:
        lock = lock_data_dir(settings)
    except AlreadyRunning as e:
        print(
            f"pimail: {e}: stop it first (it also reconciles the index at start)", file=sys.stderr
        )
        return 1
    try:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{settings.index_path}{suffix}").unlink(missing_ok=True)
        store = Store(settings, _directory(settings))
        report = store.open()
        # Fill the caches and the search index now, not at the first FETCH.
        analysed = 0
        while done := store.analyse_pending(500):
            analysed += done
        store.close()
    finally:
        lock.close()
    print(
        f"index rebuilt: {report.mailboxes} mailboxes, {report.added + report.renamed} messages,"
        f" {analysed} analysed"
    )
    return 0


def cmd_cert_ca(settings: config.Settings, args: argparse.Namespace) -> int:
    from .tls import ca

    try:
        print(ca.ca_pem(settings.data_dir), end="")
    except (OSError, ca.CertificateError):
        print("pimail: no internal CA yet: start the server once", file=sys.stderr)
        return 1
    return 0


def cmd_cert_status(settings: config.Settings, args: argparse.Namespace) -> int:
    from .tls import ca

    certificates = ca.live_certificates(settings.data_dir)
    if not certificates:
        print("no certificates yet: start the server once")
        return 1
    for name, info in certificates.items():
        left = info.remaining()
        print(f"{name}: serial {info.serial_hex}")
        print(f"  issuer   {info.issuer}")
        print(f"  names    {', '.join(sorted(info.names))}")
        print(f"  expires  {info.not_after:%Y-%m-%d %H:%M} UTC ({left.days} days left)")
    if settings.tls.acme:
        from .tls import acme_client

        state = acme_client.read_state(settings.data_dir)
        print(f"acme: {settings.tls.acme_directory}")
        for key in ("last_success", "last_attempt", "last_error", "failures", "next_attempt"):
            if state.get(key) not in (None, ""):
                print(f"  {key.replace('_', ' ')}: {state[key]}")
    return 0


def cmd_cert_renew(settings: config.Settings, args: argparse.Namespace) -> int:
    from .tls import acme_client

    t = settings.tls
    if not t.acme:
        print("pimail: ACME is off: pimail config set tls.acme true", file=sys.stderr)
        return 1
    request = acme_client.Request(
        data_dir=settings.data_dir,
        directory_url=t.acme_directory,
        email=t.acme_email,
        names=t.acme_names or [settings.hostname],
        ca_bundle=t.acme_ca_bundle,
        force=True,
        challenge=t.acme_challenge,
    )
    result = acme_client.run(request)
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    return 0 if result["status"] == "issued" else 1


def cmd_config_show(settings: config.Settings, args: argparse.Namespace) -> None:
    for key, value in config.as_flat_dict(settings).items():
        print(f"{key} = {json.dumps(value)}")


def cmd_config_set(settings: config.Settings, args: argparse.Namespace) -> None:
    try:
        value = json.loads(args.value)
    except json.JSONDecodeError:
        value = args.value  # a bare string
    config.validate_override(args.key, value)
    con = db.open_main(settings.db_path)
    con.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (args.key, json.dumps(value)),
    )
    print(f"{args.key} = {json.dumps(value)} (takes effect at the next start)")


def cmd_config_unset(settings: config.Settings, args: argparse.Namespace) -> None:
    con = db.open_main(settings.db_path)
    con.execute("DELETE FROM settings WHERE key = ?", (args.key,))
    print(f"{args.key} unset")


if __name__ == "__main__":
    sys.exit(main())
