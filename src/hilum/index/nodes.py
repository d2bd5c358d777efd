"""Known remote AEs, kept in the index (added by CLI, API or config)."""

from __future__ import annotations

from sqlalchemy import Engine, delete, select

from hilum.config import ALL_PERMISSIONS, Permission, RemoteAE
from hilum.domain.errors import HilumError, NotFound
from hilum.index.models import remote_aes_t


class RemoteNodes:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def all(self) -> list[RemoteAE]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(remote_aes_t).order_by(remote_aes_t.c.name)).all()
        return [
            RemoteAE(
                name=r.name, ae_title=r.ae_title, host=r.host, port=r.port,
                description=r.description,
                permissions=_permissions(r.permissions),
                tls=bool(r.tls),
            )
            for r in rows
        ]

    def get(self, name: str) -> RemoteAE:
        for node in self.all():
            if node.name == name:
                return node
        raise NotFound(f"no remote AE named {name!r}")

    def by_ae_title(self, ae_title: str) -> RemoteAE | None:
        """The remote AE with this AE title (C-MOVE destinations are named by AE title)."""
        matches = [n for n in self.all() if n.ae_title == ae_title.strip()]
        return matches[0] if matches else None

    def resolve(self, name_or_aet: str) -> RemoteAE:
        for node in self.all():
            if node.name == name_or_aet:
                return node
        found = self.by_ae_title(name_or_aet)
        if found is None:
            raise NotFound(f"no remote AE named {name_or_aet!r} (see 'hilum ae list')")
        return found

    def add(self, node: RemoteAE) -> None:
        if any(n.name == node.name for n in self.all()):
            raise HilumError(f"a remote AE named {node.name!r} exists already")
        self.upsert(node)

    def upsert(self, node: RemoteAE, *, from_config: bool = False) -> None:
        table = remote_aes_t
        with self.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.name == node.name))
            conn.execute(
                table.insert().values(
                    name=node.name, ae_title=node.ae_title, host=node.host, port=node.port,
                    description=node.description or ("from config" if from_config else ""),
                    permissions=",".join(node.permissions),
                    tls=node.tls,
                )
            )

    def remove(self, name: str) -> None:
        table = remote_aes_t
        with self.engine.begin() as conn:
            if conn.execute(delete(table).where(table.c.name == name)).rowcount == 0:
                raise NotFound(f"no remote AE named {name!r}")


def _permissions(stored: str) -> list[Permission]:
    """The comma-separated column as a list (a word that is not a permission is dropped)."""
    words = {word.strip() for word in stored.split(",")}
    return [p for p in ALL_PERMISSIONS if p in words]
