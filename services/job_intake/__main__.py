from services.job_intake.app import setup
from trainmaster.service import run_service

run_service("job-intake", setup)
