// v3_npm.js - the calls of etcd's v3 discovery, made with the npm client
// `etcd3` (1.1.2, @grpc/grpc-js over h2c), against one endpoint.
//
//   node tests/e2e/v3_npm.js HOST:PORT TOKEN [--expect-denied]
//
// Run by tests/e2e/test_v3_npm.py against a real etcd 3.4 and against disco
// with the same TOKEN: it prints one JSON object on stdout (what each call
// answered, revisions relative to the first Put's, so that two servers with
// different histories compare equal) and exits 0, or prints why on stderr
// and exits 1. With --expect-denied it also Puts a key outside the
// discovery key shapes and records the error (disco refuses it; etcd
// would not, so the test asks for it against disco only).
//
// NODE_PATH (or a node_modules beside the caller) must hold etcd3; the
// test sets it to the directory `make check` installs into.
"use strict";

const { Etcd3 } = require("etcd3");

// Every step is bounded; the whole run too (a server that never answers
// must not hang the test).
const CALL_TIMEOUT_MS = Number(process.env.V3_NPM_CALL_TIMEOUT_MS || 5000);
const RUN_TIMEOUT_MS = Number(process.env.V3_NPM_RUN_TIMEOUT_MS || 30000);
const PREFIX = "/_etcd/registry";

function fail(msg) {
  process.stderr.write("v3_npm.js: " + msg + "\n");
  process.exit(1);
}

const args = process.argv.slice(2);
if (args.length < 2 || args.length > 3 || (args.length === 3 && args[2] !== "--expect-denied")) {
  fail("usage: node v3_npm.js HOST:PORT TOKEN [--expect-denied]");
}
const [endpoint, token] = args;
const expectDenied = args[2] === "--expect-denied";
const runTimer = setTimeout(() => fail("no result within " + RUN_TIMEOUT_MS + " ms"),
                            RUN_TIMEOUT_MS);

const client = new Etcd3({
  hosts: "http://" + endpoint,
  dialTimeout: CALL_TIMEOUT_MS,
  defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + CALL_TIMEOUT_MS }),
});

const sizeKey = PREFIX + "/" + token + "/_config/size";
const membersPrefix = PREFIX + "/" + token + "/members/";
const memberKey = (id) => membersPrefix + id;

let base = null; // the absolute revision of the first Put
const rel = (rev) => Number(rev) - base;

function kv(k) {
  return {
    key: k.key.toString(),
    value: k.value.toString(),
    create_revision: rel(k.create_revision),
    mod_revision: rel(k.mod_revision),
    version: Number(k.version),
    lease: Number(k.lease),
  };
}

function range(r) {
  return {
    revision: rel(r.header.revision),
    count: Number(r.count),
    more: Boolean(r.more),
    kvs: r.kvs.map(kv),
  };
}

function withTimeout(promise, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(what + ": no answer in " + CALL_TIMEOUT_MS + " ms")),
                       CALL_TIMEOUT_MS);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

// Watches the members prefix from `startRevision` until `want` events have
// arrived; resolves with them (flattened: how a server groups events into
// responses is its own choice).
async function watchEvents(startRevision, want, whileWatching) {
  const events = [];
  // watcher() rather than create(): the handlers are on before the stream
  // opens, so no replayed event can arrive ahead of them.
  const watcher = client.watch().prefix(membersPrefix).startRevision(String(startRevision))
                    .watcher();
  let created = false;
  const done = new Promise((resolve, reject) => {
    watcher.on("connected", () => { created = true; });
    watcher.on("data", (res) => {
      if (!created) reject(new Error("an event before the watch was created"));
      for (const e of res.events) {
        events.push({ type: e.type, kv: kv(e.kv) });
      }
      if (events.length >= want) resolve();
    });
    watcher.on("error", reject);
  });
  try {
    await withTimeout(new Promise((resolve, reject) => {
      if (created) resolve();
      watcher.once("connected", resolve);
      watcher.once("error", reject);
    }), "watch create");
    if (whileWatching) await whileWatching();
    await withTimeout(done, "watch events (" + events.length + " of " + want + ")");
  } finally {
    await withTimeout(watcher.cancel(), "watch cancel");
  }
  return events;
}

async function main() {
  const out = {};
  const put = (key, value) => withTimeout(client.put(key).value(value).exec(), "put " + key);

  // A booting member's first write: the cluster size.
  const p0 = await put(sizeKey, "3");
  base = Number(p0.header.revision);
  out.put_size = rel(p0.header.revision);
  out.get_size = range(await withTimeout(client.get(sizeKey).exec(), "get size"));

  // Two members register.
  out.put_a1 = rel((await put(memberKey("a1"), "infra0=http://10.0.0.1:2380")).header.revision);
  const p2 = await put(memberKey("a2"), "infra1=http://10.0.0.2:2380");
  out.put_a2 = rel(p2.header.revision);

  // The members prefix in create order, as v3discovery reads it.
  out.members = range(await withTimeout(
    client.getAll().prefix(membersPrefix).sort("Create", "Ascend").exec(), "range members"));
  out.members_limit_1 = range(await withTimeout(
    client.getAll().prefix(membersPrefix).sort("Create", "Ascend").limit(1).exec(),
    "range members limit 1"));
  out.members_count = Number(await withTimeout(client.getAll().prefix(membersPrefix).count(),
                                               "count members"));

  // A member re-registers: its key is overwritten, create_revision kept;
  // prev_kv returns what was there.
  const prev = await withTimeout(
    client.put(memberKey("a1")).value("infra0=http://10.0.0.1:2380").getPrevious(),
    "put a1 again with prev_kv");
  out.reput_a1 = { revision: rel(prev.header.revision), prev_kv: kv(prev) };

  // A watch of the prefix from a2's revision replays a2 and the re-put of
  // a1, then sees a third member registered while it waits.
  out.watch = await watchEvents(Number(p2.header.revision), 3, async () => {
    out.put_a3 = rel((await put(memberKey("a3"), "infra2=http://10.0.0.3:2380")).header.revision);
  });
  out.members_after = range(await withTimeout(
    client.getAll().prefix(membersPrefix).sort("Create", "Ascend").exec(), "range members"));

  if (expectDenied) {
    try {
      await put("/foo", "bar");
      out.denied = "no error";
    } catch (e) {
      out.denied = e.constructor.name + ": " + e.message;
    }
  }
  return out;
}

main().then(
  (out) => {
    clearTimeout(runTimer);
    client.close();
    process.stdout.write(JSON.stringify(out) + "\n");
  },
  (e) => fail((e && e.stack) || String(e)));
