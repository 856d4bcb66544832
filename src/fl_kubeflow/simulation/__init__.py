"""``fl-kubeflow simulate``: many virtual clients in a few worker processes, one real server.

The server is the ``fl-kubeflow server`` process on loopback, sampling ``fraction_fit``
of the clients each round. Each worker hosts many virtual clients on one framework
runtime and one model object (population.py), speaks protocol v1 for each of them
(calls.py), and learns which of its clients a round sampled from one long-poll of
``/v1/sampled`` (worker.py). runner.py starts everything, samples memory (memory.py)
and writes the outputs. docs/simulation.md has the design and its limits.
"""
