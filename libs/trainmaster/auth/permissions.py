"""Who may publish and subscribe to what on the bus: plain functions of the topology.

Services share one account with the agents and may use everything in it (JetStream API, KV,
every subject).  An agent may use only what its own nodes need (found by running one under these
rights: tests/integration/test_bus_identity.py), and nothing that reads or changes the work of
others:

- its own heartbeat and status subjects (the scheduler believes an agent only about itself:
  services/scheduler/trust.py), the log subjects (a node's lines), its own dead letters;
- its own durable consumer on the agent stream: created with its own filter only (the filter is
  part of the create subject), its info, its next messages, the acks of its messages;
- the rendezvous bucket of distributed launches (write its own entries, read all) and the dataset
  manifests it stages from (read);
- replies only to its own inboxes (``agent_inbox``), so it cannot read the answers to anybody
  else's requests.

No JetStream API wildcard: no stream or consumer it does not own is created, changed, deleted,
purged or read.  The services provision the topology; an agent only waits for it.
"""

from __future__ import annotations

from trainmaster.auth.jwt import Permissions
from trainmaster.topology import Topology

INBOX = "_INBOX.>"
AGENT_INBOXES = "_INBOX.agents"  # a nuid (22 characters) is never "agents": no service's inbox is under it


def agent_inbox(agent_id: str) -> str:
    """The inbox prefix of an agent's connection: the replies to its requests come under it."""
    return f"{AGENT_INBOXES}.{agent_id}"


def service() -> Permissions:
    return Permissions(publish=(">",), subscribe=(">",), allow_responses=True)


def cluster_admin() -> Permissions:
    """The operator of the cluster (the local admin of ``make run``): everything, as a service."""
    return Permissions(publish=(">",), subscribe=(">",))


def _kv_read(bucket: str) -> tuple[str, ...]:
    """Open a bucket and get its keys.  The buckets are made without direct gets, so a get is a
    message get on the bucket's stream (the key is in the request's body: any key of it)."""
    return (f"$JS.API.STREAM.INFO.KV_{bucket}", f"$JS.API.STREAM.MSG.GET.KV_{bucket}")


def agent(topo: Topology, agent_id: str) -> Permissions:
    consumer = topo.consumer_agent(agent_id)
    stream, durable = consumer.stream, consumer.durable
    rendezvous = topo.bucket_rendezvous.name
    publish = (
        topo.agent_heartbeat(agent_id),
        topo.agent_status(agent_id),
        topo.logs(),
        topo.dlq(durable),
        # its own durable consumer: created with its own filter only, read, acknowledged
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.{consumer.filter_subject}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
        # distributed launch: it writes its own nodes' addresses only (keys end in its id) and
        # reads the others'
        f"$KV.{rendezvous}.*.*.*.{agent_id}",
        *_kv_read(rendezvous),
        # dataset manifests to stage from (read only)
        *_kv_read(topo.bucket_dataset_versions.name),
    )
    return Permissions(publish=publish, subscribe=(f"{agent_inbox(agent_id)}.>",))


USER_INBOXES = "_INBOX.users"


def user_inbox(name: str) -> str:
    """The inbox prefix a user connects with (``nats.connect(..., inbox_prefix=...)``): the replies
    to its requests come under it, and it may subscribe to nothing else."""
    return f"{USER_INBOXES}.{name}"


def user(topo: Topology, name: str = "{{name()}}") -> Permissions:
    """A person, in the people's account: send the verbs the services' account exports (each
    answered after a check of the caller's role), receive replies in its own inboxes only, so it
    cannot read the answers meant for another user.  With the default ``name`` this is the
    template of the users' scoped signing key: nats-server puts each user's name in."""
    return Permissions(publish=tuple(subject for subject, _ in topo.user_exports()),
                       subscribe=(f"{user_inbox(name)}.>",))
