"""What every IMAP session shares: settings, store, directory, logins, index readers."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from ..auth.accounts import Directory
from ..auth.login import Authenticator
from ..config import Settings
from ..store.reader import IndexReader
from ..store.store import Store
from ..tls.context import CertificateStore
from .views import MailboxViews


@dataclass
class ImapContext:
    settings: Settings
    store: Store
    directory: Directory
    authenticator: Authenticator
    reader: IndexReader
    views: MailboxViews
    certs: CertificateStore | None = None

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """The context for a handshake starting now (session ticket keys rotate)."""
        return self.certs.handshake_context() if self.certs is not None else None
