"""Writes a seed corpus for the `requests` fuzz target: one well-formed frame per API the
broker serves, built with the raw encoders of the end-to-end tests (tests/wire.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import wire  # noqa: E402

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
seeds = {
    "api_versions_v0": wire.api_versions_request(),
    "api_versions_v99": wire.api_versions_request(version=99),
    "metadata_v1": wire.metadata_request(["t", "missing"]),
    "metadata_v1_all": wire.frame(wire.API_METADATA, 1, 1, wire.i32(-1)),
    "produce_v3": wire.produce_request("t", 0, wire.record_batch([b"a", b"bb", b"ccc"])),
    "produce_v3_acks1": wire.produce_request("t", 1, wire.record_batch([b"x" * 100]), acks=1),
    "fetch_v4": wire.fetch_request("t", 0, 0),
    "list_offsets_v1": wire.frame(wire.API_LIST_OFFSETS, 1, 1, wire.i32(-1) + wire.array(
        [wire.string("t") + wire.array([wire.i32(0) + wire.i64(-1)])])),
    "init_producer_id_v0": wire.frame(wire.API_INIT_PRODUCER_ID, 0, 1,
                                      wire.string(None) + wire.i32(1000)),
    "delete_topics_v1": wire.frame(20, 1, 1, wire.array([wire.string("zz")]) + wire.i32(1000)),
    "pipelined": wire.api_versions_request(1) + wire.metadata_request(["t"], 2)
    + wire.fetch_request("t", 1, 0, correlation_id=3),
}
for name, data in seeds.items():
    (out / name).write_bytes(data)
print(f"wrote {len(seeds)} seeds to {out}")
