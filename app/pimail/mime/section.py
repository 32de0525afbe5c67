"""The section specifier of FETCH BODY[...] / BINARY[...] (RFC 9051 6.4.5).

Shared by the parser (which builds it from the command) and the MIME code
(which cuts the message by it), so both speak the same shape.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    # Part path: () for the whole message, (1, 2) for part 1.2.
    part: tuple[int, ...] = ()
    # None (the whole part), "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT",
    # "TEXT" or "MIME" (MIME only with a non-empty part path).
    text: str | None = None
    # Field names for HEADER.FIELDS[.NOT], upper-cased, in the order given.
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Partial:
    # <origin.count> of BODY[...]<o.c> (RFC 9051 6.4.5): octets from origin, at most count.
    origin: int
    count: int
