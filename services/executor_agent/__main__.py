"""``python -m services.executor_agent``: run the agent of this host.  It does not provision the
topology (its credentials allow only its own consumer: the services provision it), and its replies
come to inboxes of its own (``permissions.agent_inbox``)."""

from services.executor_agent.app import inbox_of, setup
from trainmaster.service import run_service

if __name__ == "__main__":
    run_service("executor-agent", setup, provisions=False, inbox_of=inbox_of)
