"""Soak: many connections producing and consuming for a bounded time against one broker on
loopback; samples the broker's RSS every second and reports request latencies.

Usage: python3 soak.py --port P --pid PID [--connections 1000] [--seconds 120]
(scripts/soak.sh starts the broker and runs this.)

Each connection loops: Produce (acks=all, one batch of `--records` records) to its
partition, then Fetch from where it last read. Every request is timed from send to answer.
Exit status 1 if any request failed, a connection broke, or RSS grew more than
`--rss-growth-max-mb` between the end of warm-up and the end.
"""

import argparse
import asyncio
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for wire.py

import wire  # noqa: E402


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def read_frame(reader):
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


async def client(i, args, deadline, stats):
    topic, partition = "soak", i % args.partitions
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
    except OSError as e:
        stats["connect_errors"] += 1
        stats["errors"].append(f"connect {i}: {e}")
        return
    stats["connected"] += 1
    batch = wire.record_batch([b"v" * args.value_bytes] * args.records)
    offset = 0
    corr = 0
    try:
        while time.monotonic() < deadline:
            corr += 1
            started = time.monotonic()
            writer.write(wire.produce_request(topic, partition, batch, acks=-1,
                                              correlation_id=corr))
            await writer.drain()
            answer = await read_frame(reader)
            stats["produce"].append(time.monotonic() - started)
            [(error, _)] = wire.produce_answer(answer).values()
            if error:
                stats["errors"].append(f"produce error {error}")
            corr += 1
            started = time.monotonic()
            writer.write(wire.fetch_request(topic, partition, offset, max_bytes=64 << 10,
                                            correlation_id=corr))
            await writer.drain()
            answer = await read_frame(reader)
            stats["fetch"].append(time.monotonic() - started)
            # The records are not decoded: this one client is the soak's bottleneck.
            error, hw, _ = wire.fetch_answer(answer, parse=False)
            if error:
                stats["errors"].append(f"fetch error {error}")
            else:
                offset = max(offset, hw - args.records * 4)
            stats["bytes_fetched"] += len(answer)
    except (OSError, asyncio.IncompleteReadError) as e:
        stats["errors"].append(f"connection {i}: {e!r}")
    finally:
        writer.close()


async def main(args):
    stats = {"produce": [], "fetch": [], "errors": [], "connected": 0, "connect_errors": 0,
             "bytes_fetched": 0}
    # Create the topic with auto-creation through Metadata before the storm.
    reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
    writer.write(wire.metadata_request(["soak"]))
    await writer.drain()
    await read_frame(reader)
    writer.close()
    samples = []
    started = time.monotonic()
    deadline = started + args.seconds

    async def sampler():
        while time.monotonic() < deadline:
            samples.append((time.monotonic() - started, rss_mb(args.pid)))
            await asyncio.sleep(1.0)

    sampling = asyncio.create_task(sampler())
    tasks = []
    for i in range(args.connections):
        tasks.append(asyncio.create_task(client(i, args, deadline, stats)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # ramp up without a SYN flood
    await asyncio.gather(*tasks)
    await sampling
    elapsed = time.monotonic() - started

    warm = [mb for t, mb in samples if t >= args.warmup]
    rss_start, rss_end = (warm[0], warm[-1]) if warm else (0, 0)
    print(f"soak: {args.connections} connections ({stats['connected']} connected), "
          f"{elapsed:.0f} s, {len(stats['produce'])} produces, {len(stats['fetch'])} fetches "
          f"({(len(stats['produce']) + len(stats['fetch'])) / elapsed:.0f} req/s)")
    for name in ("produce", "fetch"):
        lat = sorted(stats[name])
        print(f"  {name:7s} latency ms: p50 {percentile(lat, .5) * 1e3:.1f}  "
              f"p99 {percentile(lat, .99) * 1e3:.1f}  p99.9 {percentile(lat, .999) * 1e3:.1f}  "
              f"max {(lat[-1] if lat else float('nan')) * 1e3:.1f}")
    print(f"  RSS MiB: min {min(mb for _, mb in samples):.0f}  max {max(mb for _, mb in samples):.0f}"
          f"  after warm-up {rss_start:.0f} -> end {rss_end:.0f}")
    print("  RSS samples (s: MiB): " + ", ".join(
        f"{t:.0f}:{mb:.0f}" for t, mb in samples[:: max(1, len(samples) // 12)]))
    print(f"  errors: {len(stats['errors'])} {stats['errors'][:5]}")
    ok = not stats["errors"] and rss_end - rss_start <= args.rss_growth_max_mb
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--warmup", type=float, default=20)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--records", type=int, default=4)
    parser.add_argument("--value-bytes", type=int, default=200)
    parser.add_argument("--rss-growth-max-mb", type=float, default=64)
    sys.exit(asyncio.run(main(parser.parse_args())))
