"""Audit messages as PS3.15 A.5.1 describes them, and their XML. Pure: no I/O.

An :class:`AuditMessage` holds what happened (event ID, type, action, outcome,
time), who took part (:class:`ActiveParticipant`: users, AEs, Hilum itself,
with network access points and roles), and what it concerned
(:class:`ParticipantObject`: patients, studies, queries, the audit log, ...).
:func:`to_xml` writes it in the element order of the A.5.1 schema.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hilum.audit import codes
from hilum.audit.codes import Code

# XML 1.0 forbids most control characters, even escaped; values from the
# network (AE titles, patient names, query strings) may hold them.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def utc_now() -> datetime:
    """Now, in UTC, to the millisecond (what EventDateTime and the ``at`` column keep)."""
    return truncate(datetime.now(UTC))


def truncate(at: datetime) -> datetime:
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def format_datetime(at: datetime) -> str:
    """xsd:dateTime in UTC (PS3.15 A.5.2.5: unambiguous as to time zone)."""
    at = truncate(at)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def access_point_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 5 for a URI, 1 for a host name."""
    try:
        ipaddress.ip_address(address.strip("[]"))
        return "2"
    except ValueError:
        return "5" if "://" in address else "1"


@dataclass(frozen=True, slots=True)
class ActiveParticipant:
    """A user, AE or process taking part (PS3.15 A.5.1 ActiveParticipant)."""

    user_id: str
    is_requestor: bool
    roles: tuple[Code, ...] = ()
    alternative_user_id: str = ""
    user_name: str = ""
    network_access_point: str = ""
    media_type: Code | None = None  # MediaIdentifier/MediaType of a media participant


@dataclass(frozen=True, slots=True)
class ParticipantObject:
    """A patient, study, query, audit log, user or node the event concerns."""

    object_id: str
    id_type: Code
    type_code: int | None = None
    role: int | None = None
    life_cycle: int | None = None
    name: str = ""  # ParticipantObjectName
    query: bytes | None = None  # ParticipantObjectQuery (written base64)
    details: tuple[tuple[str, bytes], ...] = ()  # ParticipantObjectDetail type/value
    sop_classes: tuple[tuple[str, int], ...] = ()  # DICOM object description: UID, count
    accession_numbers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditSource:
    source_id: str
    enterprise_site_id: str = ""
    type_code: str = codes.SOURCE_TYPE_APPLICATION_SERVER


@dataclass(slots=True)
class AuditMessage:
    """One audit record: the A.5 message plus the keys the index searches on."""

    event_id: Code
    action: str  # EventActionCode: C R U D E
    outcome: int  # EventOutcomeIndicator: 0 4 8 12
    participants: list[ActiveParticipant]
    objects: list[ParticipantObject] = field(default_factory=list)
    event_types: tuple[Code, ...] = ()
    outcome_description: str = ""
    at: datetime = field(default_factory=utc_now)
    # Add a Patient participant for each study from the index when the record is
    # written (the code that reports the event may not know the patient).
    patients_from_index: bool = False

    @property
    def requestor(self) -> ActiveParticipant | None:
        return next((p for p in self.participants if p.is_requestor), None)

    @property
    def patient_ids(self) -> list[str]:
        return _unique(o.object_id for o in self.objects if o.id_type == codes.PATIENT_NUMBER)

    @property
    def study_uids(self) -> list[str]:
        return _unique(o.object_id for o in self.objects if o.id_type == codes.STUDY_INSTANCE_UID)


def _unique(values: object) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:  # type: ignore[attr-defined]
        seen.setdefault(value, None)
    return list(seen)


# -- participants and objects used by many events ----------------------------------------------

def patient_object(patient_id: str, *, issuer: str = "", name: str = "") -> ParticipantObject:
    """Patient: type 1 (person), role 1 (patient), ID type 2 (patient number).

    ParticipantObjectID is the PatientID, with its issuer as an HL7 CX
    (``id^^^issuer``) when there is one (IHE ITI TF-2a 3.20.7).
    """
    object_id = f"{patient_id}^^^{issuer}" if issuer else patient_id
    return ParticipantObject(
        object_id=object_id,
        id_type=codes.PATIENT_NUMBER,
        type_code=codes.TYPE_PERSON,
        role=codes.ROLE_PATIENT,
        name=name,
    )


def study_object(
    study_uid: str,
    *,
    sop_classes: dict[str, int] | None = None,
    life_cycle: int | None = None,
    accession_numbers: tuple[str, ...] = (),
) -> ParticipantObject:
    """Study: type 2 (system object), role 3 (report), ID type 110180 (Study Instance UID)."""
    return ParticipantObject(
        object_id=study_uid,
        id_type=codes.STUDY_INSTANCE_UID,
        type_code=codes.TYPE_SYSTEM_OBJECT,
        role=codes.ROLE_REPORT,
        life_cycle=life_cycle,
        sop_classes=tuple(sorted((sop_classes or {}).items())),
        accession_numbers=accession_numbers,
    )


def query_object(sop_class_uid: str, query: bytes, *, transfer_syntax: str = "") -> ParticipantObject:
    """Query: type 2, role 24 (query), ID type 110181 (the SOP Class queried), the query base64."""
    details: tuple[tuple[str, bytes], ...] = ()
    if transfer_syntax:
        details = (("TransferSyntax", transfer_syntax.encode("ascii", "replace")),)
    return ParticipantObject(
        object_id=sop_class_uid,
        id_type=codes.SOP_CLASS_UID,
        type_code=codes.TYPE_SYSTEM_OBJECT,
        role=codes.ROLE_QUERY,
        query=query,
        details=details,
    )


def audit_log_object(uri: str) -> ParticipantObject:
    """The audit log: type 2, role 13 (security resource), ID type 12 (URI)."""
    return ParticipantObject(
        object_id=uri,
        id_type=codes.URI,
        type_code=codes.TYPE_SYSTEM_OBJECT,
        role=codes.ROLE_SECURITY_RESOURCE,
        name="Security Audit Log",
    )


# -- XML (PS3.15 A.5.1) -------------------------------------------------------------------------

def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent,
        tag,
        {
            "csd-code": code.code,
            "codeSystemName": code.system,
            "displayName": code.meaning,
            "originalText": code.meaning,
        },
    )


def to_element(message: AuditMessage, source: AuditSource) -> ET.Element:
    root = ET.Element("AuditMessage")
    event = ET.SubElement(root, "EventIdentification")
    event.set("EventActionCode", message.action)
    event.set("EventDateTime", format_datetime(message.at))
    event.set("EventOutcomeIndicator", str(message.outcome))
    _coded(event, "EventID", message.event_id)
    for event_type in message.event_types:
        _coded(event, "EventTypeCode", event_type)
    if message.outcome_description:
        ET.SubElement(event, "EventOutcomeDescription").text = xml_text(message.outcome_description)

    for p in message.participants:
        node = ET.SubElement(root, "ActiveParticipant")
        node.set("UserID", xml_text(p.user_id) or "unknown")
        if p.alternative_user_id:
            node.set("AlternativeUserID", xml_text(p.alternative_user_id))
        if p.user_name:
            node.set("UserName", xml_text(p.user_name))
        node.set("UserIsRequestor", "true" if p.is_requestor else "false")
        if p.network_access_point:
            node.set("NetworkAccessPointID", xml_text(p.network_access_point))
            node.set("NetworkAccessPointTypeCode", access_point_type(p.network_access_point))
        for role in p.roles:
            _coded(node, "RoleIDCode", role)
        if p.media_type is not None:
            media = ET.SubElement(node, "MediaIdentifier")
            _coded(media, "MediaType", p.media_type)

    audit_source = ET.SubElement(root, "AuditSourceIdentification")
    if source.enterprise_site_id:
        audit_source.set("AuditEnterpriseSiteID", xml_text(source.enterprise_site_id))
    audit_source.set("AuditSourceID", xml_text(source.source_id))
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": source.type_code})

    for o in message.objects:
        node = ET.SubElement(root, "ParticipantObjectIdentification")
        node.set("ParticipantObjectID", xml_text(o.object_id))
        if o.type_code is not None:
            node.set("ParticipantObjectTypeCode", str(o.type_code))
        if o.role is not None:
            node.set("ParticipantObjectTypeCodeRole", str(o.role))
        if o.life_cycle is not None:
            node.set("ParticipantObjectDataLifeCycle", str(o.life_cycle))
        _coded(node, "ParticipantObjectIDTypeCode", o.id_type)
        if o.query is not None:
            ET.SubElement(node, "ParticipantObjectQuery").text = base64.b64encode(o.query).decode()
        elif o.name:
            ET.SubElement(node, "ParticipantObjectName").text = xml_text(o.name)
        for kind, value in o.details:
            ET.SubElement(
                node, "ParticipantObjectDetail", {"type": kind, "value": base64.b64encode(value).decode()}
            )
        if o.sop_classes or o.accession_numbers:
            description = ET.SubElement(node, "ParticipantObjectDescription")
            for number in o.accession_numbers:
                ET.SubElement(description, "Accession", {"Number": xml_text(number)})
            for uid, count in o.sop_classes:
                ET.SubElement(description, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})
    return root


def to_xml(message: AuditMessage, source: AuditSource) -> str:
    """The message as an XML document (UTF-8 declared; no pretty-printing)."""
    body = ET.tostring(to_element(message, source), encoding="unicode", short_empty_elements=True)
    return '<?xml version="1.0" encoding="UTF-8"?>' + body
