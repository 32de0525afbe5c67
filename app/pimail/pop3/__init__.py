"""POP3 (RFC 1939, CAPA RFC 2449, STLS RFC 2595, AUTH RFC 5034): `protocol` parses
and decides without I/O, `server` runs the connections over asyncio streams."""
