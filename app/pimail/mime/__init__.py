"""MIME (RFC 2045-2049) on stored message octets, below every protocol that needs it.

- `structure`: the MIME structure of a message (parse, no I/O, limited in depth
  and parts), ENVELOPE and BODYSTRUCTURE, sections and transfer decoding;
- `header`: header-field syntax (RFC 5322 2.2, Content-* values, addresses);
- `section`: the part/field selection a section names (IMAP BODY[...]).

Used by IMAP (imap/fetch.py, imap/session.py), the store's analysis
(store/analyze.py) and the spam filter's tokens (filter/tokens.py); it imports
none of them.
"""
