"""Training: the run start to end (run.py), the loop and its state (loop.py), the step (step.py) with its losses,
the data, the EMA generator, the latent noise, and what a machine makes of a config (plan.py)."""
