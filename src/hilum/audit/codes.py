"""Coded values of DICOM audit messages (PS3.16 CID 400-405, RFC 3881 value sets).

Each is a :class:`Code`: ``csd-code``, ``codeSystemName`` and ``originalText``
(the code meaning) as PS3.15 A.5.1 writes them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    system: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


# -- EventID (CID 400 Audit Event ID) ----------------------------------------------------------
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
BEGIN_TRANSFERRING = _dcm("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = _dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = _dcm("110105", "DICOM Study Deleted")
EXPORT = _dcm("110106", "Export")
IMPORT = _dcm("110107", "Import")
PATIENT_RECORD = _dcm("110110", "Patient Record")
QUERY = _dcm("110112", "Query")
SECURITY_ALERT = _dcm("110113", "Security Alert")
USER_AUTHENTICATION = _dcm("110114", "User Authentication")

EVENTS = {
    c.code: c
    for c in (
        APPLICATION_ACTIVITY, AUDIT_LOG_USED, BEGIN_TRANSFERRING, INSTANCES_ACCESSED,
        INSTANCES_TRANSFERRED, STUDY_DELETED, EXPORT, IMPORT, PATIENT_RECORD, QUERY,
        SECURITY_ALERT, USER_AUTHENTICATION,
    )
}

# -- EventTypeCode (CID 401 Audit Event Type Code) ---------------------------------------------
APPLICATION_START = _dcm("110120", "Application Start")
APPLICATION_STOP = _dcm("110121", "Application Stop")
LOGIN = _dcm("110122", "Login")
LOGOUT = _dcm("110123", "Logout")
NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
NETWORK_CONFIGURATION = _dcm("110128", "Network Configuration")
SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = _dcm("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")
AUDIT_RECORDING_STOPPED = _dcm("110133", "Audit Recording Stopped")
AUDIT_RECORDING_STARTED = _dcm("110134", "Audit Recording Started")
OBJECT_SECURITY_ATTRIBUTES_CHANGED = _dcm("110135", "Object Security Attributes Changed")
SECURITY_ROLES_CHANGED = _dcm("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = _dcm("110137", "User security Attributes Changed")

# -- RoleIDCode (CID 402 Audit Active Participant Role ID Code) --------------------------------
APPLICATION = _dcm("110150", "Application")
APPLICATION_LAUNCHER = _dcm("110151", "Application Launcher")
DESTINATION = _dcm("110152", "Destination Role ID")
SOURCE = _dcm("110153", "Source Role ID")
DESTINATION_MEDIA = _dcm("110154", "Destination Media")

# -- MediaType (CID 405 Media Type Code) -------------------------------------------------------
MEDIA_URI = _dcm("110037", "URI")

# -- ParticipantObjectIDTypeCode (CID 404 and RFC 3881 5.5.4) --------------------------------
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
USER_IDENTIFIER = Code("11", "RFC-3881", "User Identifier")
URI = Code("12", "RFC-3881", "URI")
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
SOP_CLASS_UID = _dcm("110181", "SOP Class UID")
NODE_ID = _dcm("110182", "Node ID")

# -- ParticipantObjectTypeCode / TypeCodeRole / DataLifeCycle (PS3.15 A.5.1.2) ----------------
TYPE_PERSON = 1
TYPE_SYSTEM_OBJECT = 2
ROLE_PATIENT = 1
ROLE_REPORT = 3
ROLE_MASTER_FILE = 5
ROLE_SECURITY_USER_ENTITY = 11
ROLE_SECURITY_RESOURCE = 13
ROLE_QUERY = 24
LIFE_CYCLE_ORIGINATION = 1
LIFE_CYCLE_ACCESS = 6
LIFE_CYCLE_EXPORT = 10
LIFE_CYCLE_LOGICAL_DELETION = 14

# -- EventOutcomeIndicator (PS3.15 A.5.1) -------------------------------------------------------
SUCCESS = 0
MINOR_FAILURE = 4
SERIOUS_FAILURE = 8
MAJOR_FAILURE = 12

# AuditSourceTypeCode 4: application server process tier.
SOURCE_TYPE_APPLICATION_SERVER = "4"

# The query information model QIDO-RS searches are reported as (PS3.18 10.6 maps
# QIDO-RS onto the Study Root C-FIND model).
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
