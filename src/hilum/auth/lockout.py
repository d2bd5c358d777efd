"""Password guessing limits: per (account, client address), with an account-wide back-off.

Every password check is counted in the index, in single SQL statements (an
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` or ``UPDATE ... RETURNING``
on SQLite and PostgreSQL alike), so parallel guesses and several HTTP processes
all see every failure; the decision is taken *after* the slow argon2 check, in
the statement that counts it.

- ``auth.lockout_attempts`` wrong passwords in a row for one account name from one
  address lock that pair for ``auth.lockout_minutes``: that address is refused
  even the right password; other addresses are not (one address cannot lock a
  user out). Names that are no account are counted the same way, so the answers
  do not tell them apart.
- Wrong passwords for an account from addresses that are not locked are counted
  account-wide (``users.failed_logins``, until its next successful sign-in). From
  ``auth.account_backoff_failures`` on, addresses the account has never signed in
  from get one password check per ``auth.account_backoff_seconds`` for the
  account (``users.locked_until`` is the next free moment); the rest are refused
  unchecked. That slows a guesser spread over many addresses, while the user's
  own known addresses are not slowed.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, delete, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from hilum.auth.models import login_attempts_t, users_t
from hilum.domain.clock import aware

LOG = logging.getLogger(__name__)
A, U = login_attempts_t, users_t
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")

# Why a sign-in was refused: for the audit trail only; every refusal answers the same.
WRONG = "wrong user name or password"
ADDRESS_LOCKED = "too many failed logins for this user from this address: locked for a while"
ACCOUNT_BACKOFF = "too many failed logins for this user: one attempt per few seconds from new addresses"


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    attempts: int  # wrong passwords in a row per (account, address) before it locks
    minutes: float  # how long it stays locked; older failures are forgotten
    account_failures: int  # account-wide wrong passwords before the back-off
    backoff_seconds: float  # during the back-off: one check per this, from new addresses

    @classmethod
    def of(cls, config: Any) -> LockoutPolicy:
        return cls(
            attempts=config.lockout_attempts,
            minutes=config.lockout_minutes,
            account_failures=getattr(config, "account_backoff_failures", 20),
            backoff_seconds=getattr(config, "account_backoff_seconds", 5.0),
        )


def account_key(username: str) -> str:
    """The name the counters are kept under: the name typed, or a digest of one no account can have."""
    if 1 <= len(username) <= 64 and set(username) <= _NAME_CHARS:
        return username
    return "#" + hashlib.sha256(username.encode("utf-8", "replace")).hexdigest()


def _upsert(conn: Connection) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(A)


def wrong_password(
    conn: Connection, policy: LockoutPolicy, username: str, address: str, user_id: int | None, now: datetime
) -> tuple[str, bool]:
    """Count a wrong password (the account may not exist); the reason for the audit trail.

    A first failure (a new row, or one that started again) is the caller's cue to
    :func:`forget_stale` counters (after this transaction)."""
    lock = now + timedelta(minutes=policy.minutes)
    first_lock = lock if policy.attempts <= 1 else None
    restart = or_(
        A.c.last_failure_at.is_(None),
        A.c.last_failure_at <= now - timedelta(minutes=policy.minutes),
        and_(A.c.locked_until.is_not(None), A.c.locked_until <= now),
    )
    stmt = _upsert(conn).values(
        username=username, client_address=address, failures=1, locked_until=first_lock, last_failure_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[A.c.username, A.c.client_address],
        set_={
            "failures": case((restart, 1), else_=A.c.failures + 1),
            "locked_until": case(
                (restart, literal(first_lock, A.c.locked_until.type)),
                (A.c.locked_until.is_not(None), A.c.locked_until),
                (A.c.failures + 1 >= policy.attempts, literal(lock, A.c.locked_until.type)),
                else_=None,
            ),
            "last_failure_at": now,
        },
    ).returning(A.c.failures, A.c.last_success_at)
    failures, last_success = conn.execute(stmt).one()
    first = failures == 1
    if failures > policy.attempts:
        return ADDRESS_LOCKED, first  # locked before this guess: nothing else counts it
    if failures == policy.attempts:
        LOG.warning("user name %r locked for address %s after %d failed logins", username, address, failures)
    if user_id is None:
        return WRONG, first
    counted = conn.execute(
        update(U)
        .where(U.c.id == user_id, _may_check(policy, last_success is not None, now))
        .values(
            failed_logins=U.c.failed_logins + 1,
            locked_until=case(
                (U.c.failed_logins + 1 >= policy.account_failures,
                 literal(now + timedelta(seconds=policy.backoff_seconds), U.c.locked_until.type)),
                else_=U.c.locked_until,
            ),
        )
        .returning(U.c.failed_logins)
    ).first()
    if counted is None:
        return ACCOUNT_BACKOFF, first
    if counted[0] == policy.account_failures:
        LOG.warning("user %d: %d failed logins, back-off for new addresses", user_id, counted[0])
    return WRONG, first


def right_password(
    conn: Connection, policy: LockoutPolicy, username: str, address: str, user_id: int, now: datetime
) -> str | None:
    """None if a right password from ``address`` may sign in (the counters start again);
    otherwise why not."""
    row = conn.execute(
        select(A.c.locked_until, A.c.last_success_at)
        .where(A.c.username == username, A.c.client_address == address)
        .with_for_update()
    ).first()
    if row is not None and row.locked_until is not None and (aware(row.locked_until) or now) > now:
        return ADDRESS_LOCKED
    known = row is not None and row.last_success_at is not None
    admitted = conn.execute(
        update(U)
        .where(U.c.id == user_id, _may_check(policy, known, now))
        .values(failed_logins=0, locked_until=None, last_login_at=now)
        .returning(U.c.id)
    ).first()
    if admitted is None:
        return ACCOUNT_BACKOFF
    stmt = _upsert(conn).values(
        username=username, client_address=address, failures=0, last_success_at=now
    )
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[A.c.username, A.c.client_address],
        set_={"failures": 0, "locked_until": None, "last_success_at": now},
    ))
    return None


def _may_check(policy: LockoutPolicy, known_address: bool, now: datetime) -> Any:
    """SQL: the account's back-off lets this attempt be checked now."""
    if known_address:
        return literal(True)
    return or_(
        U.c.failed_logins < policy.account_failures, U.c.locked_until.is_(None), U.c.locked_until <= now
    )


def forget_stale(engine: Engine, policy: LockoutPolicy, now: datetime) -> None:
    """Delete the counters of addresses that only failed, long enough ago to be forgotten."""
    try:
        with engine.begin() as conn:
            conn.execute(delete(A).where(
                A.c.last_success_at.is_(None),
                A.c.last_failure_at < now - timedelta(minutes=policy.minutes),
            ))
    except SQLAlchemyError as exc:  # two prunes in parallel: the other one does it
        LOG.debug("login attempts not pruned: %s", exc)
