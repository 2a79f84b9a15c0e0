"""What the HTTP API adds: create over HTTP vs over the bus, and job list requests per second.

    python -m bench.api [--creates 200] [--seconds 5] [--connections 16] [--out result.json]

Starts the stack (``trainmaster.supervisor.Stack``: nats-server, the services and api-gateway,
each its own process; no agent, so jobs stay Pending) in a temporary directory on free ports,
and asks as the stack's admin person (its API token from ``<data_dir>/auth/admin.token``):

* **create**: ``--creates`` trivial jobs one at a time, alternating ``tm.jobs.create`` on the bus
  (with the same token in ``Tm-Token``, so the services do the same work) and ``POST
  /api/v1/jobs``; the added latency is the difference of the two medians (target: 5 ms at most).
  Both wait for the validator's verdict, as a create does.
* **list**: ``GET /api/v1/jobs?limit=20`` for ``--seconds`` over ``--connections`` keep-alive
  connections, each sending its next request when the previous reply is read (target: 1,000
  requests/s).  The load comes from a minimal HTTP/1.1 client on raw sockets, so that the client
  is not what is measured.

Exit status 1 if a request failed or a process was left running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    CpuWatch,
    cancel_on_signals,
    machine,
    print_table,
    report_leftovers,
    summarize,
    trivial_job,
    trivial_job_files,
    write_result,
)
from trainmaster.access import ON_BEHALF
from trainmaster.client import Client
from trainmaster.settings import Settings
from trainmaster.supervisor import Stack


async def wait_for_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"the HTTP API at {url} did not answer within {timeout_s:.0f} s")


class RawHttp:
    """One keep-alive HTTP/1.1 connection on a raw socket: the least a client can add."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token

    async def __aenter__(self) -> RawHttp:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def call(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
                   ) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: Bearer {self.token}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        reply = await self.reader.readuntil(b"\r\n\r\n")
        status = int(reply.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in reply.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)


async def wait_for_intake(client: Client, timeout_s: float = 60.0) -> None:
    """job-intake answers (the gateway may be up before it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            await client.list(limit=1)
            return
        except Exception:  # still starting: no responder yet
            await asyncio.sleep(0.2)
    raise TimeoutError(f"job-intake did not answer within {timeout_s:.0f} s")


async def creates(client: Client, http: RawHttp, token: str, root: Path, count: int) -> dict[str, list[float]]:
    """Seconds per create, over the bus and over HTTP, alternating (the same load for both)."""
    assert client.nc is not None
    code, data = trivial_job_files(root / "job")
    run = secrets.token_hex(4)
    took: dict[str, list[float]] = {"bus": [], "http": []}
    for i in range(count):
        spec = trivial_job(f"bench-api-{run}-{i % 2}", code, data, root / "outputs" / f"{i}", root / "job-logs")
        body = json.dumps(spec).encode()
        t0 = time.perf_counter()
        if i % 2 == 0:
            reply = await client.nc.request(client.topo.jobs("create"), body, timeout=30,
                                            headers={"Nats-Msg-Id": f"bench-{run}-{i}", ON_BEHALF: token})
            ok = b'"id"' in reply.data and not reply.data.startswith(b'{"error"')
            took["bus"].append(time.perf_counter() - t0)
        else:
            status, answer = await http.call("POST", "/api/v1/jobs", body, {"Idempotency-Key": f"bench-{run}-{i}"})
            ok = status == 201
            took["http"].append(time.perf_counter() - t0)
        if not ok:
            raise RuntimeError(f"create {i} failed: {reply.data if i % 2 == 0 else answer!r}")
    return took


async def list_load(host: str, port: int, token: str, seconds: float, connections: int) -> dict[str, Any]:
    """Requests answered 200 per second, each connection one request at a time."""
    request = (f"GET /api/v1/jobs?limit=20 HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    done = [0]
    failed = [0]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if status == 200:
                    done[0] += 1
                else:
                    failed[0] += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    wall = time.perf_counter() - t0
    return {"requests": done[0], "failed": failed[0], "wall_s": wall, "per_s": done[0] / wall,
            "latency": summarize(latencies)}


async def bus_list_load(client: Client, token: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """The same list requests straight on the bus (what the services alone can answer)."""
    assert client.nc is not None
    nc, subject = client.nc, client.topo.jobs("list")
    done = [0]
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one_caller() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await nc.request(subject, b'{"limit": 20}', timeout=10, headers={ON_BEHALF: token})
            latencies.append(time.perf_counter() - t0)
            done[0] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one_caller() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"requests": done[0], "wall_s": wall, "per_s": done[0] / wall, "latency": summarize(latencies)}


async def drive(stack: Stack, root: Path, args: argparse.Namespace, pids: list[int]) -> dict[str, Any]:
    url = stack.http_url
    await wait_for_http(url)
    token = stack.admin_token_file.read_text().strip()
    async with Client(stack.url, timeout=30, creds=stack.auth.admin_creds) as client, \
            RawHttp("127.0.0.1", stack.http_port, token) as http:
        await wait_for_intake(client)
        await creates(client, http, token, root, 10)  # warm-up: connections, caches, first versions
        watch = CpuWatch(pids)
        took = await creates(client, http, token, root, args.creates)
        create_cpu = watch.stop()
        bus_listing = await bus_list_load(client, token, args.seconds, args.connections)
    watch = CpuWatch(pids)
    listing = await list_load("127.0.0.1", stack.http_port, token, args.seconds, args.connections)
    list_cpu = watch.stop()
    bus, over_http = summarize(took["bus"]), summarize(took["http"])
    return {"create_bus": bus, "create_http": over_http, "added_p50_s": over_http["p50"] - bus["p50"],
            "create_cpu": create_cpu, "list": listing, "list_cpu": list_cpu, "bus_list": bus_listing}


async def main_async(args: argparse.Namespace) -> int:
    cancel_on_signals()
    info = machine()
    root = Path(tempfile.mkdtemp(prefix="tm-bench-api-"))
    settings = Settings(data_dir=root / "stack", nats_port=-1, http_port=0)
    stack = Stack(settings, [], echo=lambda line: print(line, file=sys.stderr))
    pids: list[int] = []
    result: dict[str, Any] = {}
    error: BaseException | None = None
    try:
        await stack.start()
        pids = [p.pid for p in [stack.nats.proc, *(c.proc for c in stack.children)] if p is not None]
        print(f"stack up, HTTP API at {stack.http_url}, data in {root}", file=sys.stderr)
        result = await drive(stack, root, args, pids)
    except (Exception, asyncio.CancelledError) as exc:
        error = exc
    finally:
        await asyncio.to_thread(stack.stop)
        clean = report_leftovers(root, pids)
        if args.keep or (error is not None and not isinstance(error, asyncio.CancelledError)):
            print(f"kept {root} (service logs in {root / 'stack' / 'logs'})", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if error is not None:
        why = "interrupted" if isinstance(error, asyncio.CancelledError) else f"{type(error).__name__}: {error}"
        print(f"benchmark failed: {why}", file=sys.stderr)
        return 1

    print(f"\nthe HTTP API, {info['nproc']} CPUs, {info['date_utc']}: {args.creates} creates alternating bus and "
          f"HTTP, then job list for {args.seconds:g} s over {args.connections} connections")
    print_table([("create over the bus (tm.jobs.create)", result["create_bus"]),
                 ("create over HTTP (POST /jobs)", result["create_http"]),
                 ("list over the bus (tm.jobs.list)", result["bus_list"]["latency"]),
                 ("list over HTTP (GET /jobs?limit=20)", result["list"]["latency"])])
    listing = result["list"]
    print(f"\nadded by HTTP to a create, p50: {result['added_p50_s'] * 1000:.2f} ms (target <= 5 ms)")
    print(f"job list over HTTP: {listing['per_s']:.0f} requests/s ({listing['requests']} in {listing['wall_s']:.1f} s, "
          f"{listing['failed']} failed; target >= 1,000/s); other processes used "
          f"{result['list_cpu']['others_share_of_machine']:.0%} of the machine meanwhile); the same on the bus "
          f"alone: {result['bus_list']['per_s']:.0f} requests/s")
    write_result(args.out, {"benchmark": "api", "machine": info, "args": vars(args), **result})
    return 0 if clean and listing["failed"] == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creates", type=int, default=200, help="creates measured (half bus, half HTTP)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long job list is loaded")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections of the list load")
    parser.add_argument("--out", help="write the result as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and its logs")
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
