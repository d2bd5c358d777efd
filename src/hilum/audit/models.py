"""The ``audit_records`` table: one row per audit message, chained by SHA-256.

``seq`` is assigned by the writer (last seq + 1, under a lock), never by the
database, so the chain has no gaps: a missing number is a removed record.
The search columns (event, user, patients, studies ...) are copies of what the
XML says; they are part of the hashed bytes, so editing them breaks the chain
too. Patient IDs and study UIDs are kept as ``|a|b|`` so one LIKE finds a value.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from hilum.index.models import Base


class AuditRecord(Base):
    __tablename__ = "audit_records"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # EventDateTime (UTC)
    event_code: Mapped[str] = mapped_column(String(16))  # EventID csd-code, e.g. 110112
    event: Mapped[str] = mapped_column(String(64))  # its meaning, e.g. "Query"
    event_type: Mapped[str] = mapped_column(String(64), default="")  # EventTypeCode meaning(s)
    action: Mapped[str] = mapped_column(String(1))  # EventActionCode
    outcome: Mapped[int] = mapped_column(Integer)  # EventOutcomeIndicator
    user_id: Mapped[str] = mapped_column(Text, default="")  # the requestor's UserID
    source_ip: Mapped[str] = mapped_column(Text, default="")  # the requestor's access point
    patient_ids: Mapped[str] = mapped_column(Text, default="")  # |id|id|
    study_uids: Mapped[str] = mapped_column(Text, default="")  # |uid|uid|
    xml: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


Index("ix_audit_records_at", AuditRecord.at)
Index("ix_audit_records_user_id", AuditRecord.user_id)
Index("ix_audit_records_event_code", AuditRecord.event_code)

audit_records_t = cast(Table, AuditRecord.__table__)
