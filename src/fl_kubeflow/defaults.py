"""Defaults shared by the CLI, the local runner, the tasks, the server and the pipeline.

Training defaults were chosen on digits (3 clients, 10 rounds, mlp): these reach >= 0.95
federated test accuracy; benchmarks/convergence.md has the numbers and the centralized
baseline. The KFP component signatures (components/functions.py) must repeat these as
literals (KFP copies their source); tests/test_defaults.py checks that they agree.
"""

from __future__ import annotations

# What each client trains. TRAINER: keras, torch or MODULE:FACTORY (training.factory).
TRAINER = "keras"
DATASET = "digits"
PARTITION = "iid"
MODEL = "mlp"
LOCAL_EPOCHS = 2
BATCH_SIZE = 16
LEARNING_RATE = 0.05
OPTIMIZER = "sgd"
SEED = 0
# Client data tables (docs/data.md): the label column, the feature columns ("" means
# every other column), and the bound on each remote read of a client's data file.
LABEL_COLUMN = "label"
FEATURE_COLUMNS = ""
DATA_TIMEOUT = 60.0

# The run's shape (``fl-kubeflow local`` and the pipeline).
NUM_CLIENTS = 3
NUM_ROUNDS = 5
STRATEGY = "fedavg"
# The quorum: 0 (or None) means every client; see ``quorum``.
MIN_CLIENTS = 0

# Server timeouts and limits, in seconds and MiB.
JOIN_TIMEOUT = 300.0
# In a cluster the pods may wait for a node and pull the image before they join.
PIPELINE_JOIN_TIMEOUT = 900.0
ROUND_TIMEOUT = 600.0
GRACE_PERIOD = 30.0
POLL_TIMEOUT = 30.0
MAX_UPDATE_MB = 512.0
RECEIVE_SLOTS = 2
SLOT_PATIENCE = 2.0
# Seconds between checks of the credential registry file for changes (revocations).
CREDENTIALS_RELOAD = 2.0

# Client timeouts, in seconds. A pipeline's clients retry for PIPELINE_JOIN_TIMEOUT:
# they may start minutes before the server pod is scheduled.
RETRY_TIMEOUT = 300.0
ROUND_WAIT_TIMEOUT = 3600.0

# The longest a whole ``fl-kubeflow local`` run may take.
LOCAL_RUN_TIMEOUT = 7200.0


def quorum(num_clients: int, min_clients: int | None) -> int:
    """The fewest updates a round may close with: ``min_clients``, where None or 0 means all.

    The one place that rule lives: the CLI (None when ``--min-clients`` is not given), the
    pipeline and the server task (0) and ``ServerConfig`` all ask here.
    """
    return min_clients or num_clients
