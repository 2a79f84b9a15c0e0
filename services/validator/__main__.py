from services.validator.app import setup
from trainmaster.service import run_service

run_service("validator", setup)
