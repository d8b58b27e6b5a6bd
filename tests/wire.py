"""A deliberately small Kafka wire client for tests that need exact control of the bytes:
request framing, a few non-flexible request versions, RecordBatch v2 with CRC-32C.

It is independent of the broker's Rust code (written from the Kafka protocol guide), so a
test that uses it checks the broker against the protocol, not against itself.
"""

import socket
import struct
import time

# --- CRC-32C (Castagnoli), table driven: batches in tests are small. -----------------------
_CRC32C_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c(data):
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- Primitive encoders. --------------------------------------------------------------------
def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def i64(v):
    return struct.pack(">q", v)


def string(s):
    if s is None:
        return i16(-1)
    b = s.encode() if isinstance(s, str) else s
    return i16(len(b)) + b


def nbytes(b):
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items):
    return i32(len(items)) + b"".join(items)


def varint(v):
    """Zigzag varint, as in Kafka records."""
    z = (v << 1) ^ (v >> 63)
    out = bytearray()
    while True:
        if z & ~0x7F:
            out.append((z & 0x7F) | 0x80)
            z >>= 7
        else:
            out.append(z)
            return bytes(out)


class Reader:
    """Decode primitives from a response body; running past the end raises."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError(f"short read: want {n} at {self.pos} of {len(self.data)}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def i8(self):
        return struct.unpack(">b", self.take(1))[0]

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def string(self):
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def nbytes(self):
        n = self.i32()
        return None if n < 0 else self.take(n)

    def array(self, item):
        n = self.i32()
        return None if n < 0 else [item(self) for _ in range(n)]

    def varint(self):
        shift = 0
        z = 0
        while True:
            b = self.take(1)[0]
            z |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
        return (z >> 1) ^ -(z & 1)

    def done(self):
        return self.pos == len(self.data)


# --- RecordBatch v2. ------------------------------------------------------------------------
BATCH_HEADER_BYTES = 61


def record_batch(values, base_timestamp_ms=None, producer_id=-1, producer_epoch=-1,
                 base_sequence=-1, keys=None):
    """An uncompressed RecordBatch v2 holding `values` (bytes), with a correct CRC-32C."""
    if base_timestamp_ms is None:
        base_timestamp_ms = int(time.time() * 1000)
    keys = keys or [None] * len(values)
    records = bytearray()
    for delta, (key, value) in enumerate(zip(keys, values)):
        body = i8(0) + varint(0) + varint(delta)
        body += varint(-1) if key is None else varint(len(key)) + key
        body += varint(len(value)) + value + varint(0)
        records += varint(len(body)) + body
    after_crc = (
        i16(0)  # attributes: no compression, create time, not transactional
        + i32(len(values) - 1)  # last offset delta
        + i64(base_timestamp_ms)
        + i64(base_timestamp_ms)  # max timestamp: every record has delta 0
        + i64(producer_id)
        + i16(producer_epoch)
        + i32(base_sequence)
        + i32(len(values))
        + bytes(records)
    )
    after_length = i32(0) + i8(2) + struct.pack(">I", crc32c(after_crc)) + after_crc
    return i64(0) + i32(len(after_length)) + after_length


def parse_batches(data):
    """Split a fetched records blob into batch headers (dicts); a trailing partial batch,
    which a broker may send when cut by max bytes, is ignored as Kafka clients do."""
    batches = []
    pos = 0
    while len(data) - pos >= BATCH_HEADER_BYTES:
        r = Reader(data[pos:])
        base_offset = r.i64()
        length = r.i32()
        if len(data) - pos < 12 + length:
            break
        r.i32()  # partition leader epoch
        magic = r.i8()
        crc = r.u32()
        body = data[pos + 21:pos + 12 + length]
        b = {
            "base_offset": base_offset,
            "length": length,
            "magic": magic,
            "crc_ok": crc32c(body) == crc,
            "attributes": r.i16(),
            "last_offset_delta": r.i32(),
            "base_timestamp": r.i64(),
            "max_timestamp": r.i64(),
            "producer_id": r.i64(),
            "producer_epoch": r.i16(),
            "base_sequence": r.i32(),
            "record_count": r.i32(),
            "raw": data[pos:pos + 12 + length],
        }
        b["compression"] = b["attributes"] & 0x7
        if b["compression"] == 0:
            values = []
            for _ in range(b["record_count"]):
                r.varint()  # record length
                r.i8()
                r.varint()
                r.varint()
                key_len = r.varint()
                if key_len >= 0:
                    r.take(key_len)
                values.append(r.take(r.varint()))
                for _ in range(r.varint()):
                    r.take(r.varint())
                    r.take(r.varint())
            b["values"] = values
        batches.append(b)
        pos += 12 + length
    return batches


# --- Connections and requests. --------------------------------------------------------------
API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_API_VERSIONS = 18
API_INIT_PRODUCER_ID = 22

NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
MESSAGE_TOO_LARGE = 10
UNSUPPORTED_VERSION = 35
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46


def frame(api_key, version, correlation_id, body, client_id="wire-test"):
    """A request frame with header v1 (every non-flexible request version uses it)."""
    payload = i16(api_key) + i16(version) + i32(correlation_id) + string(client_id) + body
    return i32(len(payload)) + payload


class Conn:
    """One TCP connection speaking raw Kafka frames."""

    def __init__(self, address, timeout_s=10.0):
        self.sock = socket.create_connection(address, timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.next_correlation_id = 1

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, api_key, version, body):
        cid = self.next_correlation_id
        self.next_correlation_id += 1
        self.send_raw(frame(api_key, version, cid, body))
        return cid

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def recv_frame(self):
        """One response frame without its size prefix; None when the broker closed."""
        head = self._recv_exact(4)
        if head is None:
            return None
        size = struct.unpack(">i", head)[0]
        assert 0 <= size < 64 << 20, f"response frame size {size}"
        return self._recv_exact(size)

    def request(self, api_key, version, body):
        """Send, then return (Reader over the body after the v0 response header)."""
        cid = self.send(api_key, version, body)
        data = self.recv_frame()
        assert data is not None, f"broker closed the connection instead of answering api {api_key} v{version}"
        r = Reader(data)
        assert r.i32() == cid, "correlation id of the response does not match the request"
        return r

    def closed_by_peer(self, timeout_s=10.0):
        """True when the broker closes the connection (EOF or reset) within the timeout,
        False when it stays open without sending anything; data received is an error."""
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
        assert data == b"", f"expected the broker to close the connection, got {data[:64]!r}"
        return True


def api_versions(conn, version=0):
    """ApiVersions: (error_code, {api_key: (min, max)}) parsed as a v0 body."""
    r = conn.request(API_API_VERSIONS, version, b"")
    error = r.i16()
    ranges = r.array(lambda r: (r.i16(), r.i16(), r.i16()))
    return error, {k: (lo, hi) for k, lo, hi in ranges}


def metadata(conn, topics):
    """Metadata v1: {topic: (error_code, {partition: error_code})}."""
    body = array([string(t) for t in topics]) if topics is not None else i32(-1)
    r = conn.request(API_METADATA, 1, body)
    r.array(lambda r: (r.i32(), r.string(), r.i32(), r.string()))
    r.i32()  # controller id
    out = {}
    for error, name, _internal, parts in r.array(
        lambda r: (r.i16(), r.string(), r.i8(), r.array(
            lambda r: (r.i16(), r.i32(), r.i32(), r.array(Reader.i32), r.array(Reader.i32))))):
        out[name] = (error, {p[1]: p[0] for p in parts})
    return out


def produce_body(topic, partitions, acks=1, timeout_ms=10000):
    """Produce v3 body; `partitions` maps partition index -> records bytes."""
    parts = [i32(p) + nbytes(records) for p, records in partitions.items()]
    return string(None) + i16(acks) + i32(timeout_ms) + array([string(topic) + array(parts)])


def produce(conn, topic, partitions, acks=1):
    """Produce v3: {partition: (error_code, base_offset)}."""
    r = conn.request(API_PRODUCE, 3, produce_body(topic, partitions, acks))
    out = {}
    for _name, parts in r.array(lambda r: (r.string(), r.array(
            lambda r: (r.i32(), r.i16(), r.i64(), r.i64())))):
        for p, error, base_offset, _append_time in parts:
            out[p] = (error, base_offset)
    return out


def fetch(conn, topic, partition, offset, max_bytes=1 << 20, max_wait_ms=0, min_bytes=0):
    """Fetch v10 (the first version that may carry zstd batches) of one partition:
    (error_code, high_watermark, batches)."""
    body = (i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0)
            + i32(0) + i32(-1)  # no fetch session
            + array([string(topic) + array([i32(partition) + i32(-1) + i64(offset)
                                            + i64(-1) + i32(max_bytes)])])
            + array([]))  # forgotten topics
    r = conn.request(API_FETCH, 10, body)
    r.i32()  # throttle
    r.i16()  # top-level error
    r.i32()  # session id
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (
        r.i32(), r.i16(), r.i64(), r.i64(), r.i64(),
        r.array(lambda r: (r.i64(), r.i64())), r.nbytes()))))
    (_name, [(_p, error, high_watermark, _lso, _start, _aborted, records)]) = topics[0]
    return error, high_watermark, parse_batches(records or b"")


def list_offset(conn, topic, partition, timestamp):
    """ListOffsets v1: (error_code, offset); timestamp -2 earliest, -1 latest."""
    body = i32(-1) + array([string(topic) + array([i32(partition) + i64(timestamp)])])
    r = conn.request(API_LIST_OFFSETS, 1, body)
    topics = r.array(lambda r: (r.string(), r.array(
        lambda r: (r.i32(), r.i16(), r.i64(), r.i64()))))
    (_name, [(_p, error, _ts, offset)]) = topics[0]
    return error, offset


def init_producer_id(conn):
    """InitProducerId v0 for an idempotent (non-transactional) producer: (error, id, epoch)."""
    r = conn.request(API_INIT_PRODUCER_ID, 0, string(None) + i32(60000))
    r.i32()  # throttle
    return r.i16(), r.i64(), r.i16()


def fetch_many(conn, topic, offsets, max_bytes=1 << 20, partition_max_bytes=1 << 20,
               max_wait_ms=0):
    """Fetch v4 of several partitions of one topic, `offsets` in request order
    ({partition: offset}, ordered): [(partition, error_code, high_watermark, batches)] in
    the order the broker answered."""
    parts = [i32(p) + i64(o) + i32(partition_max_bytes) for p, o in offsets.items()]
    body = (i32(-1) + i32(max_wait_ms) + i32(0) + i32(max_bytes) + i8(0)
            + array([string(topic) + array(parts)]))
    r = conn.request(API_FETCH, 4, body)
    r.i32()  # throttle
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (
        r.i32(), r.i16(), r.i64(), r.i64(), r.array(lambda r: (r.i64(), r.i64())), r.nbytes()))))
    return [(p, error, hw, parse_batches(records or b""))
            for _name, parts in topics for p, error, hw, _lso, _ab, records in parts]
