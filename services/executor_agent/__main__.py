"""``python -m services.executor_agent``: run the agent of this host."""

from services.executor_agent.app import setup
from trainmaster.service import run_service

if __name__ == "__main__":
    run_service("executor-agent", setup)
