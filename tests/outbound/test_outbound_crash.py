"""SIGKILL while the queue delivers and clients submit: everything that got a
250 arrives, at most once more than once per transaction in flight at a kill
(RFC 5321 6.1 allows that duplicate; it is counted and printed)."""

from __future__ import annotations

import collections
import re
import threading
import time

from .queue_env import Outbound, wait_for

ROUNDS = 3
PER_THREAD = 40
THREADS = 3


def test_sigkill_during_delivery_loses_nothing(outbound: Outbound) -> None:
    outbound.mx("remote.test", (10, "mx1.remote.test", "127.0.0.2"))
    sink = outbound.sink("127.0.0.2", delay=0.02)
    sender = outbound.start_sender(max_per_destination=2, retry_min=0.5, retry_max=0.5)
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def submit(thread: int) -> None:
        for i in range(PER_THREAD * ROUNDS):
            if stop.is_set():
                return
            token = f"t{thread}-{i}"
            message = (
                f"From: alice@example.org\r\nTo: carol@remote.test\r\nSubject: {token}\r\n"
                f"\r\nburst {token}\r\n"
            ).encode()
            try:
                outbound.submit(["carol@remote.test"], message)
            except Exception:  # the server is down (killed): not acknowledged
                time.sleep(0.2)
                continue
            with lock:
                acknowledged.add(token)

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for round_ in range(ROUNDS):
        wait_for(lambda r=round_: len(sink.messages) >= 40 * (r + 1), timeout=60,
                 what="deliveries before the kill")  # fmt: skip
        sender.kill()
        time.sleep(0.3)
        sender.start()
    for t in threads:
        t.join(120)
    stop.set()

    def tokens() -> collections.Counter[str]:
        found = collections.Counter[str]()
        for m in sink.messages:
            match = re.search(rb"Subject: (t\d+-\d+)", m.content)
            assert match is not None
            found[match.group(1).decode()] += 1
        return found

    wait_for(lambda: acknowledged <= set(tokens()), timeout=90, what="every acknowledged message")
    wait_for(lambda: outbound.queue_rows() == 0, timeout=30, what="an empty queue")
    found = tokens()
    duplicates = sum(n - 1 for n in found.values())
    print(f"acknowledged={len(acknowledged)} delivered={len(found)} duplicates={duplicates}")
    assert len(acknowledged) >= 100
    # Each kill can repeat at most the transactions then in flight (2 connections).
    assert duplicates <= 2 * ROUNDS
