# Pure helpers for the LinkMesh Nix expressions.
#
# Only builtins are used here (no nixpkgs), so everything in this file can be
# evaluated and tested on a machine without nixpkgs:
#   nix-instantiate --eval --strict nix/tests/lib-test.nix
# The NixOS modules (module.nix, ha.nix) and the committed
# config/haproxy/haproxy.cfg are built from these functions.
let
  inherit (builtins)
    attrNames concatStringsSep elem elemAt filter foldl' genList
    isAttrs isString length listToAttrs map match sort split toJSON;

  # --- small list/string utilities --------------------------------------

  imap1 = f: list: genList (i: f (i + 1) (elemAt list i)) (length list);

  concatMap = f: list: builtins.concatLists (map f list);

  lines = ls: concatStringsSep "\n" ls + "\n";

  indent = map (l: "    " + l);

  optional = cond: x: if cond then [ x ] else [ ];

  optionals = cond: xs: if cond then xs else [ ];

  hasSuffix = suffix: s:
    let
      ls = builtins.stringLength s;
      lx = builtins.stringLength suffix;
    in
    ls >= lx && builtins.substring (ls - lx) lx s == suffix;

  lastOf = list: elemAt list (length list - 1);

  initOf = list: genList (i: elemAt list i) (length list - 1);

  removeSuffix = suffix: s:
    if hasSuffix suffix s
    then builtins.substring 0 (builtins.stringLength s - builtins.stringLength suffix) s
    else s;

  hasPrefix = prefix: s:
    builtins.substring 0 (builtins.stringLength prefix) s == prefix;

  toUpper = s:
    builtins.replaceStrings
      (builtins.genList (i: builtins.substring i 1 "abcdefghijklmnopqrstuvwxyz") 26)
      (builtins.genList (i: builtins.substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26)
      s;

  # Elements that occur more than once, each reported once, in first-seen order.
  duplicates = list:
    let
      step = acc: x:
        if elem x acc.seen
        then acc // { dups = if elem x acc.dups then acc.dups else acc.dups ++ [ x ]; }
        else acc // { seen = acc.seen ++ [ x ]; };
    in
    (foldl' step { seen = [ ]; dups = [ ]; } list).dups;

  # Like nixpkgs' lib.recursiveUpdate: nested attribute sets are merged, any
  # other value on the right wins.
  recursiveUpdate = lhs: rhs:
    lhs // builtins.mapAttrs
      (name: value:
        if isAttrs value && isAttrs (lhs.${name} or null)
        then recursiveUpdate lhs.${name} value
        else value)
      rhs;

  # Build { a = { b = value; }; } from [ "a" "b" ] and value.
  setAttrByPath = path: value:
    if path == [ ] then value
    else { ${builtins.head path} = setAttrByPath (builtins.tail path) value; };

  getAttrByPath = path: default: set:
    if path == [ ] then set
    else if isAttrs set && set ? ${builtins.head path}
    then getAttrByPath (builtins.tail path) default set.${builtins.head path}
    else default;

  # Paths ([ "section" "key" ]) of every leaf of a nested attribute set.
  leafPaths = set:
    concatMap
      (name:
        let v = set.${name}; in
        if isAttrs v then map (p: [ name ] ++ p) (leafPaths v) else [ [ name ] ])
      (attrNames set);

  # --- addresses and durations --------------------------------------------

  # "127.0.0.1" -> "127.0.0.1:8080"; "::1" -> "[::1]:8080" (Rust SocketAddr syntax).
  hostPort = host: port:
    if match ".*:.*" host != null && !(hasPrefix "[" host)
    then "[${host}]:${toString port}"
    else "${host}:${toString port}";

  # "0.0.0.0:8080" -> 8080, "[::]:4320" -> 4320, "*:8080" -> 8080.
  portOf = address:
    let
      last = lastOf (filter isString (split ":" address));
    in
    if match "[0-9]+" last == null
    then throw "linkmesh: cannot read a port from the address '${address}'"
    else builtins.fromJSON last;

  # humantime-style durations as used in the server TOML ("10s", "1m 30s",
  # "500ms", "2h") -> whole seconds, rounded up.
  durationSeconds = text:
    let
      tokens = filter (t: isString t && t != "") (split "[[:space:]]+" text);
      unitMs = {
        ms = 1;
        s = 1000;
        sec = 1000;
        secs = 1000;
        m = 60000;
        min = 60000;
        mins = 60000;
        h = 3600000;
        hr = 3600000;
        hours = 3600000;
      };
      tokenMs = t:
        let m = match "([0-9]+)([a-z]+)" t; in
        if m == null || !(unitMs ? ${elemAt m 1})
        then throw "linkmesh: unsupported duration '${text}' (use e.g. \"10s\", \"1m 30s\")"
        else builtins.fromJSON (elemAt m 0) * unitMs.${elemAt m 1};
      totalMs = foldl' (acc: t: acc + tokenMs t) 0 tokens;
    in
    if tokens == [ ] then throw "linkmesh: empty duration"
    else (totalMs + 999) / 1000;

  # --- server settings ------------------------------------------------------

  # LINKMESH_<SECTION>__<KEY> for a key path, as read by the server.
  envVarName = path: "LINKMESH_" + toUpper (concatStringsSep "__" path);

  # Secrets the modules accept as file paths, and where they go in the TOML.
  # Each file is handed to the unit with systemd LoadCredential, so it can stay
  # root-only outside the Nix store; the TOML names the credential path.
  secretKeys = {
    bootstrapAdminPasswordFile = { path = [ "auth" "bootstrap_admin_password_file" ]; id = "bootstrap-admin-password"; };
    databaseUriFile = { path = [ "database" "uri_file" ]; id = "database-uri"; };
    configStoreCredentialsFile = { path = [ "config_store" "credentials_file" ]; id = "config-store-credentials"; };
    tlsKeyFile = { path = [ "tls" "key_file" ]; id = "tls-key"; };
  };

  # Keys whose inline form would put a secret into the world-readable store.
  inlineSecretKeys = [
    [ "auth" "bootstrap_admin_password" ]
    [ "database" "uri" ]
  ];

  # { unitName; secrets = { <secretKeys name> = "/path" or null; }; }
  #   -> { settings; loadCredentials = [ "id:/path" ]; }
  secretSettings = { unitName, secrets }:
    let
      used = filter (n: (secrets.${n} or null) != null) (attrNames secretKeys);
    in
    {
      settings = foldl' recursiveUpdate { }
        (map (n: setAttrByPath secretKeys.${n}.path "/run/credentials/${unitName}.service/${secretKeys.${n}.id}") used);
      loadCredentials = map (n: "${secretKeys.${n}.id}:${secrets.${n}}") used;
    };

  # Settings the modules add under the user's settings (user values win).
  serverDefaults = { stateDir, backend }:
    {
      server.shutdown_grace = "10s";
      telemetry.log_format = "json";
    }
    // (if backend == "embedded" then {
      storage = {
        backend = "embedded";
        embedded.path = "${stateDir}/linkmesh.redb";
      };
    } else { });

  # Problems with settings that the module reports as assertion failures.
  settingsErrors = { settings, storeDir ? "/nix/store" }:
    let
      paths = leafPaths settings;
      str = concatStringsSep ".";
      inline = filter (p: getAttrByPath p null settings != null) inlineSecretKeys;
      isFileKey = p: hasSuffix "_file" (lastOf p);
      both = filter
        (p: isFileKey p && elem (initOf p ++ [ (removeSuffix "_file" (lastOf p)) ]) paths)
        paths;
      inStore = filter
        (p: isFileKey p
          && isString (getAttrByPath p null settings)
          && hasPrefix storeDir (getAttrByPath p null settings))
        paths;
      backend = getAttrByPath [ "storage" "backend" ] "embedded" settings;
    in
    map (p: "settings.${str p} would put a secret into the world-readable Nix store; use the matching secrets.* file option instead") inline
    ++ map (p: "settings.${str p} and its inline form are both set; set only one") both
    ++ map (p: "settings.${str p} points into the Nix store (${getAttrByPath p "" settings}); secrets must stay outside it") inStore
    ++ optional (backend == "mongodb" && getAttrByPath [ "database" "uri_file" ] null settings == null)
      "storage.backend = \"mongodb\" needs database.uri_file (secrets.databaseUriFile)";

  # Key paths ending in `_file`: files that exist only at run time. The
  # build-time `check-config` points them at placeholders through env overrides.
  fileKeyPaths = settings:
    filter (p: hasSuffix "_file" (lastOf p)) (leafPaths settings);

  # --- instances -------------------------------------------------------------

  # Instance list: either `count` instances on one `host` with consecutive
  # ports, or one instance per entry of `hosts` with the same ports.
  mkInstances =
    { count ? 3
    , hosts ? null
    , host ? "127.0.0.1"
    , prefix ? "linkmesh-"
    , httpPort ? 8081
    , grpcPort ? 4321
    }:
    if hosts != null
    then imap1 (i: h: { name = "${prefix}${toString i}"; host = h; inherit httpPort grpcPort; }) hosts
    else
      genList
        (i: {
          name = "${prefix}${toString (i + 1)}";
          inherit host;
          httpPort = httpPort + i;
          grpcPort = grpcPort + i;
        })
        count;

  # { a = { host; ... }; } -> [ { name = "a"; host; ... } ], sorted by name.
  instanceList = attrs:
    map (name: { inherit name; } // attrs.${name}) (sort builtins.lessThan (attrNames attrs));

  # [ { name; ... } ] -> { <name> = { ... }; }
  instanceAttrs = list:
    listToAttrs (map (i: { inherit (i) name; value = removeAttrs i [ "name" ]; }) list);

  validateInstances = instances:
    let
      names = map (i: i.name) instances;
      badNames = filter (n: match "[A-Za-z0-9][A-Za-z0-9_.-]*" n == null) names;
      ports = concatMap (i: [ i.httpPort i.grpcPort ]) instances;
      badPorts = filter (p: p < 1 || p > 65535) ports;
      endpoints = concatMap
        (i: [ (hostPort i.host i.httpPort) (hostPort i.host i.grpcPort) ])
        instances;
    in
    optional (instances == [ ]) "at least one instance is needed"
    ++ map (n: "instance name '${n}' is used more than once") (duplicates names)
    ++ map (n: "instance name '${n}' must match [A-Za-z0-9][A-Za-z0-9_.-]*") badNames
    ++ map (p: "port ${toString p} is out of range") badPorts
    ++ map (e: "address ${e} is used by more than one listener") (duplicates endpoints);

  # The server settings of one instance: the shared settings plus its own
  # listeners and name. `listenAddress` defaults to the address HAProxy uses.
  instanceSettings = { base, instance }:
    let addr = instance.listenAddress or instance.host; in
    recursiveUpdate base {
      server = {
        http_listen = hostPort addr instance.httpPort;
        grpc_listen = hostPort addr instance.grpcPort;
        instance_name = instance.name;
      };
    };

  # --- HAProxy ---------------------------------------------------------------

  # haproxy.cfg text for LinkMesh instances. The web/API port (HTTP/1.1 and
  # WebSocket) and the gRPC port (HTTP/2) are load-balanced separately; both
  # follow each instance's `/readyz` on its web port.
  haproxyConfig =
    { instances
    , httpBind ? "*:8080"
    , grpcBind ? "*:4320"
    , tlsCertFile ? null # PEM with cert + key: terminate TLS at HAProxy
    , statsBind ? null # e.g. "127.0.0.1:8404": stats page + /metrics
    , statsSocket ? null # e.g. "/run/haproxy/admin.sock"
    , healthPath ? "/readyz"
    , maxconn ? 20000
    , checkInterval ? "2s"
    , streamTimeout ? "1h" # idle limit for collector streams and WebSockets
    , log ? "stdout format raw local0 info"
    , dnsResolvers ? false # re-resolve instance names at run time (resolv.conf)
    , header ? [ ]
    }:
    let
      errors = validateInstances instances;
      tls = tlsCertFile != null;
      server = i: "server ${i.name} ${hostPort i.host i.httpPort} check";
      grpcServer = i:
        "server ${i.name} ${hostPort i.host i.grpcPort} proto h2 track linkmesh_http/${i.name} on-marked-down shutdown-sessions";
    in
    if errors != [ ] then throw ("linkmesh haproxyConfig: " + concatStringsSep "; " errors)
    else
      lines (
        map (l: if l == "" then "#" else "# " + l)
          ([
            "Generated by nix/lib.nix (haproxyConfig); do not edit by hand."
            "LinkMesh HA: HAProxy fronts the web/API port and the gRPC port (HTTP/2)"
            "of every instance and sends traffic only to instances whose ${healthPath} is 200."
          ] ++ header)
        ++ [ "" "global" ]
        ++ indent ([
          "log ${log}"
          "maxconn ${toString maxconn}"
        ]
        ++ optional (statsSocket != null) "stats socket ${statsSocket} mode 600 level admin"
        ++ optional tls "ssl-default-bind-options ssl-min-ver TLSv1.2")
        ++ [ "" "defaults" ]
        ++ indent [
          "mode http"
          "log global"
          "option httplog"
          "option dontlognull"
          "option redispatch"
          "retries 3"
          "timeout connect 5s"
          "timeout client 60s"
          "timeout server 60s"
          "timeout http-request 10s"
          "timeout http-keep-alive 10s"
          "timeout queue 30s"
          "timeout tunnel ${streamTimeout}"
          "timeout client-fin 10s"
          "timeout server-fin 10s"
          "# Instances may be named by DNS; start even if a name does not resolve yet."
          ("default-server init-addr last,libc,none inter ${checkInterval} fastinter 1s downinter 5s rise 2 fall 2"
          + (if dnsResolvers then " resolvers dns resolve-prefer ipv4" else ""))
        ]
        ++ optionals dnsResolvers ([ "" "# Instance names are looked up again while running (containers come and go)." "resolvers dns" ]
        ++ indent [
          "parse-resolv-conf"
          "resolve_retries 3"
          "timeout resolve 1s"
          "timeout retry 1s"
          "hold valid 10s"
          "hold nx 5s"
        ])
        ++ [ "" "# Web UI, REST API, /metrics, OpAMP over HTTP and WebSocket (/v1/opamp)." "frontend linkmesh_http" ]
        ++ indent ([
          (if tls then "bind ${httpBind} ssl crt ${tlsCertFile} alpn h2,http/1.1" else "bind ${httpBind}")
          "option forwardfor"
          "http-request set-header X-Forwarded-Proto ${if tls then "https" else "http"}"
          "default_backend linkmesh_http"
        ])
        ++ [ "" "backend linkmesh_http" ]
        ++ indent ([
          "balance roundrobin"
          "option httpchk"
          "http-check send meth GET uri ${healthPath}"
          "http-check expect status 200"
        ] ++ map server instances)
        ++ [ "" "# Collector gRPC streams: HTTP/2 end to end (cleartext to the instances)." "frontend linkmesh_grpc" ]
        ++ indent [
          (if tls then "bind ${grpcBind} ssl crt ${tlsCertFile} alpn h2" else "bind ${grpcBind} proto h2")
          "timeout client ${streamTimeout}"
          "default_backend linkmesh_grpc"
        ]
        ++ [ "" "backend linkmesh_grpc" ]
        ++ indent ([
          "# Long-lived streams: spread by connection count. A server follows the"
          "# health of the same instance in linkmesh_http; when it goes down its"
          "# streams are closed so that collectors reconnect to a healthy instance."
          "balance leastconn"
          "timeout server ${streamTimeout}"
        ] ++ map grpcServer instances)
        ++ optionals (statsBind != null) ([ "" "frontend stats" ]
        ++ indent [
          "bind ${statsBind}"
          "http-request use-service prometheus-exporter if { path /metrics }"
          "stats enable"
          "stats uri /"
          "stats refresh 10s"
        ])
      );

  # --- MongoDB replica set ---------------------------------------------------

  # members: "host:port" strings or { host; priority ? ; votes ? ; ... }.
  replSetConfig = { name, members }:
    {
      _id = name;
      members = genList
        (i:
          let m = elemAt members i; in
          { _id = i; } // (if isString m then { host = m; } else m))
        (length members);
    };

  memberHosts = members: map (m: if isString m then m else m.host) members;

  # The application's connection string around its password, so that a unit
  # can write prefix + password + suffix into a root-only file at run time.
  mongoUriParts =
    { user
    , members
    , replicaSet
    , authSource ? "admin"
    , options ? { }
    }:
    let
      opts = { inherit replicaSet authSource; } // options;
      str = v: if builtins.isBool v then (if v then "true" else "false") else toString v;
      query = concatStringsSep "&" (map (k: "${k}=${str opts.${k}}") (attrNames opts));
    in
    {
      prefix = "mongodb://${user}:";
      suffix = "@${concatStringsSep "," (memberHosts members)}/?${query}";
    };

  # mongosh script run once on one member: initiates the replica set, waits
  # until this member is primary, then creates (or updates) the admin user and
  # the LinkMesh user. Idempotent. Passwords are read at run time from the
  # files named by $ADMIN_PASSWORD_FILE and $APP_PASSWORD_FILE.
  mongoInitScript =
    { replSet
    , adminUser ? "admin"
    , appUser ? "linkmesh"
    , appDatabase ? "linkmesh"
    , timeoutSeconds ? 180
    }:
    lines [
      "// Generated by nix/lib.nix (mongoInitScript). Idempotent."
      "const fs = require(\"fs\");"
      "const replSet = ${toJSON replSet};"
      "const adminUser = ${toJSON adminUser};"
      "const appUser = ${toJSON appUser};"
      "const appRoles = [{ role: \"readWrite\", db: ${toJSON appDatabase} }];"
      "const deadline = Date.now() + ${toString timeoutSeconds} * 1000;"
      "const readSecret = (env) => {"
      "  const path = process.env[env];"
      "  if (!path) throw new Error(env + \" is not set\");"
      "  return fs.readFileSync(path, \"utf8\").trim();"
      "};"
      "const admin = db.getSiblingDB(\"admin\");"
      "const hello = () => admin.runCommand({ hello: 1 });"
      "if (!hello().setName) {"
      "  // runCommand returns ok: 0 or throws, depending on the mongosh version."
      "  let res;"
      "  try {"
      "    res = admin.runCommand({ replSetInitiate: replSet });"
      "  } catch (e) {"
      "    res = { ok: 0, code: e.code, errmsg: String(e) };"
      "  }"
      "  if (res.ok === 1) print(\"replica set \" + replSet._id + \" initiated\");"
      "  else if (res.code !== 23) throw new Error(\"replSetInitiate: \" + JSON.stringify(res)); // 23: AlreadyInitialized"
      "}"
      "while (hello().isWritablePrimary !== true) {"
      "  if (Date.now() > deadline) {"
      "    throw new Error(\"this member did not become primary; run the init on the member with the highest priority\");"
      "  }"
      "  sleep(1000);"
      "}"
      "const adminPassword = readSecret(\"ADMIN_PASSWORD_FILE\");"
      "const appPassword = readSecret(\"APP_PASSWORD_FILE\");"
      "let authenticated = false;"
      "try {"
      "  authenticated = admin.auth(adminUser, adminPassword).ok === 1;"
      "} catch (e) {"
      "  authenticated = false;"
      "}"
      "if (!authenticated) {"
      "  // No user yet: the localhost exception allows creating the first one."
      "  admin.createUser({ user: adminUser, pwd: adminPassword, roles: [{ role: \"root\", db: \"admin\" }] });"
      "  admin.auth(adminUser, adminPassword);"
      "  print(\"created user \" + adminUser);"
      "}"
      "if (admin.getUser(appUser) === null) {"
      "  admin.createUser({ user: appUser, pwd: appPassword, roles: appRoles });"
      "  print(\"created user \" + appUser);"
      "} else {"
      "  admin.updateUser(appUser, { pwd: appPassword, roles: appRoles });"
      "}"
      "print(\"replica set \" + replSet._id + \" ready\");"
    ];
in
{
  inherit
    recursiveUpdate setAttrByPath getAttrByPath leafPaths
    hostPort portOf durationSeconds envVarName
    secretKeys secretSettings serverDefaults settingsErrors fileKeyPaths
    mkInstances instanceList instanceAttrs validateInstances instanceSettings
    haproxyConfig
    replSetConfig memberHosts mongoUriParts mongoInitScript;
}
