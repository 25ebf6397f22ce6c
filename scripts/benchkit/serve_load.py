"""(s) The service under load: one CPU replica of the real `tis-ray serve` on 127.0.0.1,
one pair per request, from 1 to 64 clients each sending its next request when the last
is answered.

Three kinds of request on the same workload: the image inline (``image_base64``: no
fetch), and by URL from the workload's image server at two latencies. Request bodies
are built before the clock starts; the client shares the machine's cores with the
service, which its figures include (a client on another machine would leave the
replica more CPU).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from .memory import TreeMemorySampler

CONCURRENCY = (1, 8, 32, 64)
REQUESTS_PER_LEVEL = 128  # at least; each client sends the same number
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 120


@dataclass(frozen=True)
class Level:
    mode: str  # "base64", or "url <latency> ms"
    clients: int
    requests: int
    ok: int  # answered 200 with the pair scored
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def pairs_per_second(self) -> float:
        return self.ok / self.seconds


class served:
    """`tis-ray serve` in a subprocess (its own local Ray), until the context ends (Ctrl-C, as a user
    stops it). Its output (Ray's per-request log lines included) goes to `log`, not the bench's."""

    def __init__(self, model: str, dtype: str, port: int, image_ports: list[int], log: Path):
        self.command = [sys.executable, "-m", "tis_ray", "serve", "--model", model, "--device", "cpu",
                        "--dtype", dtype, "--port", str(port), "--allow-hosts", "127.0.0.1",
                        "--allow-ports", *map(str, image_ports)]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def __enter__(self) -> served:
        env = {name: value for name, value in os.environ.items() if name != "TIS_API_KEY"}  # no key asked
        with self.log.open("w") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        self.memory = TreeMemorySampler(self.process.pid).__enter__()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            if "tis-ray serving" in self.log.read_text(errors="replace"):  # the CLI says so once the app answers
                return self
            time.sleep(0.5)
        self.__exit__()
        raise SystemExit(f"bench: `{' '.join(self.command)}` did not start; see {self.log}")

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.memory.__exit__()


def bodies(workload, mode: str, base_url: str | None) -> list[bytes]:
    """One JSON body per workload pair, in order."""
    pairs = []
    for name, caption in zip(workload.names, workload.captions, strict=True):
        if base_url is None:
            image = {"image_base64": base64.b64encode((workload.image_dir / name).read_bytes()).decode()}
        else:
            image = {"image_url": f"{base_url}/img/{name}"}
        pairs.append(json.dumps({"pairs": [{**image, "caption": caption}]}).encode())
    return pairs


async def load(url: str, mode: str, bodies: list[bytes], clients: int) -> Level:
    """`clients` clients, each sending its share of at least `REQUESTS_PER_LEVEL` requests one after another."""
    per_client = max(1, -(-REQUESTS_PER_LEVEL // clients))
    latencies: list[float] = []
    ok = 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:

        async def client(index: int) -> None:
            nonlocal ok
            for n in range(per_client):
                body = bodies[(index * per_client + n) % len(bodies)]
                started = time.perf_counter()
                async with session.post(f"{url}/v1/score", data=body,
                                        headers={"Content-Type": "application/json"}) as response:
                    answer = await response.read()
                latencies.append(time.perf_counter() - started)
                if response.status == 200 and json.loads(answer)["results"][0].get("error") is None:
                    ok += 1

        await client(0)  # warm: the first request of a level pays connection set-up
        latencies.clear()
        ok = 0
        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        seconds = time.perf_counter() - started
    cuts = statistics.quantiles([1000 * s for s in latencies], n=100, method="inclusive")
    return Level(mode, clients, len(latencies), ok, seconds, cuts[49], cuts[94], cuts[98])


def run(workload, model: str, dtype: str, image_servers: dict[float, str], port: int, log: Path) -> dict:
    """Every mode at every concurrency against one replica; the levels and the service's peak memory."""
    modes: list[tuple[str, str | None]] = [("base64", None)]
    modes += [(f"url {latency:g} ms", base_url) for latency, base_url in image_servers.items()]
    image_ports = sorted({int(base_url.rsplit(":", 1)[1]) for base_url in image_servers.values()})
    levels = []
    with served(model, dtype, port, image_ports, log) as service:
        for mode, base_url in modes:
            mode_bodies = bodies(workload, mode, base_url)
            for clients in CONCURRENCY:
                level = asyncio.run(load(service.url, mode, mode_bodies, clients))
                print(f"[bench] serve {mode} x{clients}: {level.pairs_per_second:.1f} pairs/s, "
                      f"p99 {level.p99_ms:.0f} ms", file=sys.stderr, flush=True)
                levels.append(asdict(level))
    return {"levels": levels, "memory": asdict(service.memory.peaks)}
