"""Identities and permissions: users, roles, sessions, API keys, per-study access."""
