// A real OpenID Connect provider for Hilum's single sign-on tests:
// panva/node-oidc-provider (OpenID Certified), with its development login and
// consent pages (devInteractions), so a test can sign in with plain HTTP form posts.
//
//   node provider.mjs <config.json>
//
// config.json: {"port": 4000, "clients": [<client metadata>], "accounts": {"<sub>": {<claims>}}}
// Accounts are read again at each sign-in, so a test can change someone's groups.
// Prints "listening <issuer>" once it accepts connections.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const configFile = process.argv[2];
const config = JSON.parse(readFileSync(configFile, 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;

const provider = new Provider(issuer, {
  clients: config.clients,
  async findAccount(ctx, id) {
    const claims = JSON.parse(readFileSync(configFile, 'utf8')).accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
  claims: {
    openid: ['sub'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username', 'dicom_person_name'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'profile', 'email', 'groups'],
  features: { devInteractions: { enabled: true } },
  pkce: { required: () => true },
  cookies: { keys: ['hilum-test-provider-cookie-key'] },
  // Default (conformIdTokenClaims): with a code flow the profile claims are in the
  // userinfo answer, not the ID token, as at many real providers.
});
provider.on('server_error', (ctx, error) => console.error('server_error', error));

createServer(provider.callback()).listen(config.port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
