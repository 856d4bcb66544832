"""ConnectionGuard's rules, without sockets: who is shed, when deadlines run, what is counted."""

from __future__ import annotations

import time

from fl_kubeflow.server.connection_guard import HEAD_TIMEOUT, SHED, ConnectionGuard


class Recorder:
    def __init__(self) -> None:
        self.shed: list[str] = []
        self.counted: list[str] = []

    def closer(self, name: str):
        return lambda: self.shed.append(name)


def _guard(recorder: Recorder, head_timeout: float = 10.0, strangers: int = 2) -> ConnectionGuard:
    return ConnectionGuard(head_timeout, strangers, recorder.counted.append)


def test_the_oldest_idle_stranger_is_shed_never_a_client_or_one_being_served():
    seen = Recorder()
    guard = _guard(seen)
    for name in ("a", "b", "c"):
        guard.opened(name, seen.closer(name))
    assert seen.shed == ["a"]  # three strangers, cap two: the oldest goes
    guard.head_done("b", trusted=False)  # being answered: never shed
    guard.opened("d", seen.closer("d"))
    assert seen.shed == ["a", "c"]
    guard.opened("client", seen.closer("client"))  # a stranger until its head passes
    assert seen.shed == ["a", "c", "d"]
    guard.head_done("client", trusted=True)
    guard.opened("e", seen.closer("e"))  # b and e: within the cap, the client aside
    assert seen.shed == ["a", "c", "d"]
    assert seen.counted == [SHED] * 3


def test_deadlines_run_from_accept_for_strangers_and_from_the_first_byte_for_clients():
    seen = Recorder()
    guard = _guard(seen, head_timeout=5.0, strangers=10)
    now = time.monotonic()
    guard.opened("stranger", seen.closer("stranger"))
    guard.opened("client", seen.closer("client"))
    guard.head_done("client", trusted=True)
    guard.served("client")  # a client idles without a deadline (the server's idle timeout)
    guard.head_begun("stranger")  # bytes do not move a stranger's deadline
    assert guard.sweep(now + 4.0) == 0
    assert guard.sweep(now + 6.0) == 1
    assert seen.shed == ["stranger"] and seen.counted == [HEAD_TIMEOUT]
    guard.head_begun("client")  # a new request's first byte: its head has 5 s
    later = time.monotonic()
    assert guard.sweep(later + 4.0) == 0
    assert guard.sweep(later + 6.0) == 1
    assert seen.shed == ["stranger", "client"]
