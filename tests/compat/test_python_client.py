"""The original relay's Python client, `pulsar-relay-client` 0.2.2 from PyPI, against this
relay: the calls a Pulsar job runner makes (RelayTransport: password login, refresh-token
rotation, publish with Idempotency-Key and retries, bulk publish, long-poll with cursors kept
on disk) and the ones Galaxy makes next to it (HttpRelayClient: token exchange, topic
create-or-verify, history paging).

Only the package's public API talks to the relay. Two test aids stand beside it: the fault
proxy (faultproxy.py), which loses a reply after the relay acted on the request, and an
expired token signed with the relay's secret, which a cached-too-long token is on the wire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from faultproxy import Fault, FaultProxy
from pulsar_relay_client import (
    HttpRelayClient,
    InMemoryCredentialsStore,
    PasswordAuthenticator,
    RefreshTokenAuthenticator,
    RefreshTokenRejectedError,
    RelayAuthError,
    RelayAuthManager,
    RelayTransport,
)
from relay_settings import ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_USERNAME, JWT_SECRET

# The client renews a cached access token once fewer than this many seconds are left, so a
# relay issuing shorter-lived tokens makes it log in before every request.
CLIENT_REFRESH_BUFFER_S = 300


class RetryBudgetExceeded(Exception):
    """The client kept retrying; it would do so forever."""


class RetryClock:
    """RelayTransport's injectable `sleep`: records each backoff delay the client asks for,
    naps briefly instead, and stops the test once the client has retried too often (its
    retry loop is unbounded)."""

    def __init__(self, max_retries: int = 10) -> None:
        self.max_retries = max_retries
        self.delays: list[float] = []

    def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) > self.max_retries:
            raise RetryBudgetExceeded(f"the client retried {len(self.delays)} times: {self.delays}")
        time.sleep(0.05)


def login(url: str) -> str:
    """An access token for the bootstrap admin, by password."""
    return RelayAuthManager(url, ADMIN_USERNAME, ADMIN_PASSWORD).get_token()


def runner_transport(url: str, state_dir: Path, clock: RetryClock | None = None) -> RelayTransport:
    """A transport set up as a Pulsar job runner sets it up: password login, per-topic
    cursors persisted in `state_dir`."""
    return RelayTransport(
        url,
        ADMIN_USERNAME,
        ADMIN_PASSWORD,
        timeout=10,
        cursor_path=str(state_dir / "relay_cursor.json"),
        sleep=clock or RetryClock(),
    )


def publisher_transport(url: str) -> RelayTransport:
    """The other side of the job (Galaxy): publishes, never polls."""
    return RelayTransport(url, ADMIN_USERNAME, ADMIN_PASSWORD, timeout=10, sleep=RetryClock())


def history(client: HttpRelayClient, token: str, topic: str) -> list[dict[str, Any]]:
    """Every stored message of `topic`, oldest first, paging with fetch_messages."""
    messages: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        page = client.fetch_messages(token, topic, limit=100, order="asc", cursor=cursor)
        messages.extend(page["messages"])
        cursor = page["next_cursor"]
        if not page["messages"] or cursor is None:
            return messages
    raise AssertionError(f"history of {topic} did not end after 1000 pages")


def expired_token() -> str:
    """An HS256 access token for the admin, signed with the relay's secret, expired an hour
    ago: what a client that cached its token too long sends."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {
        "sub": ADMIN_USERNAME,
        "username": ADMIN_USERNAME,
        "permissions": ["admin", "read", "write"],
        "iat": now - 7200,
        "exp": now - 3600,
        "jti": uuid.uuid4().hex,
    }
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(JWT_SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


class StaleTokenAuthManager(RelayAuthManager):
    """A RelayAuthManager whose cached access token has expired: it hands that token out until
    the client invalidates it, which the client does on a 401."""

    def __init__(self, url: str) -> None:
        super().__init__(url, ADMIN_USERNAME, ADMIN_PASSWORD)
        self.stale = True
        self.invalidations = 0

    def get_token(self) -> str:
        return expired_token() if self.stale else super().get_token()

    def invalidate(self) -> None:
        self.invalidations += 1
        self.stale = False
        super().invalidate()


def poll_while_publishing(
    consumer: RelayTransport, publisher: RelayTransport, topic: str, timeout: int = 10
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Runs `consumer.long_poll([topic])` while publishing `{"seq": i}` every 0.2 s until the
    poll returns. A consumer without a cursor only gets messages published after the relay
    registered its poll (the original relay's semantics), and nothing tells the test when that
    happened, so it keeps publishing. Returns (what the poll returned, every publish receipt)."""
    outcome: dict[str, Any] = {}

    def poll() -> None:
        try:
            outcome["messages"] = consumer.long_poll([topic], timeout=timeout)
        except BaseException as exc:  # handed to the test thread below
            outcome["error"] = exc

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    published: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while poller.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
        if poller.is_alive():
            published.append(publisher.post_message(topic, {"seq": len(published)}))
    poller.join(timeout + 10)
    assert not poller.is_alive(), "long_poll did not return"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["messages"], published


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["message_id"] for item in items]


# ---------------------------------------------------------------------------------------
# Accounts: password login, refresh-token rotation
# ---------------------------------------------------------------------------------------


def test_password_login_with_the_bootstrap_admin(relay, tmp_path):
    credentials = tmp_path / "relay_credentials.json"
    manager = RelayAuthManager(relay.url, ADMIN_USERNAME, ADMIN_PASSWORD, credentials_file=str(credentials))
    assert manager.strategy_name == "password"

    token = manager.get_token()

    assert token.count(".") == 2, f"not a JWT: {token!r}"
    # Cached: the relay's expires_in leaves more than the client's renewal margin.
    assert manager.get_token() == token, f"tokens must outlive {CLIENT_REFRESH_BUFFER_S} s"
    saved = json.loads(credentials.read_text())
    assert saved["relay_url"] == relay.url
    assert saved["refresh_token"], "login must return a refresh token for the client to keep"
    me = HttpRelayClient(relay.url).whoami(token)
    assert me["username"] == ADMIN_USERNAME
    assert me["email"] == ADMIN_EMAIL
    assert me["user_id"]
    assert {"admin", "read", "write"} <= set(me["permissions"])


def test_password_login_refused(relay):
    with pytest.raises(RelayAuthError, match="401"):
        PasswordAuthenticator(relay.url, ADMIN_USERNAME, "not-the-password").authenticate()
    with pytest.raises(RelayAuthError, match="401"):
        PasswordAuthenticator(relay.url, "nobody-" + uuid.uuid4().hex[:8], ADMIN_PASSWORD).authenticate()


def test_refresh_token_rotation(relay, tmp_path):
    credentials = tmp_path / "relay_credentials.json"
    RelayAuthManager(relay.url, ADMIN_USERNAME, ADMIN_PASSWORD, credentials_file=str(credentials)).get_token()
    from_login = json.loads(credentials.read_text())["refresh_token"]

    # A daemon started with a credentials file refreshes, and keeps the rotated token.
    daemon = RelayAuthManager(relay.url, credentials_file=str(credentials))
    assert daemon.strategy_name == "refresh_token"
    token = daemon.get_token()
    rotated = json.loads(credentials.read_text())["refresh_token"]
    assert rotated and rotated != from_login
    client = HttpRelayClient(relay.url)
    assert client.whoami(token)["username"] == ADMIN_USERNAME

    # Galaxy exchanges the token directly and gets the whole token response.
    exchanged = client.exchange_refresh_token(rotated)
    assert exchanged["token_type"] == "bearer"
    assert int(exchanged["expires_in"]) > CLIENT_REFRESH_BUFFER_S
    assert exchanged["refresh_token"] not in (from_login, rotated)
    assert client.whoami(exchanged["access_token"])["username"] == ADMIN_USERNAME

    # A rotated token presented again is a replay: 401, whichever client presents it.
    with pytest.raises(RefreshTokenRejectedError):
        client.exchange_refresh_token(from_login)
    with pytest.raises(RelayAuthError, match="rejected"):
        RefreshTokenAuthenticator(relay.url, InMemoryCredentialsStore(relay.url, rotated)).authenticate()


# ---------------------------------------------------------------------------------------
# Topics: create-or-verify
# ---------------------------------------------------------------------------------------


def test_topic_create_then_verify(relay, new_topic):
    name = new_topic()
    token = login(relay.url)
    proxy = FaultProxy(relay.port)  # no faults: it records the exchanges
    try:
        client = HttpRelayClient(proxy.url)
        client.create_or_verify_topic(token, name)
        client.create_or_verify_topic(token, name)
        exchanges = [(e.method, e.path.split("?")[0], e.relay_status, e) for e in proxy.exchanges()]
    finally:
        proxy.close()

    steps = [(method, path, status) for method, path, status, _ in exchanges]
    # Created, then "already exists" (400 TOPIC_EXISTS: the caller owns it) and the client
    # checks that the caller owns it.
    assert steps[0] == ("POST", "/api/v1/topics", 201), steps
    assert steps[1] == ("POST", "/api/v1/topics", 400), steps
    assert exchanges[1][3].relay_json()["code"] == "TOPIC_EXISTS", exchanges[1][3].relay_json()
    assert steps[2:] == [("GET", "/auth/me", 200), ("GET", f"/api/v1/topics/{name}", 200)], steps
    user_id = exchanges[2][3].relay_json()["user_id"]
    topic = exchanges[3][3].relay_json()
    assert topic["owner_id"] == user_id
    assert topic["topic_name"] == name

    page = HttpRelayClient(relay.url).fetch_messages(token, name)
    assert page["messages"] == [] and page["total"] == 0
    assert page["cursor"] is None and page["next_cursor"] is None


# ---------------------------------------------------------------------------------------
# Publishing: Idempotency-Key across retries, re-login after 401, bulk
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", list(Fault), ids=lambda fault: fault.value)
def test_publish_retried_after_a_lost_reply_is_stored_once(relay, new_topic, tmp_path, fault):
    name = new_topic()
    token = login(relay.url)
    client = HttpRelayClient(relay.url)
    client.create_or_verify_topic(token, name)
    proxy = FaultProxy(relay.port)
    try:
        proxy.fail_next("/api/v1/messages", fault)
        clock = RetryClock()
        receipt = runner_transport(proxy.url, tmp_path, clock).post_message(
            name, {"job_id": "j1", "state": "ok"}, metadata={"source": "compat"}
        )
        attempts = proxy.exchanges("/api/v1/messages")
    finally:
        proxy.close()

    assert len(attempts) == 2 and clock.delays == [1.0], (attempts, clock.delays)
    first, retry = attempts
    assert first.idempotency_key and retry.idempotency_key == first.idempotency_key
    assert first.relay_status == 201, first
    lost_id = first.relay_json()["message_id"]
    assert 200 <= retry.relay_status < 300, retry
    assert retry.relay_json()["message_id"] == lost_id
    assert receipt["message_id"] == lost_id and receipt["topic"] == name
    stored = history(client, token, name)
    assert ids(stored) == [lost_id], "the retried publish must be stored exactly once"
    assert stored[0]["payload"] == {"job_id": "j1", "state": "ok"}
    assert stored[0]["metadata"] == {"source": "compat"}


@pytest.mark.parametrize("fault", list(Fault), ids=lambda fault: fault.value)
def test_bulk_publish_retried_after_a_lost_reply_is_stored_once(relay, new_topic, tmp_path, fault):
    name = new_topic()
    token = login(relay.url)
    client = HttpRelayClient(relay.url)
    client.create_or_verify_topic(token, name)
    proxy = FaultProxy(relay.port)
    try:
        proxy.fail_next("/api/v1/messages/bulk", fault)
        result = runner_transport(proxy.url, tmp_path).post_bulk_messages(
            [{"topic": name, "payload": {"n": 0}}, {"topic": name, "payload": {"n": 1}}]
        )
        attempts = proxy.exchanges("/api/v1/messages/bulk")
    finally:
        proxy.close()

    assert len(attempts) == 2, attempts
    first, retry = attempts
    assert first.idempotency_key and retry.idempotency_key == first.idempotency_key
    assert first.relay_status == 207, first
    lost_ids = ids(first.relay_json()["results"])
    assert ids(result["results"]) == lost_ids
    stored = history(client, token, name)
    assert ids(stored) == lost_ids, "the retried bulk publish must be stored exactly once"
    assert [m["payload"] for m in stored] == [{"n": 0}, {"n": 1}]


def test_publish_and_poll_log_in_again_after_a_401(relay, new_topic, tmp_path):
    name = new_topic()
    client = HttpRelayClient(relay.url)
    token = login(relay.url)
    client.create_or_verify_topic(token, name)
    auth = StaleTokenAuthManager(relay.url)
    transport = RelayTransport(
        relay.url, auth_manager=auth, cursor_path=str(tmp_path / "relay_cursor.json"), sleep=RetryClock()
    )

    receipt = transport.post_message(name, {"after": "401"})

    assert auth.invalidations == 1, "the expired token must get a 401"
    assert ids(history(client, token, name)) == [receipt["message_id"]]

    auth.stale = True
    transport.set_last_message_id(name, receipt["message_id"])
    later = publisher_transport(relay.url).post_message(name, {"after": "poll"})
    assert ids(transport.long_poll([name], timeout=5)) == [later["message_id"]]
    assert auth.invalidations == 2

    with pytest.raises(RefreshTokenRejectedError):
        client.fetch_messages(expired_token(), name)


def test_bulk_publish(relay, new_topic, tmp_path):
    jobs, status = new_topic("jobs"), new_topic("status")
    token = login(relay.url)
    client = HttpRelayClient(relay.url)
    client.create_or_verify_topic(token, jobs)
    client.create_or_verify_topic(token, status)

    result = runner_transport(relay.url, tmp_path).post_bulk_messages(
        [
            {"topic": jobs, "payload": {"n": 0}},
            {"topic": status, "payload": {"n": 1}, "metadata": {"kind": "status"}},
            {"topic": jobs, "payload": {"n": 2}},
        ]
    )

    assert result["summary"] == {"total": 3, "accepted": 3, "rejected": 0}
    results = result["results"]
    assert [r["topic"] for r in results] == [jobs, status, jobs]
    assert all(r["status"] == "accepted" and r["error"] is None for r in results), results
    assert len(set(ids(results))) == 3
    stored_jobs = history(client, token, jobs)
    assert [(m["message_id"], m["payload"]) for m in stored_jobs] == [
        (results[0]["message_id"], {"n": 0}),
        (results[2]["message_id"], {"n": 2}),
    ]
    [stored_status] = history(client, token, status)
    assert stored_status["message_id"] == results[1]["message_id"]
    assert stored_status["metadata"] == {"kind": "status"}


# ---------------------------------------------------------------------------------------
# Long-poll with cursors
# ---------------------------------------------------------------------------------------


def test_long_poll_cursor_survives_a_relay_restart(relay, new_topic, tmp_path):
    name = new_topic()
    HttpRelayClient(relay.url).create_or_verify_topic(login(relay.url), name)
    cursor_file = tmp_path / "relay_cursor.json"
    publisher = publisher_transport(relay.url)
    runner = runner_transport(relay.url, tmp_path)

    delivered, published = poll_while_publishing(runner, publisher, name)

    assert delivered, "a live long-poll returned nothing while messages kept arriving"
    start = ids(published).index(delivered[0]["message_id"])
    assert ids(delivered) == ids(published)[start : start + len(delivered)]
    for message in delivered:
        assert message["topic"] == name
        assert message["payload"] == {"seq": ids(published).index(message["message_id"])}
    cursor = delivered[-1]["message_id"]
    assert runner.get_last_message_id(name) == cursor
    assert json.loads(cursor_file.read_text()) == {name: cursor}
    # Published after the poll returned (the publisher runs until it sees the poll end).
    backlog = published[start + len(delivered) :]

    relay.restart()
    later = [publisher.post_message(name, {"seq": len(published) + i}) for i in range(2)]
    # The runner restarts too: a new process that finds its cursor on disk.
    restarted = runner_transport(relay.url, tmp_path)
    assert restarted.get_last_message_id(name) == cursor

    caught_up = restarted.long_poll([name], timeout=5)

    assert ids(caught_up) == ids(backlog + later), "exactly the messages after the cursor, once each"
    assert [m["payload"]["seq"] for m in caught_up] == list(range(start + len(delivered), len(published) + 2))
    assert restarted.get_last_message_id(name) == later[-1]["message_id"]
    assert json.loads(cursor_file.read_text()) == {name: later[-1]["message_id"]}
    assert restarted.long_poll([name], timeout=1) == []


def test_long_poll_tracks_a_cursor_per_topic(relay, new_topic, tmp_path):
    setup, kill = new_topic("setup"), new_topic("kill")
    token = login(relay.url)
    client = HttpRelayClient(relay.url)
    client.create_or_verify_topic(token, setup)
    client.create_or_verify_topic(token, kill)
    publisher = publisher_transport(relay.url)
    runner = runner_transport(relay.url, tmp_path)
    runner.set_last_message_id(setup, publisher.post_message(setup, {"n": 0})["message_id"])
    runner.set_last_message_id(kill, publisher.post_message(kill, {"n": 0})["message_id"])
    new_setup = [publisher.post_message(setup, {"n": n}) for n in (1, 2)]
    new_kill = [publisher.post_message(kill, {"n": 1})]

    messages = runner.long_poll([setup, kill], timeout=5)

    assert ids([m for m in messages if m["topic"] == setup]) == ids(new_setup)
    assert ids([m for m in messages if m["topic"] == kill]) == ids(new_kill)
    assert len(messages) == 3, messages
    assert runner.get_all_tracked_message_ids() == {
        setup: new_setup[-1]["message_id"],
        kill: new_kill[-1]["message_id"],
    }
    assert json.loads((tmp_path / "relay_cursor.json").read_text()) == runner.get_all_tracked_message_ids()


# ---------------------------------------------------------------------------------------
# History paging
# ---------------------------------------------------------------------------------------


def test_history_paging(relay, new_topic):
    name = new_topic()
    token = login(relay.url)
    client = HttpRelayClient(relay.url)
    client.create_or_verify_topic(token, name)
    publisher = publisher_transport(relay.url)
    sent = [
        publisher.post_message(name, {"n": n}, metadata={"n": str(n)} if n % 2 else None)["message_id"]
        for n in range(7)
    ]

    latest = client.fetch_messages(token, name)
    assert (latest["limit"], latest["order"], latest["cursor"], latest["total"]) == (10, "desc", None, 7)
    assert ids(latest["messages"]) == sent[::-1]
    for message in latest["messages"]:
        n = sent.index(message["message_id"])
        assert message["topic"] == name
        assert message["payload"] == {"n": n}
        assert message["metadata"] == ({"n": str(n)} if n % 2 else {})
        assert isinstance(message["timestamp"], str) and message["timestamp"]

    def pages(order: str) -> list[list[str]]:
        """Pages of 3 until the relay says there is no next page or returns an empty one."""
        out: list[list[str]] = []
        cursor = None
        while len(out) < 10:
            page = client.fetch_messages(token, name, limit=3, order=order, cursor=cursor)
            assert (page["limit"], page["order"], page["cursor"]) == (3, order, cursor), page
            assert page["total"] == len(page["messages"])
            if not page["messages"]:
                assert page["next_cursor"] is None, page
                break
            out.append(ids(page["messages"]))
            if len(page["messages"]) == 3:
                assert page["next_cursor"] == page["messages"][-1]["message_id"], page
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return out

    newest_first = sent[::-1]
    assert pages("desc") == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
    assert pages("asc") == [sent[0:3], sent[3:6], sent[6:7]]
    past_the_end = client.fetch_messages(token, name, limit=3, order="asc", cursor=sent[-1])
    assert past_the_end["messages"] == [] and past_the_end["next_cursor"] is None
    past_the_start = client.fetch_messages(token, name, limit=3, order="desc", cursor=sent[0])
    assert past_the_start["messages"] == [] and past_the_start["next_cursor"] is None
