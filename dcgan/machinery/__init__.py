"""The machinery a run needs around the training maths: checkpoints and run dirs, preemption, the clock, memory,
CUDA graphs, synchronized BatchNorm, the run log and the health verdict. Nothing here knows the GAN objective."""
