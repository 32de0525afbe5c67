"""The `pimail` command as an administrator uses it, and the settings layers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import PimailServer
from pimail import config


@pytest.fixture
def admin(make_server) -> PimailServer:
    server: PimailServer = make_server()
    server.cli("domain", "add", "Example.ORG")
    return server


def test_domains(admin: PimailServer) -> None:
    assert admin.cli("domain", "list").stdout.split() == ["example.org"]
    admin.cli("domain", "add", "bücher.example")
    assert "xn--bcher-kva.example" in admin.cli("domain", "list").stdout
    dup = admin.cli("domain", "add", "example.org", check=False)
    assert dup.returncode == 1 and "exists already" in dup.stderr
    bad = admin.cli("domain", "add", "not a domain", check=False)
    assert bad.returncode == 1 and "not a valid domain" in bad.stderr
    admin.add_user("alice@example.org")
    busy = admin.cli("domain", "remove", "example.org", check=False)
    assert busy.returncode == 1 and "still has 1 account" in busy.stderr
    admin.cli("domain", "remove", "xn--bcher-kva.example")
    assert admin.cli("domain", "list").stdout.split() == ["example.org"]


def test_users_and_passwords(admin: PimailServer) -> None:
    out = admin.cli("user", "add", "Alice@Example.org", "--admin", input="a-long-password\n")
    assert "added account alice@example.org (admin)" in out.stdout
    assert admin.cli("user", "list").stdout.strip() == "alice@example.org  admin"
    con = sqlite3.connect(admin.data_dir / "pimail.db")
    stored = con.execute("SELECT password_hash FROM accounts").fetchone()[0]
    assert stored.startswith("$scrypt$") and "a-long-password" not in stored
    short = admin.cli("user", "add", "bob@example.org", input="short\n", check=False)
    assert short.returncode == 1 and "at least 8" in short.stderr
    for bad in (
        "bob+x@example.org",
        ".bob@example.org",
        "b..b@example.org",
        "b/b@example.org",
        "bob@other.test",
    ):
        result = admin.cli("user", "add", bad, input="a-long-password\n", check=False)
        assert result.returncode == 1, bad
    admin.cli("user", "passwd", "alice@example.org", input="another-password\n")
    changed = con.execute("SELECT password_hash FROM accounts").fetchone()[0]
    assert changed != stored
    con.close()
    # The password never appears as an argument: there is no option for it.
    assert "password" not in admin.cli("user", "add", "--help").stdout.split("options:")[1]


def test_user_remove_keeps_mail_aside(admin: PimailServer) -> None:
    import smtplib

    admin.add_user("alice@example.org")
    admin.start()
    with smtplib.SMTP("127.0.0.1", admin.smtp_port) as s:
        s.sendmail("a@remote.test", ["alice@example.org"], "Subject: keep\r\n\r\nx\r\n")
    out = admin.cli("user", "remove", "alice@example.org").stdout
    assert "kept in" in out
    kept = list((admin.data_dir / "removed" / "example.org").iterdir())
    assert len(kept) == 1 and list((kept[0] / "new").iterdir())
    # Mail for the removed account is refused from now on.
    with (
        smtplib.SMTP("127.0.0.1", admin.smtp_port) as s,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        s.sendmail("a@remote.test", ["alice@example.org"], "Subject: gone\r\n\r\nx\r\n")


def test_aliases(admin: PimailServer) -> None:
    admin.add_user("alice@example.org")
    admin.add_user("bob@example.org")
    admin.cli("alias", "add", "team@example.org", "alice@example.org", "bob@example.org")
    admin.cli("alias", "add", "@example.org", "alice@example.org")
    listing = admin.cli("alias", "list").stdout
    assert "team@example.org -> alice@example.org, bob@example.org" in listing
    assert "@example.org -> alice@example.org" in listing
    clash = admin.cli("alias", "add", "alice@example.org", "bob@example.org", check=False)
    assert clash.returncode == 1 and "is an account" in clash.stderr
    admin.cli("alias", "remove", "team@example.org", "bob@example.org")
    assert "team@example.org -> alice@example.org\n" in admin.cli("alias", "list").stdout
    admin.cli("alias", "remove", "@example.org")
    assert "@example.org ->" not in admin.cli("alias", "list").stdout.replace("team@", "")


def test_alias_loop_delivers_to_nobody_through_the_loop(admin: PimailServer) -> None:
    import smtplib

    admin.add_user("alice@example.org")
    admin.cli("alias", "add", "a@example.org", "b@example.org")
    admin.cli("alias", "add", "b@example.org", "a@example.org", "alice@example.org")
    admin.start()
    with smtplib.SMTP("127.0.0.1", admin.smtp_port) as s:
        s.sendmail("x@remote.test", ["a@example.org"], "Subject: loop\r\n\r\nx\r\n")
    assert len(admin.messages("alice@example.org")) == 1


def test_settings_layers(tmp_path: Path, admin: PimailServer) -> None:
    defaults = config.Settings()
    assert defaults.smtp.listen == ["127.0.0.1:2525"]
    assert defaults.data_dir == Path("./var")
    device = config.device_defaults()
    assert device.data_dir == Path("/data") and "0.0.0.0:25" in device.smtp.listen
    # file over defaults
    loaded = config.load(admin.config)
    assert loaded.hostname == "mx.test" and loaded.smtp.max_recipients == 100
    # database over file
    admin.cli("config", "set", "smtp.max_recipients", "7")
    admin.cli("config", "set", "hostname", "mail.example.org")
    loaded = config.load(admin.config)
    assert (loaded.smtp.max_recipients, loaded.hostname) == (7, "mail.example.org")
    assert "smtp.max_recipients = 7" in admin.cli("config", "show").stdout
    for key, value in (("data_dir", '"/x"'), ("smtp.nope", "1"), ("smtp.max_recipients", '"x"')):
        assert admin.cli("config", "set", key, value, check=False).returncode == 1
    admin.cli("config", "unset", "smtp.max_recipients")
    assert config.load(admin.config).smtp.max_recipients == 100
    bad = tmp_path / "bad.toml"
    bad.write_text("[smtp]\nmax_recipients = 'many'\n")
    with pytest.raises(config.ConfigError):
        config.load(bad)
    profile = tmp_path / "device.toml"
    profile.write_text('profile = "device"\ndata_dir = "/tmp/x"\n')
    assert config.load(profile).smtp.listen[0] == "0.0.0.0:25"


def test_cert_commands(admin: PimailServer) -> None:
    missing = admin.cli("cert", "ca", check=False)
    assert missing.returncode == 1 and "start the server once" in missing.stderr
    admin.start()
    pem = admin.cli("cert", "ca").stdout
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    status = admin.cli("cert", "status").stdout
    assert "internal: serial" in status and "pimail internal CA" in status
    assert "mail.example.org" in status and "days left" in status


def test_headless_setup_apply(admin: PimailServer, tmp_path: Path) -> None:
    hashed = admin.cli("user", "hash", input="boot-password\n").stdout.strip()
    assert hashed.startswith("$scrypt$")
    toml = tmp_path / "pimail.toml"
    toml.write_text(
        '[setup]\ndomain = "box.example"\nhostname = "mail.box.example"\n'
        f'admin = "admin@box.example"\npassword_hash = "{hashed}"\nsetup_token = "t0k3n"\n'
    )
    out = admin.cli("setup", "apply", str(toml)).stdout
    assert "added domain box.example" in out and "added account admin@box.example" in out
    assert admin.cli("user", "list").stdout.strip() == "admin@box.example  admin"
    assert config.load(admin.config).hostname == "mail.box.example"
    assert (admin.data_dir / "setup-token").read_text() == "t0k3n\n"
    assert oct((admin.data_dir / "setup-token").stat().st_mode & 0o777) == "0o600"
    again = admin.cli("setup", "apply", str(toml)).stdout  # idempotent
    assert "added" not in again
    # The hash works: the admin can log in over IMAP with the password.
    admin.start()
    import imaplib

    m = imaplib.IMAP4_SSL("localhost", admin.imaps_port, ssl_context=admin.client_tls())
    assert m.login("admin@box.example", "boot-password")[0] == "OK"
    m.logout()
    # RFC 5321 4.5.1: postmaster (any case) takes mail on a box set up headlessly too.
    assert "alias postmaster@box.example -> admin@box.example" in out
    import smtplib

    with smtplib.SMTP("127.0.0.1", admin.smtp_port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail("someone@remote.test")
        for rcpt in ("postmaster@box.example", "PostMaster@BOX.example"):
            assert s.rcpt(rcpt)[0] == 250, rcpt


def test_headless_setup_stores_settings(admin: PimailServer, tmp_path: Path) -> None:
    """[setup.settings] in the boot partition's pimail.toml: settings kept in
    pimail.db as `pimail config set` keeps them (dotted keys or tables); one bad
    setting refuses the whole table, before anything is stored."""
    toml = tmp_path / "pimail.toml"
    toml.write_text(
        '[setup]\ndomain = "box.example"\n'
        '[setup.settings]\n"filter.greylist" = false\n'
        '[setup.settings.dns]\nstub_zones = ["lan.example=192.168.1.5"]\n'
    )
    out = admin.cli("setup", "apply", str(toml)).stdout
    assert "filter.greylist = false" in out and "dns.stub_zones" in out
    loaded = config.load(admin.config)
    assert loaded.filter.greylist is False
    assert loaded.dns.stub_zones == ["lan.example=192.168.1.5"]
    for bad in (
        '[setup.settings]\n"smtp.max_recipients" = 3\n"smtp.nope" = 1\n',
        '[setup.settings]\n"smtp.max_recipients" = 3\n"dns.timeout" = "soon"\n',
        '[setup.settings]\n"smtp.max_recipients" = 3\n"data_dir" = "/elsewhere"\n',
        '[setup]\nsettings = "filter.greylist=false"\n',
    ):
        toml.write_text(bad if bad.startswith("[setup]") else "[setup]\n" + bad)
        done = admin.cli("setup", "apply", str(toml), check=False)
        assert done.returncode == 1, bad
        assert config.load(admin.config).smtp.max_recipients == 100, bad


def test_a_secret_setting_comes_from_stdin_and_is_never_shown(admin: PimailServer) -> None:
    done = admin.cli("config", "set", "outbound.relay_password", "-", input="123456\n")
    assert config.load(admin.config).outbound.relay_password == "123456"
    done = admin.cli("config", "set", "outbound.relay_password", "-", input="p4ss w0rd\n")
    assert "p4ss" not in done.stdout and "********" in done.stdout
    shown = admin.cli("config", "show").stdout
    assert 'outbound.relay_password = "********"' in shown and "p4ss" not in shown
    con = sqlite3.connect(admin.data_dir / "pimail.db")
    [(value,)] = con.execute("SELECT value FROM settings WHERE key = 'outbound.relay_password'")
    con.close()
    assert value == '"p4ss w0rd"'
    assert config.load(admin.config).outbound.relay_password == "p4ss w0rd"
