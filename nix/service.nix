# One LinkMesh instance as NixOS pieces: the option set shared by
# `services.linkmesh` (module.nix) and `services.linkmesh.ha` (ha.nix), the
# server TOML checked with `linkmesh check-config` at build time, and the
# hardened systemd service that runs it.
{ lib, pkgs }:
let
  inherit (lib) mkOption types;
  linkmesh = import ./lib.nix;
  format = pkgs.formats.toml { };

  # Content the build-time check uses for a `*_file` key (the real files exist
  # only on the target machine, at run time).
  placeholderFor = path:
    if lib.last path == "uri_file"
    then "mongodb://check-config.invalid:27017/?replicaSet=rs0"
    else "placeholder-for-linkmesh-check-config";

  secretOption = what: mkOption {
    type = types.nullOr types.str;
    default = null;
    example = "/run/secrets/linkmesh/${what}";
    description = ''
      Absolute path of a file holding the ${what}, outside the Nix store
      (e.g. managed by agenix or sops-nix, readable by root only). It is handed
      to the service with systemd `LoadCredential`, and the server TOML names
      the credential path, never the secret.
    '';
  };
in
{
  inherit format;

  # Options of one instance (or of every instance of an HA group).
  instanceOptions = { defaultPackage, defaultPackageText }: {
    package = mkOption {
      type = types.package;
      default = defaultPackage;
      defaultText = lib.literalExpression defaultPackageText;
      description = "The linkmesh package.";
    };

    settings = mkOption {
      inherit (format) type;
      default = { };
      example = lib.literalExpression ''
        {
          server.public_url = "https://linkmesh.example.org";
          config_store = { url = "https://git.example.org/ops/fleet-config.git"; branch = "main"; poll_interval = "30s"; };
          telemetry.log_level = "info";
        }
      '';
      description = ''
        Server configuration, rendered to the TOML file read by
        `linkmesh serve --config` (same keys as `linkmesh check-config`:
        `server`, `tls`, `storage`, `database`, `config_store`, `auth`,
        `telemetry`). Secrets do not belong here: use the `secrets` options,
        which become `*_file` keys. The module adds `storage.embedded.path`
        in the state directory (embedded backend) and `telemetry.log_format =
        "json"` unless set.
      '';
    };

    secrets = {
      bootstrapAdminPasswordFile = secretOption "bootstrap admin password";
      databaseUriFile = secretOption "MongoDB connection string (with credentials)";
      configStoreCredentialsFile = secretOption "config repository credentials";
      tlsKeyFile = secretOption "TLS private key (PEM)";
    };

    credentials = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { "tls-cert" = "/var/lib/acme/linkmesh.example.org/fullchain.pem"; };
      description = ''
        More files passed with systemd `LoadCredential` (id -> path), for
        files the service user could not read otherwise. Refer to them in
        `settings` as `/run/credentials/<unit>.service/<id>`.
      '';
    };

    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { LINKMESH_TELEMETRY__LOG_LEVEL = "debug"; };
      description = "Environment of the service (e.g. `LINKMESH_<SECTION>__<KEY>` overrides).";
    };

    environmentFiles = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Environment files (outside the store) loaded by systemd, e.g. for secret env overrides.";
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run `linkmesh check-config` on the generated file at build time.
        `*_file` keys are pointed at placeholders during the check, since the
        real files only exist on the target machine.
      '';
    };

    openFilesLimit = mkOption {
      type = types.ints.positive;
      default = 65536;
      description = "LimitNOFILE of the service: every connected collector holds a socket.";
    };
  };

  # -> { settings; configFile; service; ports; errors; }
  mkInstance =
    { unitName
    , cfg # values of instanceOptions
    , settings ? cfg.settings # settings before defaults and secrets
    }:
    let
      stateDir = "/var/lib/${unitName}";
      secret = linkmesh.secretSettings { inherit unitName; inherit (cfg) secrets; };
      withSecrets = linkmesh.recursiveUpdate settings secret.settings;
      finalSettings = linkmesh.recursiveUpdate
        (linkmesh.serverDefaults {
          inherit stateDir;
          backend = withSecrets.storage.backend or "embedded";
        })
        withSecrets;

      rawFile = format.generate "${unitName}.toml" finalSettings;
      fileKeys = linkmesh.fileKeyPaths finalSettings;
      checkedFile = pkgs.runCommand "${unitName}.toml"
        {
          nativeBuildInputs = [ cfg.package ];
          preferLocalBuild = true;
        }
        ''
          mkdir placeholders
          ${lib.concatMapStrings (p: ''
            printf '%s' ${lib.escapeShellArg (placeholderFor p)} > placeholders/${lib.concatStringsSep "." p}
            export ${linkmesh.envVarName p}="$PWD/placeholders/${lib.concatStringsSep "." p}"
          '') fileKeys}
          linkmesh check-config ${rawFile}
          cp ${rawFile} $out
        '';
      configFile = if cfg.checkConfig then checkedFile else rawFile;

      server = finalSettings.server or { };
      ports = [
        (linkmesh.portOf (server.http_listen or "127.0.0.1:8080"))
        (linkmesh.portOf (server.grpc_listen or "127.0.0.1:4320"))
      ];
      privileged = lib.any (p: p < 1024) ports;
      grace = linkmesh.durationSeconds (server.shutdown_grace or "10s");

      secretPaths = lib.filter (p: p != null) (lib.attrValues cfg.secrets);
      secretKeyClashes = lib.filter
        (n: cfg.secrets.${n} != null && linkmesh.getAttrByPath linkmesh.secretKeys.${n}.path null settings != null)
        (lib.attrNames linkmesh.secretKeys);
    in
    {
      settings = finalSettings;
      inherit configFile ports;

      errors =
        map (e: "${unitName}: ${e}") (linkmesh.settingsErrors { settings = finalSettings; })
        ++ map (p: "${unitName}: secret file ${p} must be an absolute path outside the Nix store")
          (lib.filter (p: !(lib.hasPrefix "/" p) || lib.hasPrefix builtins.storeDir p) secretPaths)
        ++ map (n: "${unitName}: secrets.${n} and settings.${lib.concatStringsSep "." linkmesh.secretKeys.${n}.path} are both set")
          secretKeyClashes;

      # Callers add ordering (after/requires) with lib.mkMerge.
      service = {
        description = "LinkMesh control plane (${unitName})";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        inherit (cfg) environment;
        restartTriggers = [ configFile ];
        # Keep retrying (e.g. while the database is unreachable) instead of
        # giving up after systemd's default 5 starts in 10 s.
        startLimitIntervalSec = 0;
        serviceConfig = {
          Type = "exec";
          ExecStart = "${cfg.package}/bin/linkmesh serve --config ${configFile}";
          Restart = "on-failure";
          RestartSec = "5s";
          # SIGTERM starts a graceful shutdown bounded by server.shutdown_grace.
          KillSignal = "SIGTERM";
          TimeoutStopSec = grace + 5;

          DynamicUser = true;
          StateDirectory = unitName;
          StateDirectoryMode = "0700";
          WorkingDirectory = stateDir;
          LoadCredential = secret.loadCredentials
            ++ lib.mapAttrsToList (id: path: "${id}:${path}") cfg.credentials;
          EnvironmentFile = cfg.environmentFiles;
          LimitNOFILE = cfg.openFilesLimit;
          UMask = "0077";

          CapabilityBoundingSet = if privileged then [ "CAP_NET_BIND_SERVICE" ] else "";
          AmbientCapabilities = if privileged then [ "CAP_NET_BIND_SERVICE" ] else "";
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          PrivateUsers = !privileged;
          DevicePolicy = "closed";
          ProtectHostname = true;
          ProtectClock = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectProc = "invisible";
          ProcSubset = "pid";
          RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          RemoveIPC = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          SystemCallFilter = [ "@system-service" "~@privileged" ];
          SystemCallErrorNumber = "EPERM";
        };
      };
    };
}
