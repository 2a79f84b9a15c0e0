"""The executor agent: one daemon per host that runs the nodes of training jobs."""
