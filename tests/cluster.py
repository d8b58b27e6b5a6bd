"""A cluster of `shardlog` nodes: voters of the metadata quorum (which are brokers too) and
broker-only nodes, each a `Node` (a `broker_process.Broker` that also has a node id and a
controller port). The one way the tests and scripts run a cluster.

    fleet = Fleet(shardlog_binary(), Path("/tmp/c"))
    cluster = Cluster(fleet, voters=3).start()   # spawn all three, then wait for each
    cluster.create_topic("t", partitions=12, replication_factor=3)
    leader = cluster.controller()                # the quorum leader's Node
    leader.kill()                                # SIGKILL; leader.start() brings it back
    four = cluster.add_broker()                  # a broker-only node, started
    assert fleet.close(together=True) == []      # every node still running exits 0

How a node is run: `--node-id N --controller-listen 127.0.0.1:CPORT
--controller-quorum-voters 1@127.0.0.1:C1,2@127.0.0.1:C2,...` plus the cluster's session
timeout and heartbeat interval, on top of what a `Broker` passes (data dir, listen and
advertise address, cores, preallocation). Each node has two ports chosen once (Kafka and
controller) and its data dir; both stay the same across its restarts.

Starting: a voter prints `listening on` only once a majority of voters is up, so a cluster
is started by spawning every node first and only then waiting for each one
(`Broker.start()` on the first voter alone would wait forever). `Cluster.start` then waits
until the cluster serves: every running node's Metadata lists every running node, with its
address, and names the same controller, one of the running voters.

What the cluster says is read with Metadata v7 (raw wire, `wire.metadata_v7`): the brokers,
the controller id, the cluster id and per partition leader, leader epoch, replicas and ISR,
as one node sees them. Every wait is on a condition with a deadline (`wait_for`).
"""

import socket
import time

from confluent_kafka.admin import AdminClient, NewTopic

import wire
from broker_process import Broker, free_port, wait_until
from clients import RDKAFKA_LOGGER

SESSION_TIMEOUT_MS = 1500
HEARTBEAT_INTERVAL_MS = 250
# Spawn to every node serving; generous: two cores run three nodes and the clients.
CLUSTER_READY_DEADLINE_S = 30.0
# A Metadata request that takes longer counts as no answer while waiting on a condition.
METADATA_TIMEOUT_S = 3.0
CREATE_TOPIC_DEADLINE_S = 30.0

# Ports handed to nodes of this process that may not be bound yet (a node not started, or
# down for a restart): never handed out twice.
_HANDED_OUT = set()


def _new_port():
    while True:
        port = free_port()
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class Node(Broker):
    """One node of a cluster: a Broker with a node id, a controller port and the cluster's
    voter list. A voter when its id is in the voter list, else a broker-only node."""

    def __init__(self, *args, node_id, controller_port, voters, cluster_args=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.node_id = node_id
        self.controller_port = controller_port
        self.voters = dict(voters)  # {voter id: controller port}
        self.cluster_args = list(cluster_args)

    @property
    def is_voter(self):
        return self.node_id in self.voters

    @property
    def controller_listen(self):
        return f"127.0.0.1:{self.controller_port}"

    @property
    def controller_address(self):
        return ("127.0.0.1", self.controller_port)

    def voters_flag(self):
        return ",".join(f"{i}@127.0.0.1:{p}" for i, p in sorted(self.voters.items()))

    def command(self):
        base = super().command()  # ends with the node's own extra flags (self.args)
        head, own = base[:len(base) - len(self.args)], base[len(base) - len(self.args):]
        return [*head,
                "--node-id", str(self.node_id),
                "--controller-listen", self.controller_listen,
                "--controller-quorum-voters", self.voters_flag(),
                *self.cluster_args, *own]

    def __repr__(self):
        role = "voter" if self.is_voter else "broker"
        return f"<Node {self.node_id} ({role}) {self.bootstrap} ctl {self.controller_port}>"


class Cluster:
    """N voters (ids first_id, first_id + 1, ...) and any broker-only nodes added later, all
    in one `Fleet` (whose close applies the teardown rule: every node still running exits 0
    on SIGTERM)."""

    def __init__(self, fleet, voters=3, name="", args=(), cores=1, env=None, first_id=1,
                 session_timeout_ms=SESSION_TIMEOUT_MS,
                 heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS):
        self.fleet = fleet
        self.prefix = f"{name}-" if name else ""
        self.args = list(args)
        self.cores = cores
        self.env = dict(env or {})
        self.session_timeout_ms = session_timeout_ms
        self.cluster_args = ["--broker-session-timeout-ms", str(session_timeout_ms),
                             "--broker-heartbeat-interval-ms", str(heartbeat_interval_ms)]
        ids = range(first_id, first_id + voters)
        self.voter_ports = {i: _new_port() for i in ids}
        self.nodes = [self._new_node(i) for i in ids]
        # Seconds from the first spawn of `start` to every node listening / serving.
        self.listening_s = None
        self.serving_s = None

    def _new_node(self, node_id, name=None, data_dir=None, args=()):
        controller_port = self.voter_ports.get(node_id) or _new_port()
        return self.fleet.new(
            name=name or f"{self.prefix}n{node_id}", cores=self.cores,
            args=[*self.args, *args], env=self.env, data_dir=data_dir, port=_new_port(),
            broker_class=Node, node_id=node_id, controller_port=controller_port,
            voters=self.voter_ports, cluster_args=self.cluster_args)

    # --- the nodes ------------------------------------------------------------------------
    def node(self, node_id):
        matches = [n for n in self.nodes if n.node_id == node_id and n.is_running()]
        matches = matches or [n for n in self.nodes if n.node_id == node_id]
        assert matches, f"no node {node_id} in {self.nodes}"
        return matches[0]

    def running(self):
        return [n for n in self.nodes if n.is_running()]

    def others(self, *excluded):
        """The running nodes except `excluded` (nodes or ids)."""
        ids = {x.node_id if isinstance(x, Node) else x for x in excluded}
        return [n for n in self.running() if n.node_id not in ids]

    @property
    def bootstrap(self):
        """Every running node's address, for clients that should find the cluster from any."""
        return ",".join(n.bootstrap for n in self.running())

    # --- starting -------------------------------------------------------------------------
    def start(self, timeout_s=CLUSTER_READY_DEADLINE_S):
        """Spawn every node not running, then wait until each listens and the cluster
        serves (see `wait_serving`). Records `listening_s` and `serving_s`."""
        started = time.monotonic()
        self.start_nodes([n for n in self.nodes if not n.is_running()], timeout_s)
        self.listening_s = time.monotonic() - started
        self.wait_serving(max(1.0, timeout_s - self.listening_s))
        self.serving_s = time.monotonic() - started
        return self

    def start_nodes(self, nodes, timeout_s=CLUSTER_READY_DEADLINE_S):
        """Spawn all of `nodes`, then wait for each one's `listening on` (one deadline for
        all). Returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout_s
        for node in nodes:
            node.spawn()
        for node in nodes:
            outcome = node._wait_ready(max(0.1, deadline - time.monotonic()))
            if outcome != "ready":
                # This failure is the one reported: the others of this start are stopped
                # (SIGKILL) and their ends not reported again by the teardown rule.
                for other in nodes:
                    if other.is_running():
                        other.kill()
                    other._exit_expected = True
                raise AssertionError(
                    f"{node.name} (node {node.node_id}) did not start ({outcome}); its log:\n"
                    f"{node.run_log()}")
            node.ready_s = time.monotonic() - started
        return time.monotonic() - started

    def stop(self):
        """SIGTERM to every running node at once, then each must exit 0 (`Broker.stop`).
        Returns the seconds until the last one exited."""
        started = time.monotonic()
        nodes = self.running()
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.stop()
        return time.monotonic() - started

    def add_broker(self, node_id=None, name=None, data_dir=None, args=(), start=True):
        """A broker-only node (its id is not among the voters), started unless `start` is
        False. It registers with the quorum; `wait_brokers` sees it arrive."""
        if node_id is None:
            node_id = max(n.node_id for n in self.nodes) + 1
        node = self._new_node(node_id, name=name, data_dir=data_dir, args=args)
        self.nodes.append(node)
        if start:
            node.start(CLUSTER_READY_DEADLINE_S)
        return node

    # --- what the nodes say ---------------------------------------------------------------
    def metadata(self, node=None, topics=None, timeout_s=METADATA_TIMEOUT_S):
        """Metadata v7 as `node` (default: the first running node) answers it; see
        `wire.metadata_v7`. `topics` None asks for every topic."""
        node = node or self.running()[0]
        with wire.Conn(node.address, timeout_s=timeout_s) as conn:
            return wire.metadata_v7(conn, topics)

    def try_metadata(self, node=None, topics=None, timeout_s=METADATA_TIMEOUT_S):
        """`metadata`, or None when the node does not answer (down, closed, too slow)."""
        try:
            return self.metadata(node, topics, timeout_s)
        except (OSError, socket.timeout, AssertionError, ValueError):
            return None

    def controller_id(self, node=None):
        return self.metadata(node)["controller_id"]

    def controller(self, node=None):
        """The Node that `node` (default: the first running one) names as controller."""
        return self.node(self.controller_id(node))

    @staticmethod
    def wait_for(condition, deadline_s, what, interval_s=0.05):
        """Poll `condition` until it returns something truthy (returned); fail naming
        `what` after `deadline_s` seconds."""
        return wait_until(condition, deadline_s, what, interval_s=interval_s)

    def wait_serving(self, timeout_s=CLUSTER_READY_DEADLINE_S):
        """Wait until every running node's Metadata lists exactly the running nodes (ids and
        addresses) and all name the same controller, a running voter. Returns that id."""
        def serving():
            expected = {n.node_id: n.address for n in self.running()}
            views = [self.try_metadata(n) for n in self.running()]
            if any(v is None or v["brokers"] != expected for v in views):
                return None
            controllers = {v["controller_id"] for v in views}
            if len(controllers) != 1:
                return None
            (controller,) = controllers
            ok = controller in expected and self.node(controller).is_voter
            return ("ok", controller) if ok else None
        return self.wait_for(serving, timeout_s, f"every node of {self.running()} to list "
                                                 "them all and agree on a controller")[1]

    def wait_brokers(self, ids, nodes=None, timeout_s=10.0):
        """Wait until every one of `nodes` (default: the running ones) lists exactly the
        brokers `ids` in Metadata. Returns the last view."""
        ids = set(ids)

        def listed():
            views = [self.try_metadata(n) for n in nodes or self.running()]
            if all(v is not None and set(v["brokers"]) == ids for v in views):
                return views[-1]
            return None
        return self.wait_for(listed, timeout_s, f"Metadata of {nodes or self.running()} to "
                                                f"list brokers {sorted(ids)}")

    def wait_new_controller(self, old_id, nodes=None, timeout_s=10.0, interval_s=0.05):
        """Wait until every one of `nodes` (default: the running ones) names the same
        controller, neither `old_id` nor -1. Returns that id."""
        def agreed():
            views = [self.try_metadata(n) for n in nodes or self.running()]
            if any(v is None for v in views):
                return None
            ids = {v["controller_id"] for v in views}
            if len(ids) == 1 and not ids & {old_id, -1}:
                return ids.pop()
            return None
        return self.wait_for(agreed, timeout_s, f"a controller other than {old_id} named by "
                                                f"{nodes or self.running()}", interval_s)

    def wait_topic(self, name, partitions=None, nodes=None, timeout_s=CREATE_TOPIC_DEADLINE_S,
                   condition=None):
        """Wait until every one of `nodes` (default: the running ones) knows the topic, with
        `partitions` partitions if given, each with a leader and no error, and `condition`
        (on one node's view of the topic: {partition: {...}}) holds. Returns the view of the
        first of `nodes`."""
        def known():
            views = []
            for node in nodes or self.running():
                md = self.try_metadata(node, [name])
                topic = md and md["topics"].get(name)
                if not topic or topic["error"] != wire.NONE or not topic["partitions"]:
                    return None
                parts = topic["partitions"]
                if partitions is not None and len(parts) != partitions:
                    return None
                if any(p["error"] != wire.NONE or p["leader"] < 0 for p in parts.values()):
                    return None
                if condition is not None and not condition(parts):
                    return None
                views.append(parts)
            return views[0]
        return self.wait_for(known, timeout_s, f"topic {name} on {nodes or self.running()}")

    # --- acting on the cluster through a real client --------------------------------------
    def create_topic(self, name, partitions=1, replication_factor=1, assignment=None,
                     config=None, timeout_s=CREATE_TOPIC_DEADLINE_S):
        """Create a topic with librdkafka's AdminClient (which sends CreateTopics to the
        controller Metadata names), then wait until every running node knows it with a
        leader per partition. `assignment`: {partition: [broker ids]} instead of a count
        and a replication factor. Returns the first node's view {partition: {...}}."""
        if assignment:
            partitions = len(assignment)
            # The Python client wants the count too; librdkafka sends -1 with the assignment.
            topic = NewTopic(name, num_partitions=partitions,
                             replica_assignment=[assignment[p] for p in sorted(assignment)],
                             config=config or {})
        else:
            topic = NewTopic(name, num_partitions=partitions,
                             replication_factor=replication_factor, config=config or {})
        admin = ck_admin(self.bootstrap)
        started = time.monotonic()
        admin.create_topics([topic], operation_timeout=10,
                            request_timeout=timeout_s)[name].result(timeout=timeout_s)
        left = max(1.0, timeout_s - (time.monotonic() - started))
        return self.wait_topic(name, partitions, timeout_s=left)


def ck_admin(bootstrap):
    """A new confluent-kafka AdminClient; keep it referenced until its futures resolve."""
    return AdminClient({"bootstrap.servers": bootstrap, "logger": RDKAFKA_LOGGER})


def ck_cluster_metadata(bootstrap, timeout_s=10.0):
    """librdkafka's view (AdminClient.list_topics, a Metadata request to the bootstrap
    broker): (brokers {id: (host, port)}, controller id, {topic: {partition: (leader,
    replicas, isrs)}})."""
    admin = ck_admin(bootstrap)
    md = admin.list_topics(timeout=timeout_s)
    brokers = {b.id: (b.host, b.port) for b in md.brokers.values()}
    topics = {name: {p.id: (p.leader, list(p.replicas), list(p.isrs))
                     for p in t.partitions.values()}
              for name, t in md.topics.items()}
    return brokers, md.controller_id, topics


def leaders(parts):
    """{partition: leader id} of one view of a topic ({partition: {...}})."""
    return {p: info["leader"] for p, info in parts.items()}
