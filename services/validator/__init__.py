"""validator: checks a job request against every rule and records the verdict (Validated/Rejected)."""
