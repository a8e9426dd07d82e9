"""DCGAN on MNIST. train/ trains; machinery/ is what a run needs around the maths (checkpoints, run dirs,
preemption, logs, health); loading, generate and serve at this level use a trained generator and import nothing
from train/. config and models are shared by all three."""
