// The OpenID Connect provider of the sign-in tests (tests/tests/e2e/sign_in.rs): npm's
// `oidc-provider` (OpenID Certified), over https with the test's certificate, one confidential
// client (Slipway) that must use PKCE, and the accounts the test names with their groups.
// Its own development sign-in pages take any password for a known account: the test is of
// Slipway's side of the flow. Consent for Slipway is implied (a first-party client).
//
//   node provider.mjs PORT CERT KEY REDIRECT_URI ACCOUNTS_JSON
//
// ACCOUNTS_JSON: {"alice": {"groups": ["site-deployers"]}, ...}. Prints "listening" when ready.

import fs from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const [port, certFile, keyFile, redirect, accountsJson] = process.argv.slice(2);
const accounts = JSON.parse(accountsJson);
const issuer = `https://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'slipway',
    client_secret: 'slipway-oidc-client-secret',
    redirect_uris: [redirect],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    groups: ['groups'],
  },
  cookies: { keys: ['slipway-test-cookie-key'] },
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    const account = accounts[id];
    if (!account) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: account.username ?? id, name: id, groups: account.groups ?? [] };
      },
    };
  },
  async loadExistingGrant(ctx) {
    const id = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (id) return ctx.oidc.provider.Grant.find(id);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile groups');
    await grant.save();
    return grant;
  },
});

const server = https.createServer(
  { cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) },
  provider.callback(),
);
server.listen(Number(port), '127.0.0.1', () => console.log('listening'));
process.on('SIGTERM', () => process.exit(0));
