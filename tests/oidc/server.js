// A real OpenID Connect provider (the npm package `oidc-provider`) for
// dermgate's end-to-end tests. TEST ONLY: hard-coded users, test-control
// endpoints under /__test/. Started by the Rust harness (tests/e2e/common/idp.rs).
//
// Environment:
//   OIDC_PORT        port on 127.0.0.1 (0 = ephemeral)
//   OIDC_CERT/KEY    PEM server certificate and key (dermgate's dev CA)
//   OIDC_CLIENTS     JSON array of client metadata
//   OIDC_RP_CA       PEM CA trusted when calling the RP (back-channel logout)
//   OIDC_RP_RESOLVE  "host=ip,host2=ip" for the RP's names (no DNS here)
// Prints "oidc-provider listening on https://127.0.0.1:<port>" once ready.

import https from 'node:https';
import fs from 'node:fs';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const USERS = {
  'mfa-doc': { password: 'mfa-doc-pass', groups: ['clinicians'], amr: ['pwd', 'otp'], acr: 'mfa' },
  'nomfa-doc': { password: 'nomfa-doc-pass', groups: ['clinicians'], amr: ['pwd'], acr: 'pwd' },
  patient1: { password: 'patient1-pass', groups: ['patients'], amr: ['pwd'], acr: 'pwd' },
  nogroups: { password: 'nogroups-pass', groups: [], amr: ['pwd', 'otp'], acr: 'mfa' },
};

const clients = JSON.parse(process.env.OIDC_CLIENTS || '[]');
const resolve = Object.fromEntries(
  (process.env.OIDC_RP_RESOLVE || '').split(',').filter(Boolean).map((p) => p.split('=')),
);
const rpCa = process.env.OIDC_RP_CA ? fs.readFileSync(process.env.OIDC_RP_CA) : undefined;
const log = (...a) => console.error('[oidc]', ...a);

async function newKeys() {
  const out = { private: [], byAlg: {} };
  for (const alg of ['RS256', 'ES256']) {
    const { privateKey } = await jose.generateKeyPair(alg, { extractable: true });
    const jwk = await jose.exportJWK(privateKey);
    jwk.kid = `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`;
    jwk.alg = alg;
    jwk.use = 'sig';
    out.private.push(jwk);
    out.byAlg[alg] = { key: privateKey, kid: jwk.kid };
  }
  return out;
}

let keys = await newKeys();
let issuer = '';
let provider;

function makeProvider() {
  const p = new Provider(issuer, {
    clients,
    jwks: { keys: keys.private },
    acrValues: ['pwd', 'mfa'],
    claims: {
      acr: null,
      amr: null,
      auth_time: null,
      iss: null,
      sid: null,
      // Always in the ID token (a real IdP of a practice is configured the same way).
      openid: ['sub', 'groups', 'acr', 'amr', 'auth_time'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    conformIdTokenClaims: false,
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: { enabled: true },
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, id) {
      const u = USERS[id];
      if (!u) return undefined;
      return {
        accountId: id,
        async claims() {
          return { sub: id, groups: u.groups, email: `${id}@example.test`, email_verified: true, name: id };
        },
      };
    },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = `<!doctype html><title>error</title><h1>${out.error}</h1><p>${out.error_description || ''}</p>`;
    },
  });
  p.on('server_error', (ctx, err) => log('server_error', err && err.message));
  return p;
}

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginForm(uid, error) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Sign in (test IdP)</title></head><body>
<h1>Sign in (test IdP)</h1>${error ? `<p id="error">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login">
<label>User <input name="login" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button id="submit" type="submit">Sign in</button></form></body></html>`;
}

function readBody(req) {
  return new Promise((ok, fail) => {
    let b = '';
    req.on('data', (c) => {
      b += c;
      if (b.length > 1e6) req.destroy();
    });
    req.on('end', () => ok(b));
    req.on('error', fail);
  });
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

async function consent(req, res, interaction) {
  const { prompt: { details }, params, session: { accountId } } = interaction;
  let grant = interaction.grantId
    ? await provider.Grant.find(interaction.grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  if (details.missingResourceScopes) {
    for (const [indicator, scope] of Object.entries(details.missingResourceScopes)) {
      grant.addResourceScope(indicator, scope.join(' '));
    }
  }
  const grantId = await grant.save();
  const result = { consent: interaction.grantId ? {} : { grantId } };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

async function interaction(req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login|\/abort)?$/);
  if (!m) return send(res, 404, 'text/plain', 'not found');
  const details = await provider.interactionDetails(req, res);
  if (m[2] === '/abort') {
    return provider.interactionFinished(req, res, { error: 'access_denied' }, { mergeWithLastSubmission: false });
  }
  if (details.prompt.name === 'consent') return consent(req, res, details);
  if (req.method === 'GET') return send(res, 200, 'text/html; charset=utf-8', loginForm(details.uid));
  if (req.method === 'POST' && m[2] === '/login') {
    const form = new URLSearchParams(await readBody(req));
    const id = form.get('login');
    const u = USERS[id];
    if (!u || u.password !== form.get('password')) {
      return send(res, 200, 'text/html; charset=utf-8', loginForm(details.uid, 'Wrong user or password.'));
    }
    log('login', id);
    return provider.interactionFinished(
      req,
      res,
      { login: { accountId: id, amr: u.amr, acr: u.acr } },
      { mergeWithLastSubmission: false },
    );
  }
  return send(res, 405, 'text/plain', 'method not allowed');
}

function postForm(target, body) {
  return new Promise((ok, fail) => {
    const u = new URL(target);
    const req = https.request(
      {
        method: 'POST',
        host: u.hostname,
        port: u.port,
        path: u.pathname + u.search,
        servername: u.hostname,
        ca: rpCa,
        lookup: (host, opts, cb) => {
          const ip = resolve[host] || host;
          if (opts && opts.all) cb(null, [{ address: ip, family: 4 }]);
          else cb(null, ip, 4);
        },
        headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        res.resume();
        res.on('end', () => ok(res.statusCode));
      },
    );
    req.on('error', fail);
    req.end(body);
  });
}

async function sign(claims, alg, kid, header = {}) {
  const k = keys.byAlg[alg || 'RS256'];
  return new jose.SignJWT(claims)
    .setProtectedHeader({ alg: alg || 'RS256', kid: kid || k.kid, ...header })
    .sign(k.key);
}

async function control(req, res, url) {
  const body = req.method === 'POST' ? JSON.parse((await readBody(req)) || '{}') : {};
  const json = (status, v) => send(res, status, 'application/json', JSON.stringify(v));
  switch (url.pathname) {
    case '/__test/health':
      return json(200, { ok: true });
    case '/__test/rotate-keys':
      keys = await newKeys();
      provider = makeProvider();
      log('keys rotated');
      return json(200, { kids: keys.private.map((k) => k.kid) });
    case '/__test/mint':
      return json(200, { token: await sign(body.claims || {}, body.alg, body.kid, body.header) });
    case '/__test/backchannel-logout': {
      const client = clients.find((c) => c.client_id === (body.client_id || clients[0]?.client_id));
      if (!client || !client.backchannel_logout_uri) return json(400, { error: 'no such client' });
      const claims = {
        iss: issuer,
        aud: client.client_id,
        iat: Math.floor(Date.now() / 1000),
        jti: crypto.randomBytes(12).toString('hex'),
        events: { 'http://schemas.openid.net/event/backchannel-logout': {} },
      };
      if (body.sub) claims.sub = body.sub;
      if (body.sid) claims.sid = body.sid;
      const token = await sign(claims, 'RS256', undefined, { typ: 'logout+jwt' });
      const status = await postForm(client.backchannel_logout_uri, `logout_token=${encodeURIComponent(token)}`);
      return json(200, { status });
    }
    default:
      return json(404, { error: 'not found' });
  }
}

const server = https.createServer(
  { cert: fs.readFileSync(process.env.OIDC_CERT), key: fs.readFileSync(process.env.OIDC_KEY) },
  (req, res) => {
    const url = new URL(req.url, 'https://idp');
    const route = url.pathname.startsWith('/__test/')
      ? control(req, res, url)
      : url.pathname.startsWith('/interaction/')
        ? interaction(req, res, url)
        : Promise.resolve(provider.callback()(req, res));
    route.catch((err) => {
      log('error', err && err.message);
      if (!res.headersSent) send(res, 500, 'text/plain', 'error');
    });
  },
);

server.listen(Number(process.env.OIDC_PORT || 0), '127.0.0.1', () => {
  issuer = `https://127.0.0.1:${server.address().port}`;
  provider = makeProvider();
  process.stdout.write(`oidc-provider listening on ${issuer}\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
