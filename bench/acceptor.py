"""A bare TCP listener for the benchmarks: accepts and closes, nothing else (with --tls CERT
KEY: completes a TLS handshake first, then closes).

It listens on one port at 127.0.0.1 and, with --addresses N, on the same port at N more
loopback addresses (127.1.0.1, 127.1.0.2, ...). A probe sent to an address of its own can be
found in a packet capture by its destination even when the prober (blackbox_exporter) does
not say which source port it used.

Prints the port on one line, then serves until SIGTERM. Run by bench.common.Acceptor, which
pins it to the servers' core.
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import signal
import socket
import ssl
import sys

BACKLOG = 4096  # net.core.somaxconn here: 1,000 attempts in flight must not see a full queue


def extra_address(index: int) -> str:
    """The index-th extra loopback address (0-based), all in 127.0.0.0/8, never 127.0.0.1."""
    return f"127.1.{index // 250}.{1 + index % 250}"


def listen(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=0, help="extra loopback addresses")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="handshake, then close")
    args = parser.parse_args()
    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*args.tls)
    first = listen("127.0.0.1", 0)
    port = first.getsockname()[1]
    sockets = [first] + [listen(extra_address(i), port) for i in range(args.addresses)]
    selector = selectors.DefaultSelector()
    for sock in sockets:
        selector.register(sock, selectors.EVENT_READ)
    print(port, flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            for key, _ in selector.select():
                if key.data is not None:  # a TLS connection in its handshake
                    _shake(selector, key.fileobj)  # type: ignore[arg-type]
                    continue
                listener = key.fileobj
                assert isinstance(listener, socket.socket)
                # Drain the whole queue per wake-up: one select per connection would make
                # this loop, not the prober, the bottleneck.
                while True:
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # EMFILE and the like: say so, keep serving
                        print(f"accept: {exc}", file=sys.stderr)
                        break
                    if ctx is None:
                        conn.close()
                        continue
                    conn.setblocking(False)
                    tls = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                    selector.register(tls, selectors.EVENT_READ, data="tls")


def _shake(selector: selectors.BaseSelector, tls: ssl.SSLSocket) -> None:
    """One step of a server handshake; closes the connection once it is done or failed."""
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return
    except ssl.SSLWantWriteError:
        selector.modify(tls, selectors.EVENT_WRITE, data="tls")
        return
    except (ssl.SSLError, OSError):
        pass
    selector.unregister(tls)
    tls.close()


if __name__ == "__main__":
    main()
