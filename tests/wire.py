"""The one raw Kafka wire client of the tests and scripts, for exact control of the bytes:
request framing, a few non-flexible request versions, RecordBatch v2 with CRC-32C, request
frames to pipeline, and what the kernel says about a connection's socket (/proc/net/tcp).

It is independent of the broker's Rust code (written from the Kafka protocol guide), so a
test that uses it checks the broker against the protocol, not against itself.

    with wire.Conn(broker.address) as conn:
        wire.produce(conn, "t", {0: wire.record_batch([b"v"])}, acks=-1)
        error, high_watermark, batches = wire.fetch(conn, "t", 0, 0)
"""

import select
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


def uvarint(v):
    """Unsigned varint, as in flexible versions (compact lengths, tagged fields)."""
    out = bytearray()
    while True:
        if v & ~0x7F:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        else:
            out.append(v)
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

    def uvarint(self):
        shift = 0
        v = 0
        while True:
            b = self.take(1)[0]
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
            shift += 7

    def compact_string(self):
        n = self.uvarint() - 1
        return None if n < 0 else self.take(n).decode()

    def compact_array(self, item):
        n = self.uvarint() - 1
        return None if n < 0 else [item(self) for _ in range(n)]

    def tagged_fields(self):
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())

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
        leader_epoch = r.i32()
        magic = r.i8()
        crc = r.u32()
        body = data[pos + 21:pos + 12 + length]
        b = {
            "base_offset": base_offset,
            "length": length,
            "partition_leader_epoch": leader_epoch,
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
        # Records of a batch failing its CRC are not decoded: its bytes may be anything.
        if b["compression"] == 0 and b["crc_ok"]:
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
API_FIND_COORDINATOR = 10
API_HEARTBEAT = 12
API_API_VERSIONS = 18
API_CREATE_TOPICS = 19
API_INIT_PRODUCER_ID = 22
API_OFFSET_FOR_LEADER_EPOCH = 23
API_DESCRIBE_CLUSTER = 60

NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
NOT_LEADER_OR_FOLLOWER = 6
REQUEST_TIMED_OUT = 7
MESSAGE_TOO_LARGE = 10
NOT_COORDINATOR = 16
NOT_ENOUGH_REPLICAS = 19
NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20
TOPIC_ALREADY_EXISTS = 36
INVALID_REPLICATION_FACTOR = 38
NOT_CONTROLLER = 41
UNSUPPORTED_VERSION = 35
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
DUPLICATE_SEQUENCE_NUMBER = 46
FENCED_LEADER_EPOCH = 74
UNKNOWN_LEADER_EPOCH = 75


def frame(api_key, version, correlation_id, body, client_id="wire-test"):
    """A request frame with header v1 (every non-flexible request version uses it)."""
    payload = i16(api_key) + i16(version) + i32(correlation_id) + string(client_id) + body
    return i32(len(payload)) + payload


def flexible_frame(api_key, version, correlation_id, body, client_id="wire-test"):
    """A request frame with header v2 (flexible versions): header v1 plus no tagged fields.
    `body` must end with its own (empty) tagged fields."""
    payload = (i16(api_key) + i16(version) + i32(correlation_id) + string(client_id)
               + uvarint(0) + body)
    return i32(len(payload)) + payload


class Conn:
    """One TCP connection speaking raw Kafka frames; `address` is (host, port) or a port on
    127.0.0.1."""

    def __init__(self, address, timeout_s=10.0):
        if isinstance(address, int):
            address = ("127.0.0.1", address)
        self.sock = socket.create_connection(address, timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout_s = timeout_s
        # Kept past close(): the kernel may hold the broker's end of the socket longer.
        self.local_port = self.sock.getsockname()[1]
        self.broker_port = self.sock.getpeername()[1]
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

    def recv_frame(self, timeout_s=None):
        """One response frame without its size prefix; None when the broker closed. With
        `timeout_s`, socket.timeout if no frame starts arriving within it."""
        if timeout_s is not None:
            self.sock.settimeout(timeout_s)
        try:
            head = self._recv_exact(4)
        finally:
            self.sock.settimeout(self.timeout_s)
        if head is None:
            return None
        size = struct.unpack(">i", head)[0]
        assert 0 <= size < 64 << 20, f"response frame size {size}"
        return self._recv_exact(size)

    def readable(self, timeout_s=0.0):
        """True when an answer (or the broker's close) is waiting to be read."""
        return bool(select.select([self.sock], [], [], timeout_s)[0])

    def request(self, api_key, version, body):
        """Send, then return (Reader over the body after the v0 response header)."""
        cid = self.send(api_key, version, body)
        data = self.recv_frame()
        assert data is not None, f"broker closed the connection instead of answering api {api_key} v{version}"
        r = Reader(data)
        assert r.i32() == cid, "correlation id of the response does not match the request"
        return r

    def flexible_request(self, api_key, version, body):
        """A flexible-version request (header v2; `body` ends with its tagged fields); returns
        a Reader over the body after the v1 response header."""
        cid = self.next_correlation_id
        self.next_correlation_id += 1
        self.send_raw(flexible_frame(api_key, version, cid, body))
        data = self.recv_frame()
        assert data is not None, f"broker closed the connection instead of answering api {api_key} v{version}"
        r = Reader(data)
        assert r.i32() == cid, "correlation id of the response does not match the request"
        r.tagged_fields()
        return r

    def closed_by_peer(self, timeout_s=10.0, drop_data=False):
        """True when the broker closes the connection (EOF or reset) within the timeout,
        False when it stays open. Data received first is an error, unless `drop_data` (for
        random bytes, which may happen to hold a request the broker answers)."""
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                self.sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = self.sock.recv(65536)
                if not data:
                    return True
                assert drop_data, f"expected the broker to close the connection, got {data[:64]!r}"
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(self.timeout_s)

    # --- The kernel's view of this connection (/proc/net/tcp) -----------------------------
    def my_end(self):
        """(state, tx_queue, rx_queue) of this side's socket, or None once it is gone."""
        return tcp_socket(self.local_port, self.broker_port)

    def broker_end(self):
        """(state, tx_queue, rx_queue) of the broker's socket of this connection, or None
        once the broker closed it and the kernel let go of it."""
        return tcp_socket(self.broker_port, self.local_port)

    def broker_read_everything_sent(self):
        """True once every byte sent on this connection reached the broker's socket and the
        broker read it from there (it is in the broker's own buffers now)."""
        mine, theirs = self.my_end(), self.broker_end()
        return mine is not None and theirs is not None and mine[1] == 0 and theirs[2] == 0

    def broker_closed_its_end(self):
        """True once the broker closed (or never held) its socket of this connection: it is
        done with the connection and with every request it took from it."""
        theirs = self.broker_end()
        return theirs is None or theirs[0] not in ("ESTABLISHED", "CLOSE_WAIT")


TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING"}


def tcp_socket(local_port, remote_port):
    """(state, tx_queue bytes, rx_queue bytes) of the loopback IPv4 TCP socket from
    `local_port` to `remote_port`, as /proc/net/tcp shows it; None if there is none.
    tx_queue counts bytes sent and not yet acknowledged by the peer's kernel, rx_queue bytes
    received that the owning process has not read yet."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if int(local.split(":")[1], 16) != local_port:
                continue
            if int(remote.split(":")[1], 16) != remote_port:
                continue
            tx, rx = (int(q, 16) for q in queues.split(":"))
            return TCP_STATES.get(int(state, 16), state), tx, rx
    return None


def first_to_answer(conns, timeout_s):
    """The first of `conns` to have an answer (or a close) to read, or None after timeout_s."""
    ready = select.select([c.sock for c in conns], [], [], timeout_s)[0]
    if not ready:
        return None
    # Several may be ready when the first is noticed late: take them in the order given.
    return next(c for c in conns if c.sock in ready)


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


def metadata_v7(conn, topics=None):
    """Metadata v7 (the first version with leader epochs), auto-creation off; `topics` None
    asks for every topic. Returns a dict:
    {"brokers": {node id: (host, port)}, "cluster_id": str or None, "controller_id": int,
     "topics": {name: {"error": code, "partitions": {index: {"error", "leader",
                "leader_epoch", "replicas", "isr", "offline"}}}}}"""
    body = (i32(-1) if topics is None else array([string(t) for t in topics])) + i8(0)
    r = conn.request(API_METADATA, 7, body)
    r.i32()  # throttle
    brokers = {node: (host, port) for node, host, port, _rack in r.array(
        lambda r: (r.i32(), r.string(), r.i32(), r.string()))}
    cluster_id = r.string()
    controller_id = r.i32()

    def partition(r):
        return {"error": r.i16(), "index": r.i32(), "leader": r.i32(), "leader_epoch": r.i32(),
                "replicas": r.array(Reader.i32), "isr": r.array(Reader.i32),
                "offline": r.array(Reader.i32)}

    out = {}
    for error, name, _internal, parts in r.array(
            lambda r: (r.i16(), r.string(), r.i8(), r.array(partition))):
        out[name] = {"error": error, "partitions": {p.pop("index"): p for p in parts}}
    return {"brokers": brokers, "cluster_id": cluster_id, "controller_id": controller_id,
            "topics": out}


def create_topics(conn, topics, timeout_ms=10000, validate_only=False):
    """CreateTopics v2. `topics` is a list of (name, partitions, replication factor) or
    (name, partitions, replication factor, {partition: [broker ids]}); with an assignment,
    partitions and replication factor are sent as -1 as Kafka requires. Returns
    {name: (error_code, error_message)}."""
    items = []
    for t in topics:
        name, partitions, replication = t[:3]
        assignment = t[3] if len(t) > 3 else None
        if assignment:
            partitions, replication = -1, -1
            assigned = array([i32(p) + array([i32(b) for b in brokers])
                              for p, brokers in sorted(assignment.items())])
        else:
            assigned = array([])
        items.append(string(name) + i32(partitions) + i16(replication) + assigned
                     + array([]))  # no configs
    body = array(items) + i32(timeout_ms) + i8(1 if validate_only else 0)
    r = conn.request(API_CREATE_TOPICS, 2, body)
    r.i32()  # throttle
    return {name: (error, message) for name, error, message in r.array(
        lambda r: (r.string(), r.i16(), r.string()))}


def describe_cluster(conn, version=0):
    """DescribeCluster v0-v2 (flexible), brokers only (endpoint type 1), fenced ones too
    (v2): {"error", "error_message", "cluster_id", "controller_id", "brokers": {broker id:
    (host, port)}, "fenced": [broker ids] (v2)}."""
    body = i8(0)  # no authorized operations
    if version >= 1:
        body += i8(1)  # endpoint type: brokers
    if version >= 2:
        body += i8(1)  # include fenced brokers
    r = conn.flexible_request(API_DESCRIBE_CLUSTER, version, body + uvarint(0))
    r.i32()  # throttle
    out = {"error": r.i16(), "error_message": r.compact_string()}
    if version >= 1:
        r.i8()  # endpoint type
    out["cluster_id"] = r.compact_string()
    out["controller_id"] = r.i32()

    def broker(r):
        b = (r.i32(), r.compact_string(), r.i32(), r.compact_string(),
             r.i8() if version >= 2 else 0)
        r.tagged_fields()
        return b
    brokers = r.compact_array(broker)
    out["brokers"] = {b: (host, port) for b, host, port, _rack, _fenced in brokers}
    if version >= 2:
        out["fenced"] = sorted(b for b, _h, _p, _r, fenced in brokers if fenced)
    return out


def find_coordinator(conn, key, key_type=0):
    """FindCoordinator v1 (key_type 0: a group): (error_code, node_id, host, port)."""
    r = conn.request(API_FIND_COORDINATOR, 1, string(key) + i8(key_type))
    r.i32()  # throttle
    error = r.i16()
    r.string()  # error message
    return error, r.i32(), r.string(), r.i32()


def heartbeat(conn, group, generation_id=1, member_id="nobody"):
    """Heartbeat v0: the error code (NOT_COORDINATOR from a broker that does not
    coordinate the group)."""
    r = conn.request(API_HEARTBEAT, 0, string(group) + i32(generation_id) + string(member_id))
    return r.i16()


def produce_body(topic, partitions, acks=1, timeout_ms=10000):
    """Produce v3 body; `partitions` maps partition index -> records bytes."""
    parts = [i32(p) + nbytes(records) for p, records in partitions.items()]
    return string(None) + i16(acks) + i32(timeout_ms) + array([string(topic) + array(parts)])


def produce(conn, topic, partitions, acks=1):
    """Produce v3: {partition: (error_code, base_offset)}."""
    return _produce_answer(conn.request(API_PRODUCE, 3, produce_body(topic, partitions, acks)))


def _produce_answer(r):
    out = {}
    for _name, parts in r.array(lambda r: (r.string(), r.array(
            lambda r: (r.i32(), r.i16(), r.i64(), r.i64())))):
        for p, error, base_offset, _append_time in parts:
            out[p] = (error, base_offset)
    return out


def fetch(conn, topic, partition, offset, max_bytes=1 << 20, max_wait_ms=0, min_bytes=0,
          current_leader_epoch=-1):
    """Fetch v10 (the first version that may carry zstd batches) of one partition:
    (error_code, high_watermark, batches). `current_leader_epoch` -1 skips the epoch check."""
    body = (i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0)
            + i32(0) + i32(-1)  # no fetch session
            + array([string(topic) + array([i32(partition) + i32(current_leader_epoch)
                                            + i64(offset)
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


def list_offset_v4(conn, topic, partition, timestamp, current_leader_epoch=-1):
    """ListOffsets v4 (the first with leader epochs), read_uncommitted: (error_code, offset,
    leader_epoch); timestamp -2 earliest, -1 latest. `current_leader_epoch` -1 skips the
    check; an older one than the partition's is FENCED_LEADER_EPOCH, a newer one
    UNKNOWN_LEADER_EPOCH."""
    body = (i32(-1) + i8(0)
            + array([string(topic) + array([i32(partition) + i32(current_leader_epoch)
                                            + i64(timestamp)])]))
    r = conn.request(API_LIST_OFFSETS, 4, body)
    r.i32()  # throttle
    topics = r.array(lambda r: (r.string(), r.array(
        lambda r: (r.i32(), r.i16(), r.i64(), r.i64(), r.i32()))))
    (_name, [(_p, error, _ts, offset, leader_epoch)]) = topics[0]
    return error, offset, leader_epoch


def offset_for_leader_epoch(conn, topic, partition, leader_epoch, current_leader_epoch=-1):
    """OffsetForLeaderEpoch v3 (KIP-279), as a consumer asks it (replica id -1): the
    (error_code, leader_epoch, end_offset) of the largest epoch <= `leader_epoch` the leader
    knows and the offset where the next epoch starts (its log end for its current epoch)."""
    body = (i32(-1)
            + array([string(topic) + array([i32(partition) + i32(current_leader_epoch)
                                            + i32(leader_epoch)])]))
    r = conn.request(API_OFFSET_FOR_LEADER_EPOCH, 3, body)
    r.i32()  # throttle
    topics = r.array(lambda r: (r.string(), r.array(
        lambda r: (r.i16(), r.i32(), r.i32(), r.i64()))))
    (_name, [(error, _p, epoch, end_offset)]) = topics[0]
    return error, epoch, end_offset


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
    body = fetch_v4_body(topic, offsets, max_bytes, partition_max_bytes, max_wait_ms)
    return _fetch_v4_answer(conn.request(API_FETCH, 4, body))


def fetch_v4_body(topic, offsets, max_bytes=1 << 20, partition_max_bytes=1 << 20,
                  max_wait_ms=0, min_bytes=0):
    """Fetch v4 body of the partitions of one topic in `offsets` ({partition: offset})."""
    parts = [i32(p) + i64(o) + i32(partition_max_bytes) for p, o in offsets.items()]
    return (i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0)
            + array([string(topic) + array(parts)]))


def _fetch_v4_answer(r, parse=True):
    r.i32()  # throttle
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (
        r.i32(), r.i16(), r.i64(), r.i64(), r.array(lambda r: (r.i64(), r.i64())), r.nbytes()))))
    return [(p, error, hw, parse_batches(records or b"") if parse else records or b"")
            for _name, parts in topics for p, error, hw, _lso, _ab, records in parts]


# --- Request frames to pipeline (send many, read the answers later) and their answers. -----
# Every function here builds or reads one whole frame, so a test or a script (soak.py,
# fill.py) can put several requests in one write and match answers by correlation id.
def api_versions_request(correlation_id=1, version=0):
    return frame(API_API_VERSIONS, version, correlation_id, b"")


def metadata_request(topics, correlation_id=1):
    """Metadata v1 of `topics` (with auto-creation on, this creates them)."""
    return frame(API_METADATA, 1, correlation_id, array([string(t) for t in topics]))


def produce_request(topic, partition, records, acks=-1, correlation_id=1, timeout_ms=10000):
    """Produce v3 of one partition's records."""
    return frame(API_PRODUCE, 3, correlation_id,
                 produce_body(topic, {partition: records}, acks, timeout_ms))


def fetch_request(topic, partition, offset, max_bytes=1 << 20, max_wait_ms=0, min_bytes=0,
                  correlation_id=1):
    """Fetch v4 of one partition."""
    return frame(API_FETCH, 4, correlation_id, fetch_v4_body(
        topic, {partition: offset}, max_bytes, max_bytes, max_wait_ms, min_bytes))


def correlation_id(answer):
    """The correlation id of a response frame (its first field in every header version)."""
    return struct.unpack_from(">i", answer)[0]


def produce_answer(answer):
    """The Produce v3 response frame `answer`: {partition: (error_code, base_offset)}."""
    r = Reader(answer)
    r.i32()  # correlation id
    return _produce_answer(r)


def fetch_answer(answer, parse=True):
    """The Fetch v4 response frame `answer` of one partition: (error, high_watermark,
    batches), or the records as bytes instead of batches when not `parse`."""
    r = Reader(answer)
    r.i32()  # correlation id
    [(_, error, high_watermark, batches)] = _fetch_v4_answer(r, parse)
    return error, high_watermark, batches


def auto_create(address, *topics, timeout_s=30.0):
    """Create `topics` through Metadata (the broker's auto-creation); returns once Metadata
    answers every one without error (the first answer may say LEADER_NOT_AVAILABLE)."""
    deadline = time.monotonic() + timeout_s
    with Conn(address) as conn:
        while True:
            answer = metadata(conn, list(topics))
            if all(answer[t][0] == NONE for t in topics):
                return
            assert time.monotonic() < deadline, f"topics not created: {answer}"
            time.sleep(0.02)


def high_watermark(address, topic, partition=0):
    """The partition's high watermark, read with a Fetch on a connection of its own."""
    with Conn(address) as conn:
        error, hw, _ = fetch(conn, topic, partition, 0, max_bytes=1)
    assert error == NONE, f"fetch of {topic}/{partition}: error {error}"
    return hw
