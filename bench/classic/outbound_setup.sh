#!/bin/bash
# Installs, configures, starts and stops the Postfix instance that bench/outbound.py
# compares pimail's outbound queue with: Debian bookworm's Postfix 3.7 (submission-like
# smtpd + qmgr + smtp client) with OpenDKIM 2.11 as a signing milter.
#
#   Instance  a Postfix instance of its own: configuration in /etc/postfix-bench-outbound,
#             queue in /var/spool/postfix-bench-outbound, data in
#             /var/lib/postfix-bench-outbound, log /var/log/postfix-bench-outbound.log;
#             started with `postfix -c /etc/postfix-bench-outbound start`. The machine's
#             /etc/postfix (and the SMTP accept benchmark's instance set up there by
#             setup.sh, on 127.0.0.1:10025) is not read or changed.
#   smtpd     127.0.0.1:SMTPD_PORT, STARTTLS (a self-signed P-256 certificate made
#             here), no AUTH: mynetworks = 127.0.0.0/8 may relay.
#   delivery  d1..d8.bench.test -> smtp:[127.0.0.11..18]:SINK_PORT (transport_maps: no
#             DNS lookups); everything else -> error:. 4 connections per destination,
#             20 smtp processes at most (pimail's defaults).
#   DKIM      OpenDKIM, a milter on the unix socket /run/opendkim-bench-outbound/
#             opendkim.sock (running as opendkim:postfix so that Postfix may connect),
#             signs *@sender.test with an RSA-2048 key (rsa-sha256, relaxed/relaxed),
#             made once in /etc/opendkim-bench-outbound (with its opendkim.conf; the
#             package's /etc/opendkim.conf is not used). Not an inet socket: over TCP,
#             Postfix 3.7's milter client and OpenDKIM 2.11 wait out two 40 ms delayed
#             ACKs per message (88 ms per message instead of 4 here).
#             pimail adds an Ed25519 signature beside its RSA one; OpenDKIM 2.11's
#             milter has one SignatureAlgorithm for all keys, so that would take a
#             second OpenDKIM milter: not done. --no-dkim configures without the milter.
#
# Needs root and apt (install). Every command is idempotent; `configure` rewrites the
# instance's files from bench/classic/outbound-{main,master}.cf with the given ports
# (restart to apply them). `remove` deletes the instance's directories and log.
#
# Usage: outbound_setup.sh [--smtpd-port P] [--sink-port S] [--no-dkim]
#            [all|install|configure|start|stop|restart|status|flush|purge|remove]
#   all (default)  install + configure + restart
#   flush          postqueue -f (deliver the deferred queue now)
#   purge          postsuper -d ALL (empty the queue)
#   Ports default to 10587 (smtpd) and 10026 (the receiving MTA).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONFIG_DIR=/etc/postfix-bench-outbound
QUEUE_DIR=/var/spool/postfix-bench-outbound
DATA_DIR=/var/lib/postfix-bench-outbound
LOG_FILE=/var/log/postfix-bench-outbound.log
OPENDKIM_DIR=/etc/opendkim-bench-outbound
OPENDKIM_RUN=/run/opendkim-bench-outbound
OPENDKIM_PID="$OPENDKIM_RUN/opendkim.pid"
OPENDKIM_SOCKET="$OPENDKIM_RUN/opendkim.sock"
MARKER='pimail outbound queue benchmark'
SMTPD_PORT=10587
SINK_PORT=10026
DKIM=yes
DOMAINS=8
SIGN_DOMAIN=sender.test

log() { echo "outbound_setup.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

pf() { postfix -c "$CONFIG_DIR" "$@"; }

wait_for_port() {
    # Without connecting: a connection would make Postfix spawn an smtpd.
    local port="$1" deadline=$((SECONDS + 30))
    until ss -Hltn "sport = :$port" | grep -q .; do
        [ "$SECONDS" -lt "$deadline" ] || die "nothing listens on 127.0.0.1:$port after 30 s"
        sleep 0.2
    done
}

cmd_install() {
    log "installing postfix, opendkim, opendkim-tools, openssl, iproute2"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # The packages' own services are not used (and not started in a container).
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postfix opendkim opendkim-tools openssl iproute2
}

check_port() {
    case "$2" in '' | *[!0-9]*) die "$1 must be a port number, not '$2'" ;; esac
}

make_dkim_keys() {
    # Not under $CONFIG_DIR: postfix check warns about files there not owned by root.
    local dir="$OPENDKIM_DIR"
    install -d -m 0755 "$dir"
    if [ ! -s "$dir/rsa.private" ]; then
        log "making the DKIM keys for $SIGN_DOMAIN in $dir"
        opendkim-genkey --bits=2048 --domain="$SIGN_DOMAIN" --selector=rsa --directory="$dir"
    fi
    chown opendkim:opendkim "$dir"/*.private
    chmod 0600 "$dir"/*.private
    printf '%s\n' "rsa._domainkey.$SIGN_DOMAIN $SIGN_DOMAIN:rsa:$dir/rsa.private" \
        >"$dir/keytable"
    printf '%s\n' "*@$SIGN_DOMAIN rsa._domainkey.$SIGN_DOMAIN" >"$dir/signingtable"
    cat >"$dir/opendkim.conf" <<EOF
# OpenDKIM for the $MARKER (written by outbound_setup.sh).
Mode                s
Socket              local:$OPENDKIM_SOCKET
PidFile             $OPENDKIM_PID
UserID              opendkim:postfix
UMask               007
Syslog              no
Canonicalization    relaxed/relaxed
SignatureAlgorithm  rsa-sha256
KeyTable            file:$dir/keytable
SigningTable        refile:$dir/signingtable
OversignHeaders     From
InternalHosts       127.0.0.0/8
EOF
}

cmd_configure() {
    command -v postconf >/dev/null || die "postfix is not installed: run '$0 install' first"
    check_port --smtpd-port "$SMTPD_PORT"
    check_port --sink-port "$SINK_PORT"
    install -d -m 0755 "$CONFIG_DIR" "$DATA_DIR"
    install -d -m 0755 "$QUEUE_DIR"
    chown postfix "$DATA_DIR"

    if [ ! -s "$CONFIG_DIR/tls.key" ]; then
        log "making a self-signed certificate for smtpd's STARTTLS"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$CONFIG_DIR/tls.key" -out "$CONFIG_DIR/tls.crt" -days 3650 \
            -subj /CN=bench-sender.test 2>/dev/null
        chmod 0600 "$CONFIG_DIR/tls.key"
    fi

    local milters=""
    if [ "$DKIM" = yes ]; then
        command -v opendkim >/dev/null || die "opendkim is not installed: run '$0 install'"
        make_dkim_keys
        milters="unix:$OPENDKIM_SOCKET"
    fi

    log "writing $CONFIG_DIR/{main,master}.cf and transport (smtpd $SMTPD_PORT," \
        "sink $SINK_PORT, dkim $DKIM)"
    local sed_args=(
        -e "s|@CONFIG_DIR@|$CONFIG_DIR|g" -e "s|@QUEUE_DIR@|$QUEUE_DIR|g"
        -e "s|@DATA_DIR@|$DATA_DIR|g" -e "s|@LOG_FILE@|$LOG_FILE|g"
        -e "s|@SMTPD_PORT@|$SMTPD_PORT|g" -e "s|@SINK_PORT@|$SINK_PORT|g"
        -e "s|@MILTERS@|$milters|g"
    )
    sed "${sed_args[@]}" "$HERE/outbound-main.cf" >"$CONFIG_DIR/main.cf.new"
    sed "${sed_args[@]}" "$HERE/outbound-master.cf" >"$CONFIG_DIR/master.cf.new"
    grep -q "$MARKER" "$CONFIG_DIR/main.cf.new" || die "outbound-main.cf lacks its marker"
    local n
    : >"$CONFIG_DIR/transport.new"
    for n in $(seq 1 "$DOMAINS"); do
        printf 'd%s.bench.test smtp:[127.0.0.1%s]:%s\n' "$n" "$n" "$SINK_PORT" \
            >>"$CONFIG_DIR/transport.new"
    done
    chmod 0644 "$CONFIG_DIR"/*.new
    mv "$CONFIG_DIR/main.cf.new" "$CONFIG_DIR/main.cf"
    mv "$CONFIG_DIR/master.cf.new" "$CONFIG_DIR/master.cf"
    mv "$CONFIG_DIR/transport.new" "$CONFIG_DIR/transport"
    # postsuper and postqueue write it themselves (as the mail owner) when postlogd
    # is not running.
    touch "$LOG_FILE"
    chown postfix "$LOG_FILE"
    pf check
}

postfix_running() { pf status >/dev/null 2>&1; }
opendkim_running() { [ -s "$OPENDKIM_PID" ] && kill -0 "$(cat "$OPENDKIM_PID")" 2>/dev/null; }
dkim_configured() { [ -n "$(postconf -c "$CONFIG_DIR" -h smtpd_milters)" ]; }

cmd_start() {
    [ -f "$CONFIG_DIR/main.cf" ] && grep -q "$MARKER" "$CONFIG_DIR/main.cf" \
        || die "not configured: run '$0 configure' first"
    if dkim_configured && ! opendkim_running; then
        install -d -m 0750 -o opendkim -g postfix "$OPENDKIM_RUN"
        rm -f "$OPENDKIM_SOCKET"  # left behind by a killed opendkim
        opendkim -x "$OPENDKIM_DIR/opendkim.conf" </dev/null >>"$LOG_FILE" 2>&1 \
            || die "opendkim did not start, see $LOG_FILE"
        local deadline=$((SECONDS + 30))
        until [ -S "$OPENDKIM_SOCKET" ]; do
            [ "$SECONDS" -lt "$deadline" ] || die "no $OPENDKIM_SOCKET after 30 s"
            sleep 0.2
        done
    fi
    if ! postfix_running; then
        pf start </dev/null >>"$LOG_FILE" 2>&1 || die "postfix did not start, see $LOG_FILE"
    fi
    local port
    port="$(postconf -c "$CONFIG_DIR" -M | awk '$2 == "inet" {print $1}' | sed 's/.*://')"
    wait_for_port "$port"
    log "running: smtpd 127.0.0.1:$port, queue $QUEUE_DIR, log $LOG_FILE"
}

wait_gone() {
    local pid_file="$1" what="$2" deadline=$((SECONDS + 30))
    while [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file" 2>/dev/null)" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what did not stop within 30 s"
        sleep 0.2
    done
}

cmd_stop() {
    if [ -f "$CONFIG_DIR/main.cf" ] && postfix_running; then pf stop; fi
    # postfix stop returns before the master has exited.
    wait_gone "$QUEUE_DIR/pid/master.pid" postfix
    if opendkim_running; then
        # OpenDKIM removes its pid file at once on SIGTERM, and now and then never
        # exits after that: wait for the process, not the file.
        local pid deadline=$((SECONDS + 10))
        pid="$(cat "$OPENDKIM_PID")"
        kill "$pid"
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                log "opendkim (pid $pid) ignored SIGTERM for 10 s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
    fi
    log "stopped"
}

cmd_status() {
    local rc=0
    if postfix_running; then log "postfix: running"; else log "postfix: stopped"; rc=3; fi
    if opendkim_running; then log "opendkim: running"; else log "opendkim: stopped"; fi
    return "$rc"
}

cmd_remove() {
    cmd_stop
    log "removing $CONFIG_DIR $OPENDKIM_DIR $QUEUE_DIR $DATA_DIR $LOG_FILE"
    rm -rf "$CONFIG_DIR" "$OPENDKIM_DIR" "$QUEUE_DIR" "$DATA_DIR" "$OPENDKIM_RUN" "$LOG_FILE"
}

main() {
    local command=all
    while [ $# -gt 0 ]; do
        case "$1" in
            --smtpd-port) SMTPD_PORT="$2"; shift 2 ;;
            --sink-port) SINK_PORT="$2"; shift 2 ;;
            --no-dkim) DKIM=no; shift ;;
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
        flush) postqueue -c "$CONFIG_DIR" -f ;;
        purge) postsuper -c "$CONFIG_DIR" -d ALL ;;
        remove) cmd_remove ;;
        *) die "unknown command '$command' (all|install|configure|start|stop|restart|" \
            "status|flush|purge|remove)" ;;
    esac
}

main "$@"
