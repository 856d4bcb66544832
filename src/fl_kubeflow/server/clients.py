"""The clients of a run, by id: who may join, who takes part, who is still to hear the end.

Flower's client manager, without its waiting: the Federation's one condition
variable does that. No lock here either: the Federation calls it under its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from fl_kubeflow.server.config import ServerConfig
from fl_kubeflow.server.errors import Conflict, UnknownClient
from fl_kubeflow.server.records import ClientRecord

log = logging.getLogger("fl_kubeflow.server")


class Clients:
    """Every client that joined this run, with its record.

    Args:
        config: The run's configuration: how many clients, and which ids, if fixed.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.records: dict[str, ClientRecord] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __getitem__(self, client_id: str) -> ClientRecord:
        return self.records[client_id]

    def get(self, client_id: str) -> ClientRecord | None:
        return self.records.get(client_id)

    def admit(self, client_id: str) -> bool:
        """Admit a client, or take back one that restarted; True if it is new.

        Raises:
            UnknownClient: The run has fixed ids and this is not one of them.
            Conflict: Every place in the run is taken.
        """
        client = self.records.get(client_id)
        if client is not None:
            if not client.active or client.left:
                log.info("client %s rejoined", client_id)
            client.active, client.left = True, False
            return False
        allowed = self.config.client_ids
        if allowed is not None and client_id not in allowed:
            raise UnknownClient(
                f"client {client_id!r} is not one of this run's clients {list(allowed)}"
            )
        if len(self.records) >= self.config.num_clients:
            raise Conflict(
                f"the federation is full: {self.config.num_clients} clients joined "
                f"already ({sorted(self.records)})"
            )
        self.records[client_id] = ClientRecord(joined_at=time.monotonic())
        log.info("client %s joined (%d/%d)", client_id, len(self.records), self.config.num_clients)
        return True

    def eligible(self) -> list[str]:
        """Every client that joined and was not revoked, sorted."""
        return sorted(c for c, s in self.records.items() if not s.revoked)

    def active(self) -> list[str]:
        """The clients taking part now, sorted."""
        return sorted(c for c, s in self.records.items() if s.active)

    def missing(self) -> list[str]:
        """Who has not joined: their ids, or how many when ids are not fixed."""
        if self.config.client_ids is None:
            absent = self.config.num_clients - len(self.records)
            return [f"<{absent} not yet joined>"] if absent > 0 else []
        return sorted(set(self.config.client_ids) - set(self.records))

    def not_told_end(self, failed: bool) -> list[str]:
        """Clients still to hear how the run ended (or, if it finished, still working)."""
        return [
            c
            for c, s in self.records.items()
            if not s.left and not (s.told_end and (failed or not s.active))
        ]
