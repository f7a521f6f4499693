"""The caller cache: a checked token is trusted for ``auth_cache_s``; an admin change in
this process takes effect at once; one made elsewhere (another ``--workers`` process, a
direct database change) within ``auth_cache_s``."""

from __future__ import annotations

import time

from sqlalchemy import select, text, update

from gpuq.scheduler.api.callers import TRUSTED_S, CallerCache
from gpuq.scheduler.db.models import ApiToken, User
from gpuq.scheduler.services.auth import Principal
from tests.api.conftest import Api, bearer


def _token(api: Api, user: str, **extra: object) -> dict:
    return api.ok("POST", "/v1/admin/tokens", api.admin, 201,
                  json={"role": "user", "user": user, **extra})


def test_a_cached_token_revoked_by_an_admin_stops_at_once(api: Api) -> None:
    api.user("alice", "lab1")
    tok = _token(api, "alice")
    h = bearer(tok["token"])
    for _ in range(3):  # cached after the first
        assert api.client.get("/v1/jobs", headers=h).status_code == 200
    api.ok("DELETE", f"/v1/admin/tokens/{tok['id']}", api.admin)
    r = api.client.get("/v1/jobs", headers=h)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_a_disabled_user_and_a_new_membership_take_effect_at_once(api: Api) -> None:
    api.node("gpu01", gpus=2)
    alice = api.user("alice", "lab1")
    api.account("lab2")
    api.submit(alice)  # alice's caller is cached, member of lab1 only
    r = api.client.post("/v1/jobs", headers=alice,
                        json={"command": ["true"], "workdir": "/tmp", "account": "lab2"})
    assert r.status_code == 422 and "not a member" in r.text
    api.ok("POST", "/v1/admin/users/alice/accounts", api.admin, 201,
           json={"account": "lab2"})
    assert api.submit(alice, account="lab2")["account"] == "lab2"
    api.ok("PATCH", "/v1/admin/users/alice", api.admin, json={"disabled": True})
    r = api.client.get("/v1/jobs", headers=alice)
    assert r.status_code == 401 and "disabled" in r.json()["detail"]


def test_a_cached_token_still_expires_on_time(api: Api) -> None:
    api.user("alice", "lab1")
    tok = _token(api, "alice", expires_in_s=3600)
    h = bearer(tok["token"])
    assert api.client.get("/v1/jobs", headers=h).status_code == 200
    api.clock.advance(3601)
    r = api.client.get("/v1/jobs", headers=h)
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_a_change_made_elsewhere_is_seen_within_auth_cache_s(api: Api) -> None:
    """Without a gpuq_auth listener (SQLite; PostgreSQL with it stopped) another
    process's revocation (here: straight in the database) is not seen by this process
    until its cache entry is older than auth_cache_s."""
    api.user("alice", "lab1")
    callers: CallerCache = api.client.app.state.callers
    callers.stop()
    callers.listener = None
    callers.ttl_s = 0.5
    tok = _token(api, "alice")
    h = bearer(tok["token"])
    assert api.client.get("/v1/jobs", headers=h).status_code == 200
    with api.ctx.transaction() as s:
        s.execute(update(ApiToken).where(ApiToken.id == tok["id"])
                  .values(revoked_at=api.clock()))
    assert api.client.get("/v1/jobs", headers=h).status_code == 200  # trusted a while
    time.sleep(0.6)
    assert api.client.get("/v1/jobs", headers=h).status_code == 401


def test_no_caching_with_auth_cache_s_zero(api: Api) -> None:
    api.user("alice", "lab1")
    api.client.app.state.callers.ttl_s = 0
    tok = _token(api, "alice")
    h = bearer(tok["token"])
    assert api.client.get("/v1/jobs", headers=h).status_code == 200
    with api.ctx.transaction() as s:
        s.execute(update(ApiToken).where(ApiToken.id == tok["id"])
                  .values(revoked_at=api.clock()))
    assert api.client.get("/v1/jobs", headers=h).status_code == 401


def test_bad_tokens_are_never_cached(api: Api) -> None:
    assert not api.client.app.state.callers._entries
    for _ in range(2):
        assert api.client.get("/v1/jobs", headers=bearer("gpuq_nope")).status_code == 401
    assert not api.client.app.state.callers._entries


def test_a_lookup_that_raced_a_clear_is_not_stored(api: Api) -> None:
    """A lookup that began before an admin change must not store what it read."""
    with api.ctx.transaction() as s:
        user = s.scalar(select(User).where(User.name == "admin"))
    cache = CallerCache(60)
    principal = Principal(role="user", token_id=1, user=user)
    generation = cache.generation
    cache.clear()  # an admin change committed meanwhile
    cache.put("h", principal, generation)
    assert cache.get("h", api.clock()) is None
    cache.put("h", principal, cache.generation)
    assert cache.get("h", api.clock()) is principal


def _postgres(api: Api) -> bool:
    return api.ctx.settings.effective_database_url.startswith("postgresql")


def _listening(callers: CallerCache) -> None:
    assert callers.listener is not None, "no gpuq_auth listener on PostgreSQL"
    assert callers.listener.listening.wait(10), "the gpuq_auth listener did not start"


def test_on_postgresql_a_change_made_elsewhere_is_seen_at_once(api: Api) -> None:
    """With the gpuq_auth listener (PostgreSQL) an entry is trusted for TRUSTED_S, and a
    revocation made elsewhere (straight in the database: another process) empties the
    cache as soon as its notification arrives, long before that."""
    if not _postgres(api):
        assert api.client.app.state.callers.listener is None  # SQLite: none
        return
    callers: CallerCache = api.client.app.state.callers
    _listening(callers)
    assert callers.ttl_s == TRUSTED_S
    api.user("alice", "lab1")
    tok = _token(api, "alice")
    h = bearer(tok["token"])
    assert api.client.get("/v1/jobs", headers=h).status_code == 200  # cached
    with api.ctx.transaction() as s:
        s.execute(update(ApiToken).where(ApiToken.id == tok["id"])
                  .values(revoked_at=api.clock()))
    deadline = time.monotonic() + 5
    while api.client.get("/v1/jobs", headers=h).status_code == 200:
        assert time.monotonic() < deadline, "the revocation was not seen within 5 s"
        time.sleep(0.02)
    assert api.client.get("/v1/jobs", headers=h).status_code == 401


def test_on_postgresql_usage_and_last_used_writes_do_not_empty_the_cache(api: Api) -> None:
    """The loop charges memberships' usage every 30 s and a lookup touches its token's
    last_used_at: neither notifies gpuq_auth. A user's change does, once (notifications
    arrive in commit order, so by the time it is seen the others would have been)."""
    if not _postgres(api):
        return
    callers: CallerCache = api.client.app.state.callers
    _listening(callers)
    api.user("alice", "lab1")
    tok = _token(api, "alice")
    time.sleep(0.5)  # the notifications of the setup above arrive and are counted
    before = callers.generation
    with api.ctx.transaction() as s:
        s.execute(text("UPDATE memberships SET usage = usage + 1"))
    with api.ctx.transaction() as s:
        s.execute(update(ApiToken).where(ApiToken.id == tok["id"])
                  .values(last_used_at=api.clock()))
    with api.ctx.transaction() as s:
        s.execute(update(User).where(User.name == "alice").values(unix_user="alice"))
    deadline = time.monotonic() + 5
    while callers.generation == before:
        assert time.monotonic() < deadline, "no notification for the user's change"
        time.sleep(0.02)
    time.sleep(0.2)
    assert callers.generation == before + 1


def test_the_longer_trust_ends_with_the_listener(api: Api) -> None:
    """An entry trusted for TRUSTED_S on the listener's word is looked up again once the
    listener stops listening (its notifications could be missed)."""
    if not _postgres(api):
        return
    callers: CallerCache = api.client.app.state.callers
    _listening(callers)
    api.user("alice", "lab1")
    tok = _token(api, "alice")
    h = bearer(tok["token"])
    assert api.client.get("/v1/jobs", headers=h).status_code == 200  # trusted a minute
    callers.stop()  # the listener stops listening
    assert callers.ttl_s == api.ctx.settings.auth_cache_s
    with api.ctx.transaction() as s:  # revoked; no notification will come
        s.execute(update(ApiToken).where(ApiToken.id == tok["id"])
                  .values(revoked_at=api.clock()))
    assert api.client.get("/v1/jobs", headers=h).status_code == 401
