// Headless Chromium signs in through dermgate like a clinician would: the IdP's
// login form, dermgate's TOTP enrollment/step-up (the code computed here, as an
// authenticator app would), then the page behind. TEST ONLY.
//
// Environment:
//   START_URL    where the browser starts (an https URL on dermgate)
//   LOGIN, PASSWORD   the IdP user
//   TOTP_SECRET  base32 secret (optional: read from the enrollment page otherwise)
//   EXPECT_TEXT  text the final page must show
//   SCREENSHOT   PNG path for the final page (kept as a test artifact)
//   SPKI         base64 SHA-256 of the server key (Chromium trusts only that key)
//   HOST_RULES   optional --host-resolver-rules (no DNS on this machine)
// Prints "OK <final URL>" and exits 0, or a diagnostic and exits 1.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { chromium } from 'playwright-core';

const env = (k, d) => process.env[k] ?? d;

function base32Decode(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of s.replace(/=+$/, '').toUpperCase()) {
    const v = alphabet.indexOf(c);
    if (v < 0) continue;
    bits += v.toString(2).padStart(5, '0');
  }
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

// RFC 6238: HMAC-SHA-1, 30 s steps, 6 digits.
function totp(secretB32, now = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(now / 1000 / 30)));
  const h = crypto.createHmac('sha1', base32Decode(secretB32)).update(counter).digest();
  const o = h[h.length - 1] & 0xf;
  const n = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(n % 1e6).padStart(6, '0');
}

const args = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
if (env('SPKI')) args.push(`--ignore-certificate-errors-spki-list=${env('SPKI')}`);
if (env('HOST_RULES')) args.push(`--host-resolver-rules=${env('HOST_RULES')}`);

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dermgate-chromium-'));
const shot = env('SCREENSHOT', path.join(os.tmpdir(), 'dermgate-login.png'));
let context;
let page;
const timer = setTimeout(() => fail('timed out after 60 s'), 60_000);

async function fail(why) {
  clearTimeout(timer);
  let text = '';
  try {
    text = (await page.innerText('body')).slice(0, 500);
    await page.screenshot({ path: `${shot}.fail.png`, fullPage: true });
  } catch {
    /* the page may be gone */
  }
  console.log(`FAIL ${why}\nurl: ${page ? page.url() : '-'}\npage: ${text}`);
  try {
    await context?.close();
  } finally {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    process.exit(1);
  }
}

try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: env('CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    args,
    viewport: { width: 412, height: 915 }, // a phone, as a patient would use
  });
  page = context.pages()[0] ?? (await context.newPage());
  await page.goto(env('START_URL'), { waitUntil: 'load' });

  // The IdP's login form.
  await page.waitForSelector('input[name=login]', { timeout: 20_000 });
  await page.fill('input[name=login]', env('LOGIN'));
  await page.fill('input[name=password]', env('PASSWORD'));
  await Promise.all([page.waitForLoadState('load'), page.click('#submit')]);

  // dermgate's step-up (enrollment the first time), when the IdP did no MFA.
  const expect = env('EXPECT_TEXT');
  await page.waitForFunction(
    (t) => document.querySelector('input[name=code]') || document.body.innerText.includes(t),
    expect,
    { timeout: 20_000 },
  );
  if (await page.$('input[name=code]')) {
    let secret = env('TOTP_SECRET');
    if (!secret) secret = (await page.innerText('#totp-secret')).trim();
    await page.fill('input[name=code]', totp(secret));
    await Promise.all([page.waitForLoadState('load'), page.click('#submit')]);
  }
  await page.waitForFunction((t) => document.body.innerText.includes(t), expect, { timeout: 20_000 });
  await page.screenshot({ path: shot, fullPage: true });
  clearTimeout(timer);
  console.log(`OK ${page.url()}`);
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
  process.exit(0);
} catch (e) {
  await fail(e && e.message ? e.message.split('\n')[0] : String(e));
}
