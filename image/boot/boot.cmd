# pimail: the U-Boot boot script (boot.scr, made with mkimage from this file)
# for QEMU virt (virtio) and the Raspberry Pi (mmc): distro boot runs it from
# the first partition and sets ${devtype} and ${devnum}.
#
# A/B slots with RAUC's U-Boot integration (RAUC 1.8 docs, "Integration" >
# "U-Boot"): BOOT_ORDER lists the slots to try ("A B"), BOOT_A_LEFT and
# BOOT_B_LEFT how many tries each has left. The first slot in BOOT_ORDER with
# tries left is booted and its count goes down by one before the kernel starts;
# `rauc status mark-good` on the running system (after pimail's update check)
# puts it back to 3. A slot that never gets there (a crash, a hang the watchdog
# resets, a failed check) runs out of tries and the next one in BOOT_ORDER boots.
#
# The environment lives in pimail.env on this FAT partition (U-Boot's binary
# format with a CRC, 16 KiB: `env export -c`); Linux reads and writes the same
# file with libubootenv's fw_printenv/fw_setenv (/etc/fw_env.config).
# Slot A's root is partition 2, B's partition 3; each slot's kernel and initrd
# are here in /slot-a and /slot-b (U-Boot cannot read squashfs).

setenv pimail_part "${devtype} ${devnum}:1"
setenv BOOT_ORDER
setenv BOOT_A_LEFT
setenv BOOT_B_LEFT
if fatload ${pimail_part} ${scriptaddr} pimail.env; then
    env import -c ${scriptaddr} 0x4000 BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
fi
# A card fresh from the image (or an unreadable env file): A first, 3 tries each.
if test -z "${BOOT_ORDER}"; then setenv BOOT_ORDER "A B"; fi
if test -z "${BOOT_A_LEFT}"; then setenv BOOT_A_LEFT 3; fi
if test -z "${BOOT_B_LEFT}"; then setenv BOOT_B_LEFT 3; fi

setenv pimail_slot
for s in ${BOOT_ORDER}; do
    if test -z "${pimail_slot}"; then
        if test "${s}" = A && test ${BOOT_A_LEFT} -gt 0; then
            setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
            setenv pimail_slot A; setenv pimail_dir slot-a; setenv pimail_root 02
        elif test "${s}" = B && test ${BOOT_B_LEFT} -gt 0; then
            setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
            setenv pimail_slot B; setenv pimail_dir slot-b; setenv pimail_root 03
        fi
    fi
done
if test -z "${pimail_slot}"; then
    # Every slot is out of tries: better to try them all again than to stop
    # (RAUC's example script does the same).
    echo "pimail: no slot has tries left; resetting both to 3"
    setenv BOOT_A_LEFT 3
    setenv BOOT_B_LEFT 3
    env export -c -s 0x4000 ${scriptaddr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
    fatwrite ${pimail_part} ${scriptaddr} pimail.env 0x4000
    reset
fi
env export -c -s 0x4000 ${scriptaddr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
fatwrite ${pimail_part} ${scriptaddr} pimail.env 0x4000
echo "pimail: booting slot ${pimail_slot} (order ${BOOT_ORDER}, tries left A=${BOOT_A_LEFT} B=${BOOT_B_LEFT})"

if test "${devtype}" = mmc; then
    setenv pimail_console "console=tty1 console=ttyS1,115200"
else
    setenv pimail_console "console=ttyAMA0"
fi
setenv bootargs "${pimail_console} root=PARTUUID=706d6169-${pimail_root} rootfstype=squashfs ro rootwait net.ifnames=0 rauc.slot=${pimail_slot} ${pimail_extra}"
fatload ${pimail_part} ${kernel_addr_r} ${pimail_dir}/vmlinuz
fatload ${pimail_part} ${ramdisk_addr_r} ${pimail_dir}/initrd.img
booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdt_addr}
echo "pimail: slot ${pimail_slot} did not boot; resetting"
reset
