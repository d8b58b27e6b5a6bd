"""Writes a seed corpus for the `requests` fuzz target: one well-formed frame per API the
broker serves, built with the raw encoders of the reliability tests."""

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

from rel_harness import (api_versions_v0, fetch_v4, frame, kstring, metadata_v1,  # noqa: E402
                         produce_v3, record_batch, request_header)

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
seeds = {
    "api_versions_v0": api_versions_v0(),
    "api_versions_v99": frame(request_header(18, 99, 1)),
    "metadata_v1": metadata_v1(["t", "missing"]),
    "metadata_v1_all": frame(request_header(3, 1, 1) + struct.pack(">i", -1)),
    "produce_v3": produce_v3("t", 0, record_batch([b"a", b"bb", b"ccc"])),
    "produce_v3_acks1": produce_v3("t", 1, record_batch([b"x" * 100]), acks=1),
    "fetch_v4": fetch_v4("t", 0, 0),
    "list_offsets_v1": frame(request_header(2, 1, 1) + struct.pack(">ii", -1, 1) + kstring("t")
                             + struct.pack(">iiq", 1, 0, -1)),
    "init_producer_id_v0": frame(request_header(22, 0, 1) + struct.pack(">hi", -1, 1000)),
    "delete_topics_v1": frame(request_header(20, 1, 1) + struct.pack(">i", 1) + kstring("zz")
                              + struct.pack(">i", 1000)),
    "pipelined": api_versions_v0(1) + metadata_v1(["t"], 2) + fetch_v4("t", 1, 0, correlation_id=3),
}
for name, data in seeds.items():
    (out / name).write_bytes(data)
print(f"wrote {len(seeds)} seeds to {out}")
