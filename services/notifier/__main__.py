from services.notifier.app import setup
from trainmaster.service import run_service

run_service("notifier", setup)
