# Pure tests of nix/lib.nix, no nixpkgs needed:
#   nix-instantiate --eval --strict nix/tests/lib-test.nix
# Evaluates to { passed = <n>; } or fails with the list of failing tests.
let
  l = import ../lib.nix;
  inherit (builtins) attrNames filter length elem concatStringsSep toJSON;

  linesOf = text: filter builtins.isString (builtins.split "\n" text);
  hasLine = line: text: elem line (linesOf text);
  throws = expr: !(builtins.tryEval expr).success;

  three = l.mkInstances { };
  cfg3 = l.haproxyConfig { instances = three; };
  cfgTls = l.haproxyConfig {
    instances = l.mkInstances { hosts = [ "10.0.0.11" "fd00::12" ]; httpPort = 8080; grpcPort = 4320; };
    httpBind = "[::]:443";
    tlsCertFile = "/etc/haproxy/linkmesh.pem";
    statsBind = "127.0.0.1:8404";
    statsSocket = "/run/haproxy/admin.sock";
  };
  cfgDns = l.haproxyConfig { instances = three; dnsResolvers = true; };

  tests = {
    mkInstancesOneHost = {
      expr = three;
      expected = [
        { name = "linkmesh-1"; host = "127.0.0.1"; httpPort = 8081; grpcPort = 4321; }
        { name = "linkmesh-2"; host = "127.0.0.1"; httpPort = 8082; grpcPort = 4322; }
        { name = "linkmesh-3"; host = "127.0.0.1"; httpPort = 8083; grpcPort = 4323; }
      ];
    };
    mkInstancesHosts = {
      expr = l.mkInstances { hosts = [ "a.internal" "b.internal" ]; prefix = "lm"; httpPort = 8080; grpcPort = 4320; };
      expected = [
        { name = "lm1"; host = "a.internal"; httpPort = 8080; grpcPort = 4320; }
        { name = "lm2"; host = "b.internal"; httpPort = 8080; grpcPort = 4320; }
      ];
    };
    instanceListSortedByName = {
      expr = map (i: i.name) (l.instanceList { c = { host = "h"; }; a = { host = "h"; }; b = { host = "h"; }; });
      expected = [ "a" "b" "c" ];
    };
    instanceAttrsRoundTrip = {
      expr = l.instanceList (l.instanceAttrs three);
      expected = three;
    };
    validateInstancesClean = {
      expr = l.validateInstances three;
      expected = [ ];
    };
    validateInstancesErrors = {
      expr = l.validateInstances [
        { name = "a"; host = "h"; httpPort = 8080; grpcPort = 4320; }
        { name = "a"; host = "h"; httpPort = 8080; grpcPort = 70000; }
        { name = "b c"; host = "h"; httpPort = 8081; grpcPort = 4321; }
      ];
      expected = [
        "instance name 'a' is used more than once"
        "instance name 'b c' must match [A-Za-z0-9][A-Za-z0-9_.-]*"
        "port 70000 is out of range"
        "address h:8080 is used by more than one listener"
      ];
    };
    validateInstancesEmpty = {
      expr = l.validateInstances [ ];
      expected = [ "at least one instance is needed" ];
    };
    instanceSettings = {
      expr = l.instanceSettings {
        base = { server.public_url = "https://lm.example"; storage.backend = "mongodb"; };
        instance = { name = "lm2"; host = "10.0.0.12"; listenAddress = "0.0.0.0"; httpPort = 8080; grpcPort = 4320; };
      };
      expected = {
        server = {
          public_url = "https://lm.example";
          http_listen = "0.0.0.0:8080";
          grpc_listen = "0.0.0.0:4320";
          instance_name = "lm2";
        };
        storage.backend = "mongodb";
      };
    };
    instanceSettingsListenDefaultsToHost = {
      expr = (l.instanceSettings { base = { }; instance = { name = "x"; host = "::1"; httpPort = 1; grpcPort = 2; }; }).server.grpc_listen;
      expected = "[::1]:2";
    };
    recursiveUpdate = {
      expr = l.recursiveUpdate { a = { b = 1; c = 2; }; d = [ 1 ]; } { a.c = 3; d = [ 2 ]; e = 4; };
      expected = { a = { b = 1; c = 3; }; d = [ 2 ]; e = 4; };
    };
    hostPort = {
      expr = [ (l.hostPort "10.0.0.1" 80) (l.hostPort "::" 8080) (l.hostPort "[::1]" 1) (l.hostPort "lm1" 2) ];
      expected = [ "10.0.0.1:80" "[::]:8080" "[::1]:1" "lm1:2" ];
    };
    portOf = {
      expr = map l.portOf [ "0.0.0.0:8080" "[::]:4320" "*:443" "127.0.0.1:1" ];
      expected = [ 8080 4320 443 1 ];
    };
    portOfRejectsNoPort = {
      expr = throws (l.portOf "localhost");
      expected = true;
    };
    durationSeconds = {
      expr = map l.durationSeconds [ "10s" "1m 30s" "500ms" "2h" "1min" "1s 1ms" ];
      expected = [ 10 90 1 7200 60 2 ];
    };
    durationSecondsRejects = {
      expr = map (d: throws (l.durationSeconds d)) [ "" "10" "3 parsecs" ];
      expected = [ true true true ];
    };
    envVarName = {
      expr = map l.envVarName [ [ "storage" "embedded" "path" ] [ "auth" "bootstrap_admin_password_file" ] ];
      expected = [ "LINKMESH_STORAGE__EMBEDDED__PATH" "LINKMESH_AUTH__BOOTSTRAP_ADMIN_PASSWORD_FILE" ];
    };
    secretSettings = {
      expr = l.secretSettings {
        unitName = "linkmesh-a";
        secrets = {
          bootstrapAdminPasswordFile = "/run/secrets/admin";
          databaseUriFile = "/run/secrets/db";
          configStoreCredentialsFile = null;
          tlsKeyFile = null;
        };
      };
      expected = {
        settings = {
          auth.bootstrap_admin_password_file = "/run/credentials/linkmesh-a.service/bootstrap-admin-password";
          database.uri_file = "/run/credentials/linkmesh-a.service/database-uri";
        };
        loadCredentials = [
          "bootstrap-admin-password:/run/secrets/admin"
          "database-uri:/run/secrets/db"
        ];
      };
    };
    serverDefaultsEmbedded = {
      expr = l.serverDefaults { stateDir = "/var/lib/linkmesh"; backend = "embedded"; };
      expected = {
        server.shutdown_grace = "10s";
        telemetry.log_format = "json";
        storage = { backend = "embedded"; embedded.path = "/var/lib/linkmesh/linkmesh.redb"; };
      };
    };
    serverDefaultsMongodbHasNoEmbeddedSection = {
      expr = (l.serverDefaults { stateDir = "/x"; backend = "mongodb"; }) ? storage;
      expected = false;
    };
    settingsErrorsClean = {
      expr = l.settingsErrors {
        settings = {
          server.http_listen = "127.0.0.1:8080";
          storage.backend = "mongodb";
          database.uri_file = "/run/credentials/linkmesh.service/database-uri";
          auth.bootstrap_admin_password_file = "/run/keys/admin";
        };
      };
      expected = [ ];
    };
    settingsErrors = {
      expr = l.settingsErrors {
        settings = {
          storage.backend = "mongodb";
          auth = { bootstrap_admin_password = "hunter2"; bootstrap_admin_password_file = "/run/keys/a"; };
          tls.key_file = "/nix/store/abc-key.pem";
        };
      };
      expected = [
        "settings.auth.bootstrap_admin_password would put a secret into the world-readable Nix store; use the matching secrets.* file option instead"
        "settings.auth.bootstrap_admin_password_file and its inline form are both set; set only one"
        "settings.tls.key_file points into the Nix store (/nix/store/abc-key.pem); secrets must stay outside it"
        "storage.backend = \"mongodb\" needs database.uri_file (secrets.databaseUriFile)"
      ];
    };
    fileKeyPaths = {
      expr = l.fileKeyPaths { tls = { cert_file = "/a"; key_file = "/b"; }; server.http_listen = "x"; database.uri_file = "/c"; };
      expected = [ [ "database" "uri_file" ] [ "tls" "cert_file" ] [ "tls" "key_file" ] ];
    };

    haproxyHttpServers = {
      expr = map (line: hasLine line cfg3) [
        "    bind *:8080"
        "    http-check send meth GET uri /readyz"
        "    http-check expect status 200"
        "    server linkmesh-1 127.0.0.1:8081 check"
        "    server linkmesh-3 127.0.0.1:8083 check"
      ];
      expected = [ true true true true true ];
    };
    haproxyGrpcOverHttp2 = {
      expr = map (line: hasLine line cfg3) [
        "    bind *:4320 proto h2"
        "    server linkmesh-2 127.0.0.1:4322 proto h2 track linkmesh_http/linkmesh-2 on-marked-down shutdown-sessions"
        "    balance leastconn"
      ];
      expected = [ true true true ];
    };
    haproxyNoOptionalSections = {
      expr = map (line: hasLine line cfg3) [ "frontend stats" "resolvers dns" ];
      expected = [ false false ];
    };
    haproxyTls = {
      expr = map (line: hasLine line cfgTls) [
        "    bind [::]:443 ssl crt /etc/haproxy/linkmesh.pem alpn h2,http/1.1"
        "    bind *:4320 ssl crt /etc/haproxy/linkmesh.pem alpn h2"
        "    http-request set-header X-Forwarded-Proto https"
        "    server linkmesh-2 [fd00::12]:8080 check"
        "    stats socket /run/haproxy/admin.sock mode 600 level admin"
        "    bind 127.0.0.1:8404"
        "    http-request use-service prometheus-exporter if { path /metrics }"
      ];
      expected = [ true true true true true true true ];
    };
    haproxyDns = {
      expr = map (line: hasLine line cfgDns) [ "resolvers dns" "    parse-resolv-conf" ];
      expected = [ true true ];
    };
    haproxyRejectsBadInstances = {
      expr = throws (l.haproxyConfig { instances = [ ]; });
      expected = true;
    };
    haproxyDeterministic = {
      expr = l.haproxyConfig { instances = l.instanceList (l.instanceAttrs three); } == cfg3;
      expected = true;
    };

    replSetConfig = {
      expr = toJSON (l.replSetConfig { name = "rs0"; members = [ "lm1:27017" { host = "lm2:27017"; priority = 0; votes = 0; } ]; });
      expected = ''{"_id":"rs0","members":[{"_id":0,"host":"lm1:27017"},{"_id":1,"host":"lm2:27017","priority":0,"votes":0}]}'';
    };
    mongoUriParts = {
      expr = l.mongoUriParts { user = "linkmesh"; members = [ "lm1:27017" { host = "lm2:27017"; } ]; replicaSet = "rs0"; options = { tls = true; w = "majority"; maxPoolSize = 50; }; };
      expected = {
        prefix = "mongodb://linkmesh:";
        suffix = "@lm1:27017,lm2:27017/?authSource=admin&maxPoolSize=50&replicaSet=rs0&tls=true&w=majority";
      };
    };
    mongoInitScript = {
      expr =
        let s = l.mongoInitScript { replSet = l.replSetConfig { name = "rs9"; members = [ "a:1" ]; }; appDatabase = "lmdb"; }; in
        map (line: hasLine line s) [
          ''const replSet = {"_id":"rs9","members":[{"_id":0,"host":"a:1"}]};''
          ''const appRoles = [{ role: "readWrite", db: "lmdb" }];''
          ''const appUser = "linkmesh";''
        ];
      expected = [ true true true ];
    };
  };

  failures = filter (n: tests.${n}.expr != tests.${n}.expected) (attrNames tests);
  report = n: "${n}:\n  expected ${toJSON tests.${n}.expected}\n  got      ${toJSON tests.${n}.expr}";
in
if failures == [ ]
then { passed = length (attrNames tests); }
else throw ("nix/lib.nix tests failed:\n" + concatStringsSep "\n" (map report failures))
