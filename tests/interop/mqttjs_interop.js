#!/usr/bin/env node
// Interoperability checks of an MQTT server against MQTT.js (npm `mqtt`, 5.x), MQTT 3.1.1 and 5.0.
//
// Usage: node mqttjs_interop.js URL [CA [CERT KEY]]
//   URL    mqtt://HOST:PORT or ws://HOST:PORT/PATH (plain), mqtts:// or wss:// (TLS; then CA is the
//          PEM file of the CA to trust, CERT and KEY those of a client certificate to present)
//
// Prints one line per check ("ok NAME" or "FAIL NAME: why") and a final "N passed, M failed";
// exits 0 only when every check passed. Every wait is bounded and a watchdog ends the run after
// 90 s. Topics and client ids carry a per-run id, so runs against the same server do not
// interfere. Installed by `.ci/run` with `npm ci` in this folder (package-lock.json).

'use strict'

const fs = require('fs')
const crypto = require('crypto')

let mqtt
try {
  mqtt = require('mqtt')
} catch (e) {
  console.log('FAIL import: the mqtt package is not installed (npm ci in tests/interop/): ' + e.message)
  console.log('0 passed, 1 failed')
  process.exit(2)
}

const [URL, CA, CERT, KEY] = process.argv.slice(2)
if (!URL) {
  console.log('usage: node mqttjs_interop.js URL [CA CERT KEY]')
  process.exit(2)
}
const TLS = URL.startsWith('mqtts:') || URL.startsWith('wss:')
const RUN = crypto.randomBytes(4).toString('hex')
const WAIT = 5000
const QUIET = 700

const topic = (...parts) => ['mqttjs-' + RUN, ...parts].join('/')
const cid = (name, v) => `mqttjs-${RUN}-${name}-v${v}`

class CheckFailed extends Error {}
function expect (cond, why) {
  if (!cond) throw new CheckFailed(why)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Connection options: MQTT version, TLS material, no automatic reconnect, bounded connect. */
function options (v, extra) {
  const o = {
    protocolVersion: v,
    reconnectPeriod: 0,
    connectTimeout: WAIT,
    keepalive: 30,
    ...extra
  }
  if (TLS) {
    o.ca = fs.readFileSync(CA)
    if (CERT && !o.noClientCert) {
      o.cert = fs.readFileSync(CERT)
      o.key = fs.readFileSync(KEY)
    }
    delete o.noClientCert
    o.rejectUnauthorized = true
  }
  return o
}

/**
 * A connected client that records every message it receives (the listener is attached before
 * any byte arrives, so messages queued for a resumed session are not missed) and its CONNACK.
 */
async function connect (name, v, extra = {}) {
  const c = mqtt.connect(URL, options(v, { clientId: cid(name, v), ...extra }))
  const rec = { c, msgs: [], connack: null, name }
  c.on('message', (t, payload, packet) => rec.msgs.push({ topic: t, payload: payload.toString(), packet }))
  rec.connack = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new CheckFailed(`${name}: no CONNACK within ${WAIT} ms`)), WAIT + 500)
    c.once('connect', (ack) => { clearTimeout(timer); resolve(ack) })
    c.once('error', (e) => { clearTimeout(timer); reject(new CheckFailed(`${name}: connect failed: ${e.message}`)) })
    c.once('close', () => { clearTimeout(timer); reject(new CheckFailed(`${name}: connection closed before CONNACK`)) })
  })
  c.on('error', () => {})
  return rec
}

/** Waits until `rec` has received `n` messages on `t`; returns them. */
async function waitMsgs (rec, t, n = 1, ms = WAIT) {
  const deadline = Date.now() + ms
  for (;;) {
    const got = rec.msgs.filter((m) => m.topic === t)
    if (got.length >= n) return got
    if (Date.now() > deadline) {
      throw new CheckFailed(`${rec.name}: ${got.length} of ${n} message(s) on ${t} within ${ms} ms`)
    }
    await sleep(20)
  }
}

async function close (...recs) {
  await Promise.all(recs.map((r) => r && r.c.endAsync().catch(() => {})))
}

async function subscribe (rec, t, qos, props) {
  const grants = await rec.c.subscribeAsync(t, props ? { qos, properties: props } : { qos })
  expect(grants.length === 1 && grants[0].qos === qos, `${rec.name}: SUBACK ${JSON.stringify(grants)}, wanted qos ${qos}`)
}

/** QoS n end to end: the subscriber gets the payload once, at QoS n. */
async function checkQos (v, qos) {
  const t = topic('qos' + qos, 'v' + v)
  const sub = await connect('sub-q' + qos, v)
  const pub = await connect('pub-q' + qos, v)
  try {
    await subscribe(sub, t, qos)
    await pub.c.publishAsync(t, 'payload at qos ' + qos, { qos })
    const [m] = await waitMsgs(sub, t)
    expect(m.payload === 'payload at qos ' + qos, `payload ${JSON.stringify(m.payload)}`)
    expect(m.packet.qos === qos, `delivered at qos ${m.packet.qos}`)
    expect(!m.packet.retain, 'a live message arrived with the retain flag')
    await sleep(QUIET)
    expect(sub.msgs.length === 1, `${sub.msgs.length} deliveries, wanted exactly one`)
  } finally {
    await close(sub, pub)
  }
}

/** A retained message reaches a later subscriber flagged as retained; an empty one clears it. */
async function checkRetained (v) {
  const t = topic('retained', 'v' + v)
  const pub = await connect('pub-ret', v)
  try {
    await pub.c.publishAsync(t, 'kept', { qos: 1, retain: true })
    const late = await connect('late-ret', v)
    try {
      await subscribe(late, t, 1)
      const [m] = await waitMsgs(late, t)
      expect(m.payload === 'kept', `payload ${JSON.stringify(m.payload)}`)
      expect(m.packet.retain === true, 'retained message delivered without the retain flag')
    } finally {
      await close(late)
    }
    await pub.c.publishAsync(t, '', { qos: 1, retain: true })
    const after = await connect('after-ret', v)
    try {
      await subscribe(after, t, 1)
      await sleep(QUIET)
      expect(after.msgs.length === 0, `retained message not cleared: ${JSON.stringify(after.msgs.map((m) => m.payload))}`)
    } finally {
      await close(after)
    }
  } finally {
    await close(pub)
  }
}

/** The will is published when the connection drops without DISCONNECT, and not after one. */
async function checkWill (v) {
  const t = topic('will', 'v' + v)
  const watcher = await connect('watch-will', v)
  try {
    await subscribe(watcher, t, 1)
    const will = { topic: t, payload: Buffer.from('gone'), qos: 1, retain: false }
    const polite = await connect('polite-will', v, { will: { ...will, payload: Buffer.from('polite') } })
    await polite.c.endAsync()
    const rude = await connect('rude-will', v, { will })
    await rude.c.endAsync(true) // destroys the socket: no DISCONNECT
    const [m] = await waitMsgs(watcher, t)
    expect(m.payload === 'gone', `will payload ${JSON.stringify(m.payload)}`)
    await sleep(QUIET)
    const payloads = watcher.msgs.map((x) => x.payload)
    expect(!payloads.includes('polite'), 'the will was published after a normal DISCONNECT')
  } finally {
    await close(watcher)
  }
}

/**
 * A persistent session survives a disconnect: CONNACK says session present, and QoS 1 and 2
 * messages published while the client was away are delivered on reconnect.
 */
async function checkSession (v) {
  const t = topic('session', 'v' + v)
  const keep = v === 5 ? { clean: false, properties: { sessionExpiryInterval: 300 } } : { clean: false }
  // a new session that outlives the connection: v5 clean start with an expiry, v3.1.1 clean = 0
  const fresh = v === 5 ? { clean: true, properties: { sessionExpiryInterval: 300 } } : { clean: false }
  const first = await connect('persist', v, fresh)
  await subscribe(first, t, 2)
  await first.c.endAsync()
  const pub = await connect('pub-session', v)
  let again
  try {
    await pub.c.publishAsync(t, 'while away q1', { qos: 1 })
    await pub.c.publishAsync(t, 'while away q2', { qos: 2 })
    again = await connect('persist', v, keep)
    expect(again.connack.sessionPresent === true, 'CONNACK session present = false after reconnect')
    const got = await waitMsgs(again, t, 2)
    const payloads = got.map((m) => m.payload).sort()
    expect(JSON.stringify(payloads) === JSON.stringify(['while away q1', 'while away q2']),
      `delivered ${JSON.stringify(payloads)}`)
    expect(got.every((m) => m.packet.qos >= 1), `qos ${got.map((m) => m.packet.qos)}`)
  } finally {
    await close(pub, again)
    // drop the session
    const gone = await connect('persist', v, { clean: true, properties: v === 5 ? { sessionExpiryInterval: 0 } : undefined }).catch(() => null)
    await close(gone)
  }
}

/** MQTT 5 only: user properties and content type reach the subscriber unchanged. */
async function checkV5Properties () {
  const t = topic('props', 'v5')
  const sub = await connect('sub-props', 5)
  const pub = await connect('pub-props', 5)
  try {
    await subscribe(sub, t, 1)
    await pub.c.publishAsync(t, '{"a":1}', {
      qos: 1,
      properties: { contentType: 'application/json', userProperties: { origin: 'mqttjs' } }
    })
    const [m] = await waitMsgs(sub, t)
    const p = m.packet.properties || {}
    expect(p.contentType === 'application/json', `content type ${JSON.stringify(p.contentType)}`)
    expect(p.userProperties && p.userProperties.origin === 'mqttjs', `user properties ${JSON.stringify(p.userProperties)}`)
  } finally {
    await close(sub, pub)
  }
}

/** TLS only: a client without a certificate gets no CONNACK (the server requires one). */
async function checkNoCertRefused (v) {
  let rec
  try {
    rec = await connect('nocert', v, { noClientCert: true })
  } catch (e) {
    if (e instanceof CheckFailed) return
    throw e
  }
  await close(rec)
  throw new CheckFailed('connected over TLS without a client certificate')
}

async function main () {
  const checks = []
  for (const v of [4, 5]) {
    for (const qos of [0, 1, 2]) checks.push([`v${v} qos${qos}`, () => checkQos(v, qos)])
    checks.push([`v${v} retained`, () => checkRetained(v)])
    checks.push([`v${v} will`, () => checkWill(v)])
    checks.push([`v${v} persistent session`, () => checkSession(v)])
    if (TLS && CERT) checks.push([`v${v} tls without client cert refused`, () => checkNoCertRefused(v)])
  }
  checks.push(['v5 properties', checkV5Properties])
  let passed = 0
  let failed = 0
  for (const [name, fn] of checks) {
    try {
      await fn()
      passed++
      console.log('ok ' + name)
    } catch (e) {
      failed++
      console.log(`FAIL ${name}: ${e instanceof CheckFailed ? e.message : e.stack}`)
    }
  }
  console.log(`${passed} passed, ${failed} failed`)
  process.exit(failed === 0 ? 0 : 1)
}

setTimeout(() => {
  console.log('FAIL watchdog: the run did not finish within 90 s')
  process.exit(3)
}, 90000).unref()

main().catch((e) => {
  console.log('FAIL main: ' + e.stack)
  process.exit(1)
})
