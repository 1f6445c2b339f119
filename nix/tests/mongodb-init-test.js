// Logic test of the replica-set init script (nix/lib.nix mongoInitScript,
// committed as containers/mongodb-init.js) against a scripted stand-in for
// mongosh's `db`. It checks the order of calls and idempotency, not MongoDB:
// no mongod can be installed on our build machines.
//   node nix/tests/mongodb-init-test.js containers/mongodb-init.js
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const vm = require("vm");
const assert = require("assert");

const script = fs.readFileSync(process.argv[2], "utf8");
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "lm-init-"));
fs.writeFileSync(path.join(dir, "admin"), "admin-secret\n");
fs.writeFileSync(path.join(dir, "app"), "app-secret\n");

class ServerError extends Error {
  constructor(code, msg) {
    super(msg);
    this.code = code;
  }
}

// state: { initiated, primaryAfter (hello calls until primary), users: {name: pwd} }
function fakeMongo(state, { initiateThrows = false } = {}) {
  const calls = [];
  let hellos = 0;
  const admin = {
    runCommand(cmd) {
      if (cmd.hello) {
        hellos += 1;
        if (state.hideSetName > 0) {
          state.hideSetName -= 1;
          return { ok: 1, isWritablePrimary: false };
        }
        return state.initiated
          ? { ok: 1, setName: state.replSet, isWritablePrimary: hellos > state.primaryAfter }
          : { ok: 1, isWritablePrimary: false };
      }
      if (cmd.replSetInitiate) {
        calls.push(["replSetInitiate", cmd.replSetInitiate._id]);
        if (state.initiated) {
          if (initiateThrows) throw new ServerError(23, "already initialized");
          return { ok: 0, code: 23, errmsg: "already initialized" };
        }
        state.initiated = true;
        state.replSet = cmd.replSetInitiate._id;
        return { ok: 1 };
      }
      throw new Error("unexpected command " + JSON.stringify(cmd));
    },
    auth(user, pwd) {
      calls.push(["auth", user]);
      if (state.users[user] === pwd) return { ok: 1 };
      throw new ServerError(18, "Authentication failed.");
    },
    createUser(doc) {
      calls.push(["createUser", doc.user]);
      const noUsers = Object.keys(state.users).length === 0;
      if (!noUsers && !state.authenticated) throw new ServerError(13, "not authorized");
      state.users[doc.user] = doc.pwd;
    },
    updateUser(user, doc) {
      calls.push(["updateUser", user]);
      state.users[user] = doc.pwd;
    },
    getUser(user) {
      return user in state.users ? { user } : null;
    },
  };
  const origAuth = admin.auth;
  admin.auth = (u, p) => {
    const r = origAuth(u, p);
    state.authenticated = true;
    return r;
  };
  const sandbox = {
    require,
    process: { env: { ADMIN_PASSWORD_FILE: path.join(dir, "admin"), APP_PASSWORD_FILE: path.join(dir, "app") } },
    db: { getSiblingDB: (name) => (assert.strictEqual(name, "admin"), admin) },
    print: () => {},
    sleep: () => {},
    JSON,
    Date,
    Error,
    String,
  };
  return { calls, run: () => vm.runInNewContext(script, sandbox) };
}

const names = (calls) => calls.map((c) => c.join(" "));

// 1. A fresh set: initiate, wait for primary, create both users.
const state = { initiated: false, primaryAfter: 3, users: {} };
let m = fakeMongo(state);
m.run();
assert.deepStrictEqual(names(m.calls), [
  "replSetInitiate rs0",
  "auth admin",
  "createUser admin",
  "auth admin",
  "createUser linkmesh",
]);
assert.deepStrictEqual(state.users, { admin: "admin-secret", linkmesh: "app-secret" });

// 2. Run again (reboot): no initiate, log in, update the app user's password.
state.authenticated = false;
state.users.linkmesh = "old";
m = fakeMongo(state);
m.run();
assert.deepStrictEqual(names(m.calls), ["auth admin", "updateUser linkmesh"]);
assert.strictEqual(state.users.linkmesh, "app-secret");

// 3. A member that has not yet seen the configuration (hello without
//    setName) while the set exists: AlreadyInitialized (23) is accepted,
//    whether mongosh throws it or returns ok: 0.
for (const initiateThrows of [true, false]) {
  const s = { initiated: true, replSet: "rs0", primaryAfter: 1, hideSetName: 1, users: { admin: "admin-secret" } };
  const f = fakeMongo(s, { initiateThrows });
  f.run();
  assert.deepStrictEqual(names(f.calls), ["replSetInitiate rs0", "auth admin", "createUser linkmesh"]);
}

// 4. Never primary: fails with a clear message, creates no user.
const never = { initiated: true, replSet: "rs0", primaryAfter: Infinity, users: {} };
m = fakeMongo(never);
const realNow = Date.now;
let t = realNow();
Date.now = () => (t += 60 * 1000);
assert.throws(() => m.run(), /did not become primary/);
Date.now = realNow;
assert.deepStrictEqual(never.users, {});

// 5. Wrong admin password on a set that has users: refuses.
const locked = { initiated: true, replSet: "rs0", primaryAfter: 0, users: { admin: "other" } };
m = fakeMongo(locked);
assert.throws(() => m.run(), /not authorized/);

fs.rmSync(dir, { recursive: true });
console.log("mongodb init script: 5 scenarios passed");
