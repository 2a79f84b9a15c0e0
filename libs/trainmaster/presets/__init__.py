"""The preset algorithms' training scripts (R12).  Each is run as a boot file by the agent, in the
runtime of its engine, so they import nothing from trainmaster: ``_tabular`` is their shared helper."""
