"""The audit trail: DICOM audit messages (PS3.15 A.5, IHE ATNA), stored in a hash chain.

- ``messages``: the audit message model and its XML (pure, no I/O)
- ``codes``: the coded values of PS3.16 / RFC 3881 the messages use
- ``models``: the ``audit_records`` table
- ``chain``: canonical record bytes, SHA-256 chaining, verification
- ``store``: append (serialized across processes), search, verify
- ``service``: ``AuditService``, what the rest of Hilum calls; batching thread
- ``syslog``: RFC 5424 forwarding over UDP (RFC 5426) or TLS (RFC 5425)
- ``http``: the ASGI middleware that audits DICOMweb and REST requests
- ``settings``: the ``[audit]`` section of the configuration

Nothing is imported here, so ``hilum.config`` can import the settings alone.
"""
