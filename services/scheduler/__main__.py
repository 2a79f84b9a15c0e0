from services.scheduler.app import setup
from trainmaster.service import run_service

run_service("scheduler", setup)
