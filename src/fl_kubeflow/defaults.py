"""Training defaults shared by the CLI, the local runner, the trainer and the pipeline.

Chosen on digits (3 clients, 10 rounds, mlp): these reach >= 0.95 federated test
accuracy; benchmarks/convergence.md has the numbers and the centralized baseline.
"""

DATASET = "digits"
PARTITION = "iid"
MODEL = "mlp"
LOCAL_EPOCHS = 2
BATCH_SIZE = 16
LEARNING_RATE = 0.05
OPTIMIZER = "sgd"
SEED = 0
