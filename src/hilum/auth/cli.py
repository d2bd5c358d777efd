"""`hilum user add|passwd|disable|enable|list|api-key`: accounts from the command line."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from hilum.auth.policy import Role


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    user = sub.add_parser("user", help="manage user accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create a user (prints a generated password unless given one)")
    common(add)
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--display-name", default="")
    add.add_argument("--person-name", default="", help="DICOM name, e.g. HOUSE^GREGORY")
    add.add_argument("--groups", default="", help="comma-separated groups (open studies labelled so)")
    keep_help = "keep the user's API keys (revoked by default with the sessions and tokens)"
    passwd = user_sub.add_parser(
        "passwd", help="set a user's password (revokes their sessions, tokens and API keys)"
    )
    common(passwd)
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true")
    passwd.add_argument("--keep-api-keys", action="store_true", help=keep_help)
    for name in ("disable", "enable"):
        p = user_sub.add_parser(name, help=f"{name} a user account" + (
            " (revokes their sessions, tokens and API keys)" if name == "disable" else ""))
        common(p)
        p.add_argument("username")
        if name == "disable":
            p.add_argument("--keep-api-keys", action="store_true", help=keep_help)
    listing = user_sub.add_parser("list", help="list users")
    common(listing)
    key = user_sub.add_parser("api-key", help="create an API key for a user (printed once)")
    common(key)
    key.add_argument("username")
    key.add_argument("--name", default="cli", help="what the key is for")


def _password(from_stdin: bool, generate: bool) -> tuple[str, bool]:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n"), False
    if generate:
        from hilum.auth.service import generate_password

        return generate_password(), True
    first = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("error: the passwords differ")
    return first, False


def run(args: argparse.Namespace, settings: Any, out: Any) -> int:
    from hilum.app import prepare
    from hilum.audit.service import AuditService, os_user
    from hilum.auth.service import AuthService
    from hilum.index.database import make_engine

    prepare(settings)
    engine = make_engine(settings.index_url, pool_size=1)
    service = AuthService(engine, settings.auth)
    audit = AuditService(settings, engine)
    by, host = f"cli:{os_user()}", audit.hostname

    def changed(detail: str, *, roles: bool = False) -> None:
        audit.user_changed(by=by, ip=host, user=args.username, detail=detail, roles=roles)

    try:
        command = args.user_command
        if command == "add":
            password, generated = _password(args.password_stdin, generate=True)
            groups = [g for g in args.groups.split(",") if g.strip()]
            service.add_user(args.username, args.role, password, display_name=args.display_name,
                             person_name=args.person_name, groups=groups)
            changed(f"user created with role {args.role} (hilum user add)", roles=True)
            out.print(f"user {args.username} ({args.role}) created")
            if generated:
                out.print(f"password: {password}  (shown once)")
        elif command == "passwd":
            password, _ = _password(args.password_stdin, generate=False)
            keep = args.keep_api_keys
            revoked = service.set_password(args.username, password, keep_api_keys=keep)
            what = "sessions and tokens" if keep else "sessions, tokens and API keys"
            changed(f"password changed; {revoked} of its {what} revoked (hilum user passwd)")
            out.print(f"password of {args.username} changed; {revoked} of their {what} revoked")
        elif command in ("disable", "enable"):
            keep = command == "disable" and args.keep_api_keys
            revoked = service.set_disabled(args.username, command == "disable", keep_api_keys=keep)
            changed(f"user {command}d; {revoked} credential(s) revoked (hilum user {command})")
            out.print(f"user {args.username} {command}d"
                      + (f"; {revoked} of their credentials revoked" if command == "disable" else ""))
        elif command == "list":
            for user in service.list_users():
                state = "disabled" if user["disabled"] else "active"
                out.print(f"{user['username']:<24} {user['role']:<14} {state:<9} {user['person_name']}")
        elif command == "api-key":
            from hilum.auth.service import _principal_for_user

            principal = _principal_for_user(engine, args.username)
            key, _, key_id = service.issue(principal, "apikey", name=args.name)
            changed(f"API key {key_id} issued (hilum user api-key)")
            out.print(f"API key {key_id} for {args.username}: {key}  (shown once)")
    finally:
        audit.close()
        engine.dispose()
    return 0
