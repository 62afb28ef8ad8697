"""A real DNS server for tests (UDP, dnslib): answers A queries from a JSON file.

    python testkit/dns_server.py --records FILE [--address 127.0.0.1] [--port 53]

The file maps names to address lists and is read on every query, so a test
changes the records by rewriting it (atomically). Unknown names get NXDOMAIN;
AAAA queries for known names get an empty answer. TTL 1 s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSServer


class FileResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, path: Path) -> None:
        self.path = path

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".")
        records = json.loads(self.path.read_text())
        if name not in records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if request.q.qtype in (QTYPE.A, QTYPE.ANY):
            for address in records[name]:
                reply.add_answer(RR(name, QTYPE.A, rdata=A(address), ttl=1))
        return reply


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=Path, required=True)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=53)
    args = p.parse_args()
    server = DNSServer(FileResolver(args.records), port=args.port, address=args.address)
    server.start_thread()
    print(f"dns server on {args.address}:{args.port}", flush=True)
    while server.isAlive():
        time.sleep(0.5)


if __name__ == "__main__":
    main()
