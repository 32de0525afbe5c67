"""Settings: one model, three layers.

Built-in defaults (a development profile or a device profile) < a TOML file
< settings stored in the database (written by the setup wizard and the admin
pages). Every setting has exactly one home here; nothing else reads the
environment or files for configuration.

TOML layout mirrors the dataclasses: top-level keys for `Settings`, one table
per section (`[smtp]`, `[imap]`, ...). Database overrides use dotted keys
(`smtp.max_message_size`) with JSON values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEV = "dev"
DEVICE = "device"


@dataclass
class SmtpSettings:
    # Inbound MX. "host:port" strings; IPv6 as "[::1]:25".
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2525"])
    # RFC 1870 SIZE, in octets, advertised and enforced.
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    # Seconds a client may stay silent before we send 421 and close.
    timeout: float = 300.0
    # While receiving DATA, the deadline grows with every octet received at
    # this rate (Postfix smtpd_min_data_rate); a trickle slower than this times out.
    min_data_rate: int = 500
    max_connections_per_ip: int = 20
    max_connections: int = 500
    max_command_line: int = 512


@dataclass
class SubmissionSettings:
    listen_starttls: list[str] = field(default_factory=lambda: ["127.0.0.1:2587"])
    listen_tls: list[str] = field(default_factory=lambda: ["127.0.0.1:2465"])
    # Per account: recipients in one message, and messages in any 60 minutes
    # (a stolen password must not turn the box into a spam cannon).
    max_recipients: int = 100
    max_messages_per_hour: int = 300


@dataclass
class DnsSettings:
    # DNS servers to ask, "host:port" (one port for all); empty: /etc/resolv.conf.
    nameservers: list[str] = field(default_factory=list)
    timeout: float = 10.0
    # Zones the device's own resolver (unbound, dns/unbound.py) asks of the given servers
    # instead of recursing from the root, unvalidated: "zone=host[:port]", or
    # "zone=tcp:host[:port]" for a server reached over TCP only. A LAN's DNS server for
    # its local names, or a DNS list served on the LAN. Read when unbound starts.
    stub_zones: list[str] = field(default_factory=list)


@dataclass
class OutboundSettings:
    """The outbound queue and its SMTP client (queue/)."""

    # The port remote MX hosts are reached on. 25 on the internet; tests use another.
    port: int = 25
    # Connections at once, in all and to one destination (a domain, or the relay).
    max_connections: int = 20
    max_per_destination: int = 4
    # Messages sent over one connection before it is closed (RFC 5321 allows many).
    messages_per_connection: int = 100
    connect_timeout: float = 30.0
    # RFC 5321 4.5.3.2 suggests 5 minutes for most replies, 10 for the end of DATA.
    command_timeout: float = 300.0
    # Retries: after retry_min seconds, doubling up to retry_max, for lifetime
    # seconds; a "still trying" notice goes to the sender after delay_notice.
    retry_min: float = 300.0
    retry_max: float = 4 * 3600.0
    lifetime: float = 5 * 86400.0
    delay_notice: float = 4 * 3600.0
    # How often the queue looks for work changed by others (`pimail queue retry`).
    poll_interval: float = 5.0
    # MTA-STS (RFC 8461): honour the policies of receiving domains.
    mta_sts: bool = True
    mta_sts_port: int = 443  # tests use another
    # Extra trust anchors (PEM) for verified TLS (MTA-STS, the relay); empty: the system's.
    ca_file: str = ""
    # Smarthost: when relay_host is set, all mail for other domains goes there.
    relay_host: str = ""
    relay_port: int = 587
    relay_security: str = "starttls"  # "starttls" (587) or "tls" (465, implicit)
    relay_username: str = ""
    relay_password: str = ""


@dataclass
class ImapSettings:
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2143"])
    listen_tls: list[str] = field(default_factory=lambda: ["127.0.0.1:2993"])
    # LOGIN/AUTHENTICATE without TLS. Off: passwords never cross in the clear.
    allow_plaintext_auth: bool = False
    # RFC 7889 APPENDLIMIT: the largest message a client may APPEND.
    max_append_size: int = 50 * 1024 * 1024
    # RFC 9051 5.4: an authenticated idle client is kept at least 30 minutes.
    timeout: float = 1800.0
    # Before login: one deadline for the whole not-authenticated state, which
    # a client dripping a byte now and then does not extend.
    login_timeout: float = 60.0
    max_connections_per_ip: int = 50
    max_connections: int = 2000


@dataclass
class Pop3Settings:
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2110"])
    listen_tls: list[str] = field(default_factory=lambda: ["127.0.0.1:2995"])
    # USER/PASS and AUTH without TLS. Off: passwords never cross in the clear.
    allow_plaintext_auth: bool = False
    # RFC 1939 3: the autologout timer is at least 10 minutes (once logged in).
    timeout: float = 600.0
    # Before login: one deadline for the whole AUTHORIZATION state (as imap.login_timeout).
    login_timeout: float = 60.0
    max_connections_per_ip: int = 20
    max_connections: int = 500


@dataclass
class StorageSettings:
    """The data directory's health (store/health.py): below this much free
    space, or read-only, or gone, pimail refuses new mail with temporary errors."""

    # The reserve: this share of the filesystem's size, and at least reserve_mib.
    reserve_percent: float = 2.0
    reserve_mib: float = 64.0
    # Seconds between looks while running: a disk that comes back is noticed
    # within this time.
    check_interval: float = 5.0


@dataclass
class WebSettings:
    listen_http: list[str] = field(default_factory=lambda: ["127.0.0.1:8080"])
    listen_https: list[str] = field(default_factory=lambda: ["127.0.0.1:8443"])
    # The HTTPS port browsers reach, when it is not that of listen_https: behind a
    # port forward (a router's, QEMU's in `./build.sh qemu`), the HTTP redirect
    # must name the forwarded port. 0: the port of listen_https.
    public_https_port: int = 0
    # Open connections (HTTP and HTTPS together); over them a new one is closed at once.
    # A browser opens ~6; 32 leave a shared office address room, and eight
    # addresses are needed to fill the total, which bench/web_attack_bench.py
    # measures at under 100 KiB per connection before login (~25 MiB in all).
    max_connections_per_ip: int = 32
    max_connections: int = 256
    # Seconds a client has to send a request head, after connecting or after a
    # response (aiohttp's keep-alive timer, which trickling bytes do not reset).
    request_timeout: float = 30.0
    # Request bodies (web/body.py). Before login (no session cookie): the login
    # form and the setup wizard's pages, read whole within a short time.
    max_body_anonymous: int = 16 * 1024
    anonymous_body_timeout: float = 10.0
    # Logged in: a form (settings, admin, mail actions), read into memory...
    max_body_form: int = 1024 * 1024
    # ...and the compose form with its attachments (web.server.MAX_BODY, 40 MiB),
    # streamed to files under the spool; this many at once, others wait
    # `upload_wait` seconds for their turn and then get 503.
    max_uploads: int = 2
    upload_wait: float = 10.0
    # Every body must arrive at `body_min_rate` octets a second on average,
    # counted after the first `body_grace` seconds, or the connection is closed.
    body_min_rate: int = 4096
    body_grace: float = 10.0


LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


@dataclass
class TlsSettings:
    # Names and addresses the internal certificate carries besides the host
    # name, mail.<domain>, autoconfig.<domain>, mta-sts.<domain> and pimail.local.
    extra_names: list[str] = field(default_factory=lambda: ["localhost", "127.0.0.1", "::1"])
    # Let's Encrypt (or any ACME CA, RFC 8555), HTTP-01 on the HTTP listener.
    acme: bool = False
    acme_directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_email: str = ""
    # Names to certify; empty: the host name.
    acme_names: list[str] = field(default_factory=list)
    # "http-01" (port 80) or "tls-alpn-01" (port 443, RFC 8737) for lines where 80 is closed.
    acme_challenge: str = "http-01"
    # A CA bundle to trust the ACME server's HTTPS with (a test CA); empty: the system's.
    acme_ca_bundle: str = ""
    # How often to check whether renewal is due (the client backs off by itself).
    acme_check_interval: float = 3600.0
    # Seconds to wait for network time (clock.py) before making the internal CA
    # when the clock was only set from the image's build date at this boot (a Pi
    # has no battery clock); 0: never wait. Certificates made before the clock is
    # synchronized are reissued once it is (tls/ca.py).
    time_wait: float = 0.0


@dataclass
class FilterSettings:
    """Inbound mail checks (filter/pipeline.py). The scores are starting points."""

    enabled: bool = True
    # The authserv-id of our Authentication-Results fields (RFC 8601 2.5); empty: the host name.
    authserv_id: str = ""
    # RFC 7489 6.3: honour p=reject with 550 5.7.1 (p=quarantine always goes to Junk).
    dmarc_reject: bool = True
    # Total score at which a recipient's copy goes to Junk, and at which the message is refused.
    junk_score: float = 5.0
    reject_score: float = 15.0
    # Bayes (filter/bayes.py): a site-wide starter model for every account
    # (filter/starter.py), then each account's own as it trains (issue 15).
    bayes: bool = True
    # The starter model file; empty: <data_dir>/starter-bayes.db (built by
    # `./build.sh run`); the device's is in the image. "off": no starter model.
    starter_model: str = ""
    # Spam and ham each an account trains before its own model joins the starter.
    starter_until: int = 200
    # How much an account's own model weighs against the starter, once it joins.
    bayes_account_weight: float = 2.0
    # Token rows kept per account's model; past it the rare, least recently trained
    # ones are expired (SpamAssassin's bayes_expiry_max_db_size). 0: no cap.
    bayes_max_tokens: int = 300_000
    # The spam probability at which the Bayes points alone reach 5.0 (see
    # filter/pipeline.py); chosen on spam-1/easy-ham-1 (bench/bayes_eval.py).
    bayes_threshold: float = 0.95
    # DNSBL/DNSWL zone entries in filter/dnsbl.py's syntax ("zen.spamhaus.org*3"); none by
    # default (DEVICE_DNSBL_ZONES is the set for a box with its own recursive resolver).
    dnsbl_zones: list[str] = field(default_factory=list)
    dnswl_zones: list[str] = field(default_factory=list)
    # Domain lists (RHSBL/URIBL: "dbl.spamhaus.org"), asked about the registrable domains
    # of the message's links and its sender's domains; at most dnsbl_max_domains links.
    dnsbl_domain_zones: list[str] = field(default_factory=list)
    dnsbl_max_domains: int = 10
    # The resolver the DNS lists are asked through, "host:port" (a local recursive one:
    # the public lists refuse the big public resolvers); empty: the one of [dns].
    dnsbl_resolver: str = ""
    dnsbl_timeout: float = 5.0
    # Client addresses that are not global (RFC 1918, CGNAT, ...) are never asked of the
    # IP lists: no public list knows them. False: ask anyway (a LAN's own list, a lab);
    # skip_networks still decides which clients are checked at all.
    dnsbl_skip_private: bool = True
    # Built-in malware screening (filter/malware.py): EICAR, executables, macros, HTML
    # smuggling, encrypted archives refused at DATA with 554 5.7.1, with or without clamd.
    malware: bool = True
    # clamd's address ("unix:/run/clamav/clamd.ctl", "127.0.0.1:3310"); empty: no virus scan.
    # The device sets it when the board has the memory for ClamAV (filter/clamav_fit.py).
    clamd: str = ""
    # clamd unreachable or failing: "tempfail" (451 4.7.0, the sender retries) or "accept".
    clamd_unreachable: str = "tempfail"
    # rspamd's address ("127.0.0.1:11333"); empty: not asked.
    rspamd: str = ""
    # "add": rspamd's score is added to ours; "replace": its action and score decide.
    rspamd_mode: str = "add"
    # Greylisting (RFC 6647) at RCPT for clients outside skip_networks: the first
    # attempt of an unknown (network, sender, recipient) gets 451 4.7.1 and is
    # accepted when retried after greylist_delay seconds (within a day).
    greylist: bool = True
    greylist_delay: float = 300.0
    # Clients here are not sender-authenticated (SPF, DKIM, DMARC, DNSBL) nor
    # greylisted: the LAN, the box itself.
    skip_networks: list[str] = field(
        default_factory=lambda: [
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
            "fe80::/10",
        ]
    )


@dataclass
class AuthSettings:
    # The login throttle (auth/throttle.py; docs/ARCHITECTURE.md "Login
    # throttling"), shared by IMAP, POP3, SMTP AUTH and the web. Failed logins
    # in any `failure_window` seconds: per client address (IPv6 per /64), per
    # account from addresses it has not logged in from, and per account from
    # an address it has logged in from within `known_address_days`. From half
    # a limit on, attempts wait first (failure_delay doubling, at most
    # max_throttle_delay); at the limit they are refused unchecked.
    max_failures: int = 10
    max_failures_per_account: int = 20
    max_failures_known_address: int = 50
    failure_window: float = 600.0
    # What every failure (and refusal) costs the client, in seconds.
    failure_delay: float = 1.0
    max_throttle_delay: float = 16.0
    known_address_days: float = 30.0
    # Keys the throttle remembers per table (bounded memory under a distributed attack).
    max_tracked: int = 10_000


@dataclass
class BackupSettings:
    """Backups with restic (backup/): what `pimail backup` and the nightly run use.
    The repository password is in <data_dir>/backup/password (mode 0600)."""

    # A restic repository: a local path (a second USB disk: "/media/backup/pimail"),
    # "sftp:user@host:/path" (or "sftp://user@host:port//path"), or
    # "s3:https://host/bucket/path". Empty: no backups.
    repository: str = ""
    # The nightly run, by the server's own scheduler, at this hour (local time).
    nightly: bool = True
    hour: int = 3
    # Seconds between runs instead of nightly at `hour` (0: nightly); for tests.
    every: float = 0.0
    # History kept (restic forget --keep-daily/--keep-weekly --prune after each run).
    keep_daily: int = 7
    keep_weekly: int = 8
    # S3-compatible stores: the access key (the secret is a secret setting).
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    # restic's memory on a 512 MB board: a soft limit for Go's heap (GOMEMLIMIT,
    # MiB) and the target pack size (MiB; restic's smallest is 4).
    memory_limit: int = 160
    pack_size: int = 4


@dataclass
class UpdateSettings:
    """System updates (update/, issue 17): RAUC bundles into the other root slot."""

    # A signed manifest naming the newest bundle, for the admin page's "check for
    # an update" (HTTPS). Empty (the default): the box never asks anyone.
    manifest_url: str = ""
    # Where the system keeps these (image/build.sh); other paths for tests.
    keyring: str = "/etc/rauc/keyring.pem"
    release_file: str = "/etc/pimail-release"
    rauc: str = "rauc"


@dataclass
class Settings:
    profile: str = DEV
    data_dir: Path = Path("./var")
    # The name this server gives itself in banners and Received: headers.
    hostname: str = field(default_factory=socket.getfqdn)
    log_level: str = "INFO"
    # The Raspberry Pi boot partition's mount point (pimail.toml, pimail-setup-token);
    # empty: none. When set and not mounted, the setup wizard answers only loopback.
    boot_dir: str = ""
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    submission: SubmissionSettings = field(default_factory=SubmissionSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    filter: FilterSettings = field(default_factory=FilterSettings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    pop3: Pop3Settings = field(default_factory=Pop3Settings)
    web: WebSettings = field(default_factory=WebSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    update: UpdateSettings = field(default_factory=UpdateSettings)

    @property
    def db_path(self) -> Path:
        """Accounts, domains, aliases, settings: primary data, back it up."""
        return self.data_dir / "pimail.db"

    @property
    def index_path(self) -> Path:
        """The mail index: derived from the Maildirs, safe to delete."""
        return self.data_dir / "index.db"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def starter_model_path(self) -> Path | None:
        """The spam filter's starter model file, None when turned off."""
        value = self.filter.starter_model.strip()
        if value.lower() in ("off", "none"):
            return None
        return Path(value) if value else self.data_dir / "starter-bayes.db"

    @property
    def queue_dir(self) -> Path:
        """The outbound queue: queue.db and the message files. Primary data."""
        return self.data_dir / "queue"


# Spamhaus ZEN: SBL, CSS, XBL (127.0.0.2-9) and PBL (10-11: end-user ranges that should not
# deliver to an MX themselves); DBL (127.0.1.2-99: listed domains) and SURBL's multi list.
DEVICE_DNSBL_ZONES = ("zen.spamhaus.org=127.0.0.[2..11]",)
DEVICE_DNSBL_DOMAIN_ZONES = ("dbl.spamhaus.org=127.0.1.[2..99]", "multi.surbl.org")


# The device's recursive resolver: unbound on loopback (overlay/etc/unbound), on a port of
# its own (systemd-resolved keeps 127.0.0.53:53 for the system).
DEVICE_RESOLVER = ("127.0.0.1:5335", "[::1]:5335")


def device_defaults() -> Settings:
    """The appliance: data on /data, standard ports on every address."""
    from .filter import clamav_fit

    any4, any6 = "0.0.0.0", "[::]"

    def both(port: int) -> list[str]:
        return [f"{any4}:{port}", f"{any6}:{port}"]

    # ClamAV runs only where the board has the memory; pimail-clamav.service decides at
    # boot and says so in a file. While clamd loads (or freshclam has no database yet)
    # mail is not held: the built-in malware screen still refuses what it knows.
    clamav = clamav_fit.read_state()
    return Settings(
        profile=DEVICE,
        data_dir=Path("/data"),
        smtp=SmtpSettings(listen=both(25)),
        submission=SubmissionSettings(listen_starttls=both(587), listen_tls=both(465)),
        imap=ImapSettings(listen=both(143), listen_tls=both(993), max_connections_per_ip=100),
        pop3=Pop3Settings(listen=both(110), listen_tls=both(995)),
        web=WebSettings(listen_http=both(80), listen_https=both(443)),
        tls=TlsSettings(extra_names=[], time_wait=60.0),
        boot_dir="/boot/firmware",
        # All of pimail's DNS goes through the image's own unbound: the DNS lists need a
        # resolver that recurses itself, and SPF, DKIM, DMARC, MX and MTA-STS answers
        # are DNSSEC-validated there and share one cache.
        dns=DnsSettings(nameservers=list(DEVICE_RESOLVER)),
        filter=FilterSettings(
            # Built into the image (image/build.sh) from the SpamAssassin corpus.
            starter_model="/usr/share/pimail/starter-bayes.db",
            dnsbl_zones=list(DEVICE_DNSBL_ZONES),
            dnsbl_domain_zones=list(DEVICE_DNSBL_DOMAIN_ZONES),
            clamd=clamav_fit.CLAMD_ADDRESS if clamav.on else "",
            clamd_unreachable="accept",
        ),
    )


class ConfigError(ValueError):
    """A setting that cannot be used; a ValueError, like any other bad value."""


def _apply(target: Any, values: dict[str, Any], where: str) -> None:
    """Lay `values` over the dataclass `target`, checking names and types."""
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            _apply(current, value, f"{where}.{key}")
            continue
        setattr(target, key, _coerce(current, value, f"{where}.{key}"))


def _coerce(current: Any, value: Any, where: str) -> Any:
    if isinstance(current, Path):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path")
        return Path(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if isinstance(current, float) and isinstance(value, int | float):
        return float(value)
    if isinstance(current, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return value
    if not isinstance(value, type(current)) or isinstance(value, bool) != isinstance(current, bool):
        raise ConfigError(f"{where}: expected {type(current).__name__}")
    return value


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"dns": {"stub_zones": [...]}} -> {"dns.stub_zones": [...]}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


# Settings that the database may not override: they say where the database is.
_FILE_ONLY = {"profile", "data_dir", "boot_dir"}


def load(
    config_file: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> Settings:
    """Defaults < TOML file < database. `data_dir` (the CLI's --data) wins over all."""
    file_values: dict[str, Any] = {}
    if config_file is None:
        config_file = os.environ.get("PIMAIL_CONFIG") or None
    if config_file is not None:
        try:
            with open(config_file, "rb") as f:
                file_values = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{config_file}: {e}") from e
    profile = file_values.get("profile", os.environ.get("PIMAIL_PROFILE", DEV))
    if profile not in (DEV, DEVICE):
        raise ConfigError(f"profile must be {DEV!r} or {DEVICE!r}")
    settings = device_defaults() if profile == DEVICE else Settings()
    _apply(settings, file_values, str(config_file))
    if data_dir is None:
        data_dir = os.environ.get("PIMAIL_DATA") or None
    if data_dir is not None:
        settings.data_dir = Path(data_dir)
    if settings.db_path.exists():
        _apply(settings, _nest(stored_overrides(settings.db_path)), "database settings")
    return settings


def stored_overrides(db_path: Path) -> dict[str, Any]:
    """The settings table, as {dotted key: value}; file-only keys are ignored."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT key, value FROM settings").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return {}
    return {k: json.loads(v) for k, v in rows if k not in _FILE_ONLY}


def validate_override(key: str, value: Any) -> None:
    """Raise ConfigError unless `key` = `value` is a valid database override."""
    if key in _FILE_ONLY:
        raise ConfigError(f"{key} can only be set in the configuration file")
    _apply(Settings(), _nest({key: value}), "setting")


SECRET_KEYS = {"outbound.relay_password", "backup.s3_secret_access_key"}


def as_flat_dict(settings: Settings, reveal: bool = False) -> dict[str, Any]:
    """Every setting by dotted key; secrets masked unless `reveal`."""
    values = flatten(dataclasses.asdict(settings))
    values["data_dir"] = str(settings.data_dir)
    for key in SECRET_KEYS:
        if values.get(key) and not reveal:
            values[key] = "********"
    return values


def parse_listen(address: str) -> tuple[str, int]:
    """'127.0.0.1:25' -> ('127.0.0.1', 25); '[::]:25' -> ('::', 25)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"bad listen address {address!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
