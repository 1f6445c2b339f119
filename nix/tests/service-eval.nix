# nix/service.nix (the instance builder behind services.linkmesh and
# services.linkmesh.ha) evaluated WITHOUT nixpkgs: `lib` and `pkgs` are small
# builtins-only stand-ins for the few functions it calls, and a minimal TOML
# writer replaces pkgs.formats.toml. This is not a NixOS evaluation; it lets
# nix/check.sh run the real `linkmesh check-config` on the TOML the modules
# would write, with the same placeholder environment as the build-time check.
#
#   nix eval --raw -f nix/tests/service-eval.nix <case>.toml    the server TOML
#   nix eval --raw -f nix/tests/service-eval.nix <case>.check   the check script
#   nix-instantiate --eval --strict nix/tests/service-eval.nix -A summary
let
  inherit (builtins)
    attrNames concatStringsSep filter isAttrs isBool isInt isList isString map toJSON;
  l = import ../lib.nix;

  # --- stand-ins ---------------------------------------------------------------
  stubLib = {
    inherit attrNames concatStringsSep filter;
    any = builtins.any;
    attrValues = set: map (n: set.${n}) (attrNames set);
    concatMapStrings = f: list: concatStringsSep "" (map f list);
    escapeShellArg = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    last = list: builtins.elemAt list (builtins.length list - 1);
    mapAttrsToList = f: set: map (n: f n set.${n}) (attrNames set);
  };

  # TOML for nested attribute sets of strings, booleans, integers and lists.
  toToml = set:
    let
      scalar = v:
        if isString v || isInt v || isBool v then toJSON v
        else if isList v then "[" + concatStringsSep ", " (map scalar v) + "]"
        else throw "toToml: unsupported value";
      table = prefix: s:
        let
          leaves = filter (n: !(isAttrs s.${n})) (attrNames s);
          subs = filter (n: isAttrs s.${n}) (attrNames s);
          header = if prefix == "" then "" else "[${prefix}]\n";
        in
        (if leaves == [ ] && prefix != "" then ""
        else header + concatStringsSep "" (map (n: "${n} = ${scalar s.${n}}\n") leaves) + "\n")
        + concatStringsSep "" (map (n: table (if prefix == "" then n else "${prefix}.${n}") s.${n}) subs);
    in
    table "" set;

  stubPkgs = {
    formats.toml = _: {
      type = null;
      generate = _: value: { outPath = "@CONFIG@"; toml = toToml value; };
    };
    runCommand = _: _: script: { outPath = "@CHECKED@"; inherit script; };
  };

  service = import ../service.nix { lib = stubLib; pkgs = stubPkgs; };

  # Default values of instanceOptions, as the module system would give them.
  defaults = {
    package = { outPath = "/nix/store/00000000000000000000000000000000-linkmesh-0.1.0"; };
    settings = { };
    secrets = { bootstrapAdminPasswordFile = null; databaseUriFile = null; configStoreCredentialsFile = null; tlsKeyFile = null; };
    credentials = { };
    environment = { };
    environmentFiles = [ ];
    checkConfig = true;
    openFilesLimit = 65536;
  };

  mk = unitName: cfg: settings:
    let i = service.mkInstance { inherit unitName settings; cfg = defaults // cfg; }; in
    i // {
      toml = (service.format.generate unitName i.settings).toml;
      check = i.configFile.script;
    };

  cases = {
    # services.linkmesh with a bootstrap password file.
    single = mk "linkmesh"
      { secrets = defaults.secrets // { bootstrapAdminPasswordFile = "/run/secrets/linkmesh-admin"; }; }
      { server.public_url = "https://linkmesh.example.org"; telemetry.log_level = "info"; };

    # One instance of services.linkmesh.ha (MongoDB, listening on all addresses).
    ha = mk "linkmesh-lm2"
      {
        secrets = defaults.secrets // {
          bootstrapAdminPasswordFile = "/run/secrets/linkmesh-admin";
          databaseUriFile = "/run/linkmesh-ha/database-uri";
        };
      }
      (l.instanceSettings {
        base = { storage.backend = "mongodb"; server.allow_insecure_http = true; database.name = "linkmesh"; };
        instance = { name = "lm2"; host = "10.0.0.12"; listenAddress = "0.0.0.0"; httpPort = 8080; grpcPort = 4320; };
      });

    # TLS on the instance: certificate by path, key as a secret.
    tls = mk "linkmesh"
      { secrets = defaults.secrets // { tlsKeyFile = "/var/lib/acme/lm/key.pem"; }; }
      { server.http_listen = "0.0.0.0:443"; tls.cert_file = "/var/lib/acme/lm/cert.pem"; };

    # Must be rejected by check-config: plain HTTP on all addresses.
    insecure = mk "linkmesh" { } { server.http_listen = "0.0.0.0:8080"; };
  };

  unit = cases.ha.service.serviceConfig;
in
cases // {
  summary = {
    errors = map (n: cases.${n}.errors) (attrNames cases);
    badSettingsErrors = (mk "linkmesh" { } { auth.bootstrap_admin_password = "inline-secret-123"; }).errors;
    storeSecretErrors = (mk "linkmesh" { secrets = defaults.secrets // { tlsKeyFile = "/nix/store/x-key.pem"; }; } { }).errors;
    haPorts = cases.ha.ports;
    tlsPrivileged = cases.tls.service.serviceConfig.AmbientCapabilities;
    haUnit = {
      inherit (unit) DynamicUser StateDirectory ProtectSystem TimeoutStopSec LoadCredential PrivateUsers ExecStart;
    };
    embeddedPath = cases.single.settings.storage.embedded.path;
  };
}
