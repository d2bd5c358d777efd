"""Single sign-on through OpenID Connect (authorization code flow with PKCE).

- :mod:`.settings`: the ``[auth.oidc]`` section.
- :mod:`.client`: discovery, the authorization request, the code exchange and
  ID-token validation (authlib, joserfc).
- :mod:`.claims`: IdP claims -> user name, display and person name, groups, role.
- :mod:`.accounts`: sign-ons in progress, and finding, linking or provisioning
  the Hilum user of an IdP account.

The HTTP routes are in :mod:`hilum.web.api.oidc`.
"""
