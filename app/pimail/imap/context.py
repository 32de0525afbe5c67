"""What every IMAP session shares: settings, store, directory, logins, index readers."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from ..auth.accounts import Directory
from ..auth.login import Authenticator
from ..config import Settings
from ..store.store import Store
from .views import IndexReader, MailboxViews


@dataclass
class ImapContext:
    settings: Settings
    store: Store
    directory: Directory
    authenticator: Authenticator
    reader: IndexReader
    views: MailboxViews
    tls_context: ssl.SSLContext | None = None
