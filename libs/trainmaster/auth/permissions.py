"""Who may publish and subscribe to what on the bus: plain functions of the topology.

Services share one account with the agents and may use everything in it (JetStream API, KV,
every subject).  An agent may use only what its own nodes need: its own commands (its durable
consumer), its own heartbeat and status subjects, the logs it ships, the rendezvous bucket of
distributed launches and the dataset manifests it stages from.
"""

from __future__ import annotations

from trainmaster.auth.jwt import Permissions
from trainmaster.topology import Topology

INBOX = "_INBOX.>"


def service() -> Permissions:
    return Permissions(publish=(">",), subscribe=(">",), allow_responses=True)


def cluster_admin() -> Permissions:
    """The operator of the cluster (the local admin of ``make run``): everything, as a service."""
    return Permissions(publish=(">",), subscribe=(">",))


def agent(topo: Topology, agent_id: str) -> Permissions:
    consumer = topo.consumer_agent(agent_id)
    stream = consumer.stream
    durable = consumer.durable
    rendezvous = f"KV_{topo.bucket_rendezvous.name}"
    manifests = f"KV_{topo.bucket_dataset_versions.name}"
    publish = (
        topo.agent_heartbeat(agent_id),
        topo.agent_status(agent_id),
        topo.logs(),
        topo.dlq(durable),
        # its own durable consumer: made with its own filter, read, acknowledged
        f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.{consumer.filter_subject}",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
        f"$JS.API.STREAM.INFO.{stream}",
        # distributed launch: the nodes of an attempt publish and read each other's addresses
        f"$KV.{topo.bucket_rendezvous.name}.>",
        f"$JS.API.STREAM.INFO.{rendezvous}",
        f"$JS.API.DIRECT.GET.{rendezvous}.>",
        f"$JS.API.STREAM.MSG.GET.{rendezvous}",
        f"$JS.API.CONSUMER.CREATE.{rendezvous}.>",
        f"$JS.API.CONSUMER.DELETE.{rendezvous}.>",
        # dataset manifests to stage from (read only)
        f"$JS.API.STREAM.INFO.{manifests}",
        f"$JS.API.DIRECT.GET.{manifests}.>",
        f"$JS.API.STREAM.MSG.GET.{manifests}",
        "$JS.API.INFO",
    )
    return Permissions(publish=publish, subscribe=(INBOX,))
