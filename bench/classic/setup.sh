#!/bin/bash
# Installs, configures, starts and stops the classic stack that bench/smtp_accept.py
# compares pimail with: Debian bookworm's Postfix 3.7 + Dovecot 2.3.
#
#   Postfix  smtpd on 127.0.0.1:10025 (plain SMTP), domain bench.test only,
#            delivers over LMTP to Dovecot; no service that could send mail out.
#   Dovecot  LMTP on /var/spool/postfix/private/dovecot-lmtp, IMAP on 127.0.0.1:10143
#            (plaintext auth, loopback only), one user user@bench.test (passwd-file),
#            Maildir at ROOT/mail/%d/%n owned by the system user "benchmail".
#   fsync    Postfix's and Dovecot's defaults, untouched.
#
# It replaces /etc/postfix/main.cf, /etc/postfix/master.cf and /etc/dovecot/dovecot.conf
# (a copy of each original is kept once as *.pre-pimail-bench): run it only on a box
# whose mail setup you can throw away. Needs root and apt. Every command is idempotent.
#
# Usage: setup.sh [--root DIR] [all|install|configure|start|stop|restart|status]
#   all (default)  install + configure + restart
#   ROOT defaults to /var/tmp/pimail-bench-classic (or $BENCH_ROOT); the password of
#   user@bench.test is "secret-pw" (or $BENCH_PASSWORD).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${BENCH_ROOT:-/var/tmp/pimail-bench-classic}"
PASSWORD="${BENCH_PASSWORD:-secret-pw}"
MAIL_USER=benchmail
BENCH_ADDRESS=user@bench.test
SMTP_PORT=10025
IMAP_PORT=10143
USERS_FILE=/etc/dovecot/bench-users
RECIPIENTS_FILE=/etc/postfix/bench-recipients
DOVECOT_LOG=/var/log/dovecot-bench.log
POSTFIX_LOG=/var/log/postfix-bench.log  # maillog_file in main.cf

log() { echo "setup.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

have_systemd() { [ -d /run/systemd/system ]; }

# Keep one copy of a file as it was before this script first replaced it.
backup_once() {
    local file="$1"
    if [ -e "$file" ] && [ ! -e "$file.pre-pimail-bench" ]; then
        cp -p "$file" "$file.pre-pimail-bench"
    fi
}

# Waits for a listening socket without connecting to it: a connection would make
# Postfix spawn an smtpd (and Dovecot an imap-login) that then lingers as "idle".
wait_for_port() {
    local port="$1" deadline=$((SECONDS + 30))
    until ss -Hltn "sport = :$port" | grep -q .; do
        [ "$SECONDS" -lt "$deadline" ] || die "nothing listens on 127.0.0.1:$port after 30 s"
        sleep 0.2
    done
}

cmd_install() {
    log "installing postfix, dovecot-imapd, dovecot-lmtpd (and iproute2 for ss)"
    # "No configuration": the package leaves main.cf alone; configure writes ours.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postfix dovecot-imapd dovecot-lmtpd iproute2
}

cmd_configure() {
    [ "${ROOT#/}" != "$ROOT" ] || die "--root must be an absolute path, not '$ROOT'"
    case "$ROOT" in *[\|@\ ]*) die "--root may not contain '|', '@' or spaces" ;; esac
    command -v postconf >/dev/null && command -v doveconf >/dev/null \
        || die "postfix/dovecot are not installed: run '$0 install' first"

    if ! id "$MAIL_USER" >/dev/null 2>&1; then
        log "creating system user $MAIL_USER"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$MAIL_USER"
    fi
    local mail_uid
    mail_uid="$(id -u "$MAIL_USER")"

    install -d -m 0755 "$ROOT"
    install -d -m 0750 -o "$MAIL_USER" -g "$MAIL_USER" "$ROOT/mail" "$ROOT/home"

    log "writing /etc/postfix/{main,master}.cf and $RECIPIENTS_FILE"
    backup_once /etc/postfix/main.cf
    backup_once /etc/postfix/master.cf
    install -m 0644 "$HERE/main.cf" /etc/postfix/main.cf
    install -m 0644 "$HERE/master.cf" /etc/postfix/master.cf
    printf '%s OK\n' "$BENCH_ADDRESS" >"$RECIPIENTS_FILE"
    chmod 0644 "$RECIPIENTS_FILE"
    postfix check

    log "writing /etc/dovecot/dovecot.conf and $USERS_FILE (maildir under $ROOT/mail)"
    backup_once /etc/dovecot/dovecot.conf
    sed -e "s|@MAIL_ROOT@|$ROOT/mail|g" \
        -e "s|@HOME_ROOT@|$ROOT/home|g" \
        -e "s|@MAIL_USER@|$MAIL_USER|g" \
        -e "s|@MAIL_UID@|$mail_uid|g" \
        -e "s|@USERS_FILE@|$USERS_FILE|g" \
        -e "s|@LOG_FILE@|$DOVECOT_LOG|g" \
        "$HERE/dovecot.conf" >/etc/dovecot/dovecot.conf.new
    chmod 0644 /etc/dovecot/dovecot.conf.new
    mv /etc/dovecot/dovecot.conf.new /etc/dovecot/dovecot.conf
    local hash
    hash="$(doveadm pw -s SHA512-CRYPT -p "$PASSWORD")"
    # passwd-file: user:password:uid:gid:gecos:home:shell:extra (uid/gid/home from
    # default_fields in dovecot.conf).
    printf '%s:%s::::::\n' "$BENCH_ADDRESS" "$hash" >"$USERS_FILE.new"
    chown root:dovecot "$USERS_FILE.new"
    chmod 0640 "$USERS_FILE.new"
    mv "$USERS_FILE.new" "$USERS_FILE"
    doveconf -n >/dev/null
}

postfix_running() { postfix status >/dev/null 2>&1; }
dovecot_running() {
    [ -s /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null
}

cmd_start() {
    [ -f /etc/postfix/main.cf ] && grep -q 'pimail SMTP accept benchmark' /etc/postfix/main.cf \
        || die "not configured: run '$0 configure' first"
    if have_systemd; then
        systemctl start dovecot postfix
    else
        # Dovecot first: it creates the LMTP socket that Postfix delivers to.
        # The daemons must not inherit our stdout/stderr (a caller reading them to EOF
        # would wait forever); both log to their own files.
        dovecot_running || dovecot </dev/null >>"$DOVECOT_LOG" 2>&1 \
            || die "dovecot did not start, see $DOVECOT_LOG"
        if ! postfix_running; then
            /usr/lib/postfix/configure-instance.sh -
            postfix start </dev/null >>"$POSTFIX_LOG" 2>&1 \
                || die "postfix did not start, see $POSTFIX_LOG"
        fi
    fi
    wait_for_port "$IMAP_PORT"
    wait_for_port "$SMTP_PORT"
    log "running: SMTP 127.0.0.1:$SMTP_PORT, IMAP 127.0.0.1:$IMAP_PORT, maildir $ROOT/mail"
}

cmd_stop() {
    if have_systemd; then
        systemctl stop postfix dovecot
        return
    fi
    if postfix_running; then postfix stop; fi
    if dovecot_running; then
        dovecot stop
        local deadline=$((SECONDS + 30))
        while dovecot_running; do
            [ "$SECONDS" -lt "$deadline" ] || die "dovecot did not stop within 30 s"
            sleep 0.2
        done
    fi
    # postfix stop returns before the master has exited.
    local deadline=$((SECONDS + 30))
    while [ -e /var/spool/postfix/pid/master.pid ] \
        && kill -0 "$(cat /var/spool/postfix/pid/master.pid 2>/dev/null)" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "postfix did not stop within 30 s"
        sleep 0.2
    done
    log "stopped"
}

cmd_status() {
    local rc=0
    if postfix_running; then log "postfix: running"; else log "postfix: stopped"; rc=3; fi
    if dovecot_running; then log "dovecot: running"; else log "dovecot: stopped"; rc=3; fi
    return "$rc"
}

main() {
    local command=all
    while [ $# -gt 0 ]; do
        case "$1" in
            --root) ROOT="$2"; shift 2 ;;
            --root=*) ROOT="${1#--root=}"; shift ;;
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
