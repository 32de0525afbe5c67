#!/bin/bash
# Installs, configures, starts and stops the Dovecot 2.3 (Debian bookworm) that
# bench/imap_bench.py compares pimail's IMAP and POP3 with.
#
#   IMAP   127.0.0.1:10143, POP3 127.0.0.1:10110; plaintext auth (loopback only, no TLS).
#   User   user@bench.test / "secret-pw" in a passwd-file (SHA512-CRYPT).
#   Mail   Maildir at ROOT/mail/bench.test/user (ROOT/mail/%d/%n), owned by the system
#          user "benchmail" (the same user bench/classic/setup.sh uses); no FTS plugin.
#   Limits raised so that 200 idle IMAP connections of one user from one IP fit
#          (process_limit, mail_max_userip_connections); everything else, fsync included,
#          is Dovecot's default.
#
# It is a Dovecot instance of its own ("dovecot-imapbench": config
# /etc/pimail-bench-imap/dovecot.conf, outside /etc/dovecot so that a purge of the
# packages leaves it alone; base_dir /run/dovecot-imapbench; state under ROOT/state),
# started directly (not through systemd), beside whatever the default instance
# (/etc/dovecot/dovecot.conf, bench/classic/setup.sh's) does. Its greeting says
# "imap-bench", which bench/imap_bench.py checks before it touches a mailbox.
# The two instances both want 127.0.0.1:10143: stop one before starting the other
# (setup.sh stop / this script's stop), or give this one other ports with
# --imap-port/--pop3-port. While this one runs, its processes also count in
# bench/smtp_accept.py's memory figures for the classic stack: stop it first.
#
# Needs root and apt. Every command is idempotent.
#
# Usage: imap_setup.sh [--root DIR] [--imap-port N] [--pop3-port N]
#                      [all|install|configure|start|stop|restart|status]
#   all (default)  install + configure + restart
#   --root and the ports are remembered by configure for the later commands.
#   ROOT defaults to /var/tmp/pimail-bench-imap (or $BENCH_IMAP_ROOT); the password of
#   user@bench.test is "secret-pw" (or $BENCH_PASSWORD).
set -euo pipefail

ROOT="${BENCH_IMAP_ROOT:-/var/tmp/pimail-bench-imap}"
PASSWORD="${BENCH_PASSWORD:-secret-pw}"
IMAP_PORT=10143
POP3_PORT=10110
MAIL_USER=benchmail
BENCH_ADDRESS=user@bench.test
CONF_DIR=/etc/pimail-bench-imap
CONF="$CONF_DIR/dovecot.conf"
USERS_FILE="$CONF_DIR/users"
SETTINGS_FILE="$CONF_DIR/settings"  # ROOT and ports of the last configure, for start/status
INSTANCE=dovecot-imapbench
BASE_DIR="/run/$INSTANCE"
LOG_FILE="/var/log/$INSTANCE.log"

log() { echo "imap_setup.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Waits for a listening socket without connecting to it (a connection would leave an
# imap-login process behind).
wait_for_port() {
    local port="$1" deadline=$((SECONDS + 30))
    until ss -Hltn "sport = :$port" | grep -q .; do
        [ "$SECONDS" -lt "$deadline" ] || die "nothing listens on 127.0.0.1:$port after 30 s"
        sleep 0.2
    done
}

port_in_use() { ss -Hltn "sport = :$1" | grep -q .; }

cmd_install() {
    log "installing dovecot-imapd, dovecot-pop3d (and iproute2 for ss)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        dovecot-imapd dovecot-pop3d iproute2
}

write_config() {
    local mail_uid="$1"
    cat <<EOF
# Dovecot 2.3 for the pimail IMAP/POP3 benchmark (bench/imap_bench.py).
# Written by bench/classic/imap_setup.sh: edit that script, not this file.
# Complete on its own (conf.d/ is not included); an instance apart from the default one.

instance_name = $INSTANCE
base_dir = $BASE_DIR
state_dir = $ROOT/state
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = $LOG_FILE
login_greeting = Dovecot imap-bench ready.

mail_location = maildir:$ROOT/mail/%d/%n
first_valid_uid = $mail_uid
last_valid_uid = $mail_uid
# No mail_plugins: no FTS, so SEARCH TEXT reads the messages.

passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT username_format=%u $USERS_FILE
}

userdb {
  driver = passwd-file
  args = username_format=%u $USERS_FILE
  default_fields = uid=$MAIL_USER gid=$MAIL_USER home=$ROOT/home/%d/%n
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    port = 0
  }
}

service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $POP3_PORT
  }
  inet_listener pop3s {
    port = 0
  }
}

# 200 idle IMAP connections (one imap process each) plus headroom. Login processes
# stay at the default limit (100): each lives only until its client has logged in.
service imap {
  process_limit = 400
}

protocol imap {
  mail_max_userip_connections = 400
}

protocol pop3 {
  mail_max_userip_connections = 20
}
EOF
}

cmd_configure() {
    [ "${ROOT#/}" != "$ROOT" ] || die "--root must be an absolute path, not '$ROOT'"
    case "$ROOT" in *[\|@\ \$]*) die "--root may not contain '|', '@', '\$' or spaces" ;; esac
    command -v doveconf >/dev/null && [ -x /usr/lib/dovecot/pop3 ] \
        || die "dovecot-imapd/dovecot-pop3d are not installed: run '$0 install' first"

    if ! id "$MAIL_USER" >/dev/null 2>&1; then
        log "creating system user $MAIL_USER"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$MAIL_USER"
    fi
    local mail_uid
    mail_uid="$(id -u "$MAIL_USER")"

    install -d -m 0755 "$ROOT" "$ROOT/state"
    install -d -m 0750 -o "$MAIL_USER" -g "$MAIL_USER" "$ROOT/mail" "$ROOT/home"
    install -d -m 0755 "$CONF_DIR"

    log "writing $CONF and $USERS_FILE (maildir under $ROOT/mail)"
    write_config "$mail_uid" >"$CONF.new"
    printf 'ROOT=%q\nIMAP_PORT=%q\nPOP3_PORT=%q\n' "$ROOT" "$IMAP_PORT" "$POP3_PORT" \
        >"$SETTINGS_FILE"
    chmod 0644 "$CONF.new"
    mv "$CONF.new" "$CONF"
    local hash
    hash="$(doveadm -c "$CONF" pw -s SHA512-CRYPT -p "$PASSWORD")"
    # passwd-file: user:password:uid:gid:gecos:home:shell:extra (uid/gid/home come
    # from default_fields above).
    printf '%s:%s::::::\n' "$BENCH_ADDRESS" "$hash" >"$USERS_FILE.new"
    chown root:dovecot "$USERS_FILE.new"
    chmod 0640 "$USERS_FILE.new"
    mv "$USERS_FILE.new" "$USERS_FILE"
    doveconf -c "$CONF" -n >/dev/null
}

running() {
    [ -s "$BASE_DIR/master.pid" ] && kill -0 "$(cat "$BASE_DIR/master.pid")" 2>/dev/null
}

cmd_start() {
    [ -f "$CONF" ] || die "not configured: run '$0 configure' first"
    if running; then
        log "already running (pid $(cat "$BASE_DIR/master.pid"))"
    else
        local port
        for port in "$IMAP_PORT" "$POP3_PORT"; do
            if port_in_use "$port"; then
                die "127.0.0.1:$port is taken by another process (bench/classic/setup.sh's" \
                    "Dovecot? run 'setup.sh stop'), or choose another port"
            fi
        done
        # The daemon must not inherit our stdout/stderr (a caller reading them to EOF
        # would wait forever); it logs to its own file.
        dovecot -c "$CONF" </dev/null >>"$LOG_FILE" 2>&1 \
            || die "dovecot did not start, see $LOG_FILE"
    fi
    wait_for_port "$IMAP_PORT"
    wait_for_port "$POP3_PORT"
    log "running: IMAP 127.0.0.1:$IMAP_PORT, POP3 127.0.0.1:$POP3_PORT," \
        "maildir $ROOT/mail/bench.test/user"
}

cmd_stop() {
    running || { log "not running"; return 0; }
    # SIGTERM to the master (what "dovecot stop" sends), which needs no config file.
    kill -TERM "$(cat "$BASE_DIR/master.pid")"
    local deadline=$((SECONDS + 30))
    while running; do
        [ "$SECONDS" -lt "$deadline" ] || die "dovecot did not stop within 30 s"
        sleep 0.2
    done
    log "stopped"
}

cmd_status() {
    if running; then
        log "running (pid $(cat "$BASE_DIR/master.pid"))"
    else
        log "stopped"
        return 3
    fi
}

main() {
    local command=all
    # What the last configure wrote is the default; options given now override it.
    # shellcheck source=/dev/null
    [ ! -r "$SETTINGS_FILE" ] || . "$SETTINGS_FILE"
    ROOT="${BENCH_IMAP_ROOT:-$ROOT}"
    while [ $# -gt 0 ]; do
        case "$1" in
            --root) ROOT="$2"; shift 2 ;;
            --root=*) ROOT="${1#--root=}"; shift ;;
            --imap-port) IMAP_PORT="$2"; shift 2 ;;
            --pop3-port) POP3_PORT="$2"; shift 2 ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
            -*) die "unknown option $1" ;;
            *) command="$1"; shift ;;
        esac
    done
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    case "$command" in
        all) cmd_install; cmd_configure; cmd_stop; cmd_start ;;
        install) cmd_install ;;
        configure) cmd_configure ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        restart) cmd_stop; cmd_start ;;
        status) cmd_status ;;
        *) die "unknown command '$command' (all|install|configure|start|stop|restart|status)" ;;
    esac
}

main "$@"
