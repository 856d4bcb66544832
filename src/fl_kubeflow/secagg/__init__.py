"""Secure aggregation (SecAgg+): the cryptography and arithmetic both ends share.

docs/secure_aggregation.md is the protocol; this package is what the client
(``client/secure_aggregation.py``) and the server (``server/secure_round.py``) both
need, and neither's code: parameters and the graph (``params``, ``graph``), Shamir
sharing (``shamir``), key agreement and share encryption (``keys``), the masks'
stream (``masks``), the model as one vector (``vector``), fixed-point quantisation
(``quantise``) and the JSON encoding of binary values (``messages``).

The primitives are the ``cryptography`` package's (X25519, HKDF-SHA256,
AES-256-GCM, AES-128-CTR); secrets come from ``secrets``. Imports neither the
server nor the client, nor any ML framework.
"""
