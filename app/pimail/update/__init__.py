"""A/B system updates (issue 17): signed RAUC bundles into the inactive root slot.

- `bundle`: what a bundle is (`rauc info`: signature, board, version) and the
  checks that refuse one before anything is written.
- `install`: `pimail update FILE|URL`: download (HTTPS, to the data spool),
  check, `rauc install`; the slots' state; roll back (mark the other slot active).
- `snapshot`: the databases before a new slot's first start, and their restore
  when an older slot meets a schema newer than it knows.
- `confirm`: the mail check after boot that lets a new slot be marked good.

The slot layout and the boot path are in docs/ARCHITECTURE.md "System updates".
"""
