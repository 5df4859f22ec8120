#!/usr/bin/env python3
"""A forward HTTP proxy that lets through only the package registries.

scripts/e2e-spark-sophia runs a fresh Debian root in a network namespace of
its own with no route out; its apt, pip and npm reach their registries
through this proxy on the namespace's link, and nothing else gets out:
a request for any other host is answered 403 and logged. Plain HTTP
(absolute-URI requests, as apt sends) and CONNECT tunnels (HTTPS) are
supported. Usage: registry-proxy.py ADDRESS PORT LOGFILE
"""

import asyncio
import sys
from urllib.parse import urlsplit

ALLOWED = (
    "deb.debian.org",
    "security.debian.org",
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
)


def allowed(host):
    host = host.lower().rstrip(".")
    return any(host == a or host.endswith("." + a) for a in ALLOWED)


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def handle(client_r, client_w, log):
    try:
        head = await client_r.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        client_w.close()
        return
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    method, target, _ = (line.split(" ") + ["", ""])[:3]
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        port = int(port or 443)
    else:
        url = urlsplit(target)
        host, port = url.hostname or "", url.port or 80
    if not allowed(host):
        log.write(f"refused {method} {target}\n")
        log.flush()
        client_w.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await client_w.drain()
        client_w.close()
        return
    log.write(f"allowed {method} {host}:{port}\n")
    log.flush()
    try:
        server_r, server_w = await asyncio.open_connection(host, port)
    except OSError as e:
        client_w.write(f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n".encode())
        log.write(f"failed {host}:{port}: {e}\n")
        client_w.close()
        return
    if method == "CONNECT":
        client_w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await client_w.drain()
    else:
        # Origin-form request line for the server; the rest of the head as sent.
        url = urlsplit(target)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        rest = head.split(b"\r\n", 1)[1]
        server_w.write(f"{method} {path} HTTP/1.1\r\n".encode() + rest)
    await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))


async def main():
    address, port, logfile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    log = open(logfile, "a", encoding="utf-8")
    server = await asyncio.start_server(lambda r, w: handle(r, w, log), address, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
