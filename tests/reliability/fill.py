"""Fills a broker with GIB gibibytes quickly: 1 MB record batches, acks=1, pipelined on a
few connections (one per partition). Used by scripts/restart-time.sh.

Usage: python3 fill.py --port P --gib 10 [--partitions 4]
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for wire.py

import wire  # noqa: E402

WINDOW = 8


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gib", type=float, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    wire.auto_create(args.port, "fill")
    batch = wire.record_batch([os.urandom(250_000) for _ in range(4)])
    per_partition = int(args.gib * (1 << 30) / args.partitions / len(batch)) + 1
    errors = []

    def run(partition):
        c = wire.Conn(args.port, timeout_s=60)
        request = wire.produce_request("fill", partition, batch, acks=1)
        sent = received = 0
        while received < per_partition:
            while sent < per_partition and sent - received < WINDOW:
                c.send_raw(request)
                sent += 1
            [(error, _)] = wire.produce_answer(c.recv_frame()).values()
            if error:
                errors.append(error)
                return
            received += 1
        c.close()

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(p,)) for p in range(args.partitions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    total = per_partition * args.partitions * len(batch)
    print(f"filled {total / (1 << 30):.2f} GiB in {elapsed:.1f} s "
          f"({total / elapsed / (1 << 20):.0f} MiB/s); errors {errors[:5]}")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
