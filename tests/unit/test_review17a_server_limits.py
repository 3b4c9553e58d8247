"""Hostile review of the control API's server (issue 17): what an unauthenticated client can
make the server remember is bounded."""

from __future__ import annotations

from poller.control.server import AUTH_LOG_MEMORY, AUTH_LOG_WINDOW_SECONDS, OncePerWindow


def test_review17a_the_auth_log_memory_is_bounded_by_its_capacity() -> None:
    """The once-a-minute memory of refused access keys was a dict that only grew: a client
    sending a new invented access key id per request grew the server's memory without end."""
    seen = OncePerWindow(window=60.0, capacity=100)
    for i in range(10_000):
        assert seen.first(("InvalidSignatureException", f"AKID{i}"), now=1.0)
    assert len(seen) == 100
    assert 0 < AUTH_LOG_MEMORY <= 100_000


def test_review17a_a_key_is_first_once_per_window_and_again_after_it() -> None:
    seen = OncePerWindow(window=AUTH_LOG_WINDOW_SECONDS, capacity=10)
    key = ("UnrecognizedClientException", "AKIDREPEATED")
    assert seen.first(key, now=100.0)
    assert not seen.first(key, now=100.0 + AUTH_LOG_WINDOW_SECONDS / 2)
    assert seen.first(key, now=100.0 + AUTH_LOG_WINDOW_SECONDS)
    for i in range(9):  # a recently repeated key outlives older ones
        seen.first(("c", f"other{i}"), now=200.0)
    assert not seen.first(key, now=100.0 + AUTH_LOG_WINDOW_SECONDS + 1)
