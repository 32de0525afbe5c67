"""Generated samples for the malware and rule tests: nothing binary is committed.

The EICAR string is assembled from halves (so this file is not itself flagged),
executables are headers only (a few dozen bytes that start the way a program
does, and do nothing), OLE2 compound files are written by `ole_file` with the
smallest layout MS-CFB allows (a header, one FAT sector, one directory sector).
"""

from __future__ import annotations

import base64
import gzip
import io
import itertools
import struct
import tarfile
import zipfile

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*" + b"GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def pe_header() -> bytes:
    """An MZ header whose e_lfanew (0x3C) points at a PE signature."""
    head = bytearray(b"MZ" + b"\x90\x00" * 30)
    head[0x3C:0x40] = struct.pack("<I", 0x80)
    head += b"\x00" * (0x80 - len(head)) + b"PE\x00\x00" + b"\x4c\x01" + b"\x00" * 30
    return bytes(head)


ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 57
MACHO = b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + b"\x00" * 24
LNK = b"L\x00\x00\x00\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00F" + b"\x00" * 56
SHEBANG = b"#!/bin/sh\nrm -rf ~\n"
SEVEN_ZIP = b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00" * 24
RAR = b"Rar!\x1a\x07\x01\x00" + b"\x00" * 24


def zip_of(files: dict[str, bytes], encrypt: str | None = None) -> bytes:
    """A zip of `files`; the entry named `encrypt` gets the encrypted flag (APPNOTE
    4.4.4 bit 0) in its local and central headers, as a password-protected zip has."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    blob = bytearray(buffer.getvalue())
    if encrypt is not None:
        name = encrypt.encode()
        for signature, flags_at, name_at in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
            at = blob.find(signature)
            while at >= 0:
                if blob[at + name_at : at + name_at + len(name)] == name:
                    blob[at + flags_at] |= 1
                at = blob.find(signature, at + 4)
    return bytes(blob)


def gzip_of(data: bytes, name: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name or "", mode="wb", fileobj=buffer, mtime=0) as f:
        f.write(data)
    return buffer.getvalue()


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ole_file(*paths: tuple[str, ...]) -> bytes:
    """An OLE2 compound file (MS-CFB, version 3, 512-byte sectors) whose directory
    holds the storages and (empty) streams of `paths`, e.g. ("Macros", "VBA",
    "_VBA_PROJECT"): the last name of each path a stream, the others storages."""
    free, end, fat_sector, nostream = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
    entries: list[dict] = [{"name": "Root Entry", "type": 5, "children": []}]
    index: dict[tuple[str, ...], int] = {(): 0}
    for path in paths:
        for depth in range(1, len(path) + 1):
            key = path[:depth]
            if key not in index:
                index[key] = len(entries)
                kind = 2 if depth == len(path) else 1
                entries.append({"name": key[-1], "type": kind, "children": []})
                entries[index[key[:-1]]]["children"].append(index[key])
    # Each storage's children as a chain of right siblings (a degenerate tree is allowed).
    links = {
        i: {"left": nostream, "right": nostream, "child": nostream} for i in range(len(entries))
    }
    for i, entry in enumerate(entries):
        children = entry["children"]
        if children:
            links[i]["child"] = children[0]
            for a, b in itertools.pairwise(children):
                links[a]["right"] = b
    directory = b""
    for i, entry in enumerate(entries):
        name = entry["name"].encode("utf-16-le") + b"\x00\x00"
        directory += (
            name.ljust(64, b"\x00")
            + struct.pack("<HBB", len(name), entry["type"], 1)
            + struct.pack("<III", links[i]["left"], links[i]["right"], links[i]["child"])
            + b"\x00" * 16 + b"\x00" * 4 + b"\x00" * 16
            + struct.pack("<IQ", end, 0)
        )  # fmt: skip
    while len(directory) % 512:  # unused entries: empty names, no siblings
        directory += b"\x00" * 64 + struct.pack("<HBB", 0, 0, 0)
        directory += struct.pack("<III", nostream, nostream, nostream) + b"\x00" * 36
        directory += struct.pack("<IQ", 0, 0)
    sectors = len(directory) // 512
    header = (
        bytes.fromhex("d0cf11e0a1b11ae1") + b"\x00" * 16
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6) + b"\x00" * 6
        + struct.pack("<IIIIIIIII", 0, 1, 1, 0, 0x1000, end, 0, end, 0)
        + struct.pack("<109I", 0, *([free] * 108))
    )  # fmt: skip
    fat = [fat_sector] + [i + 1 for i in range(1, sectors)] + [end]
    fat_bytes = struct.pack(f"<{len(fat)}I", *fat).ljust(512, b"\xff")
    return header + fat_bytes + directory


def mail(body: bytes, content_type: str = "text/plain; charset=utf-8", extra: str = "") -> bytes:
    return (
        "From: someone@sender.test\r\nTo: alice@example.org\r\nSubject: test\r\n"
        "Date: Mon, 07 Dec 2026 12:00:00 +0000\r\nMessage-ID: <t1@sender.test>\r\n"
        f"MIME-Version: 1.0\r\n{extra}Content-Type: {content_type}\r\n\r\n"
    ).encode() + body


def with_attachment(
    name: str | None,
    content: bytes,
    content_type: str = "application/octet-stream",
    disposition: str | None = None,
) -> bytes:
    """A message with a text part and one base64 attachment. `disposition`
    replaces the whole Content-Disposition value (for RFC 2231/2047 names)."""
    encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
    if disposition is None:
        disposition = f'attachment; filename="{name}"' if name else "attachment"
    type_line = (
        f'{content_type}; name="{name}"' if name and "filename" in disposition else content_type
    )
    part = (
        f"Content-Type: {type_line}\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: {disposition}\r\n\r\n"
    ).encode() + encoded
    body = (
        b"--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--b1\r\n"
        + part
        + b"\r\n--b1--\r\n"
    )
    return mail(body, 'multipart/mixed; boundary="b1"')


def _vint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def rar5(files: list[tuple[str, bool]], encrypted_headers: bool = False) -> bytes:
    """A RAR 5 archive's headers (RARLAB's technote; CRCs left zero, contents one
    stored byte each) for `files` [(name, encrypted)]."""

    def header(kind: int, body: bytes, extra: bytes = b"", data: bytes = b"") -> bytes:
        flags = (1 if extra else 0) | (2 if data else 0)
        fields = _vint(kind) + _vint(flags)
        fields += (_vint(len(extra)) if extra else b"") + (_vint(len(data)) if data else b"")
        fields += body + extra
        return b"\x00" * 4 + _vint(len(fields)) + fields + data

    out = b"Rar!\x1a\x07\x01\x00" + header(1, _vint(0))
    if encrypted_headers:
        out += header(4, _vint(0) + _vint(0) + _vint(15) + b"\x00" * 16)
    for name, encrypted in files:
        raw = name.encode()
        body = _vint(0) + _vint(1) + _vint(0) + _vint(0) + _vint(0) + _vint(len(raw)) + raw
        record = _vint(1) + b"\x00" * 8  # type 1: file encryption
        extra = _vint(len(record)) + record if encrypted else b""
        out += header(2, body, extra, b"x")
    return out + header(5, _vint(0))


def rar4(files: list[tuple[str, bool]], encrypted_headers: bool = False) -> bytes:
    """A RAR 1.5-4.x archive's blocks (unrar's technote; CRCs left zero)."""
    main_flags = 0x0080 if encrypted_headers else 0
    out = b"Rar!\x1a\x07\x00" + b"\x00\x00\x73" + struct.pack("<HH", main_flags, 13) + b"\x00" * 6
    for name, encrypted in files:
        raw = name.encode("latin-1")
        flags = 0x8000 | (0x0004 if encrypted else 0)
        out += b"\x00\x00\x74" + struct.pack("<HH", flags, 32 + len(raw))
        out += struct.pack("<IIBIIBBHI", 1, 1, 2, 0, 0, 29, 0x30, len(raw), 0x20) + raw + b"x"
    return out + b"\x00\x00\x7b" + struct.pack("<HH", 0, 7)
