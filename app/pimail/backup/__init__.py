"""Backup and restore with restic (issue 17).

restic (Debian's package) does the repository format, the encryption, the
deduplication and the increments; pimail decides what goes in and makes it
consistent while the server runs (stage.py), starts restic with its secrets
out of sight and at low priority (restic.py), keeps the last result and the
history (job.py), and runs it nightly from the server's own scheduler
(schedule.py). `pimail backup init|now|list|check|ssh-key` and `pimail restore`
are the command line; /admin/backup and the setup wizard's first page are
the web's.

On disk, <data>/backup/ (never itself backed up):

    password        the repository password, mode 0600
    ssh/            the key and known_hosts of SFTP repositories
    cache/          restic's cache of the repository's index
    status.json     the last result (job.Status)
    stage/          the staging tree, only while a backup runs
"""
