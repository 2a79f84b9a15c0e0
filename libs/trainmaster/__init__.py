"""trainmaster: a self-hosted training-job service over NATS JetStream (shared library)."""

__version__ = "0.1.0"
