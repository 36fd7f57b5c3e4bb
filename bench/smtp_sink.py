"""A minimal SMTP sink for benchmarks: answers just enough SMTP and counts messages.

aiosmtpd parses line by line and tops out near 250 messages/s per connection, so it would measure itself,
not nurture. This sink scans for the end-of-data marker and never parses the message.
"""

from __future__ import annotations

import asyncio
import threading
import time


class SmtpSink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep_times: bool = False) -> None:
        self.host = host
        self.port = port
        self.keep_times = keep_times
        # (first recipient, wall-clock time the message was accepted), when keep_times: for lag figures.
        self.accepted: list[tuple[bytes, float]] = []
        self.count = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SmtpSink:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._session, self.host, self.port))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink ESMTP\r\n")
        recipient = b""
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    await reader.readuntil(b"\r\n.\r\n")
                    now = time.perf_counter()
                    self.count += 1
                    self.first_at = self.first_at or now
                    self.last_at = now
                    if self.keep_times:
                        self.accepted.append((recipient, time.time()))
                    writer.write(b"250 OK\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                else:  # MAIL, RCPT, RSET, NOOP
                    if verb == b"RCPT":
                        recipient = line[line.find(b"<") + 1 : line.rfind(b">")]
                    writer.write(b"250 OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
