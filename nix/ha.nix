# NixOS module: LinkMesh in high availability, `services.linkmesh.ha`.
#
# One description of the whole group, imported on every machine of it:
# - `instances`: every LinkMesh instance of the group (name, address, ports);
#   `localInstances` says which of them run on this machine (units
#   `linkmesh-<name>.service`, each built like services.linkmesh).
# - `haproxy`: an HAProxy fronting the web/API port and the gRPC port (HTTP/2)
#   of all instances, health-checking /readyz. Its configuration comes from
#   nix/lib.nix haproxyConfig, the generator of config/haproxy/haproxy.cfg.
# - `mongodb`: a member of the MongoDB replica set (key file auth), and on one
#   machine a one-shot unit that initiates the set and creates the users.
# See docs/deploy-nixos.md.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption types;
  linkmesh = import ./lib.nix;
  service = import ./service.nix { inherit lib pkgs; };
  cfg = config.services.linkmesh.ha;
  db = cfg.mongodb;

  allInstances = linkmesh.instanceList
    (lib.mapAttrs (_: i: { inherit (i) host httpPort grpcPort listenAddress; }) cfg.instances);
  local = lib.filter (i: lib.elem i.name cfg.localInstances) allInstances;

  # The URI file: given directly, or composed at boot from mongodb.appPasswordFile.
  composeUri = cfg.secrets.databaseUriFile == null && db.appPasswordFile != null;
  uriParts = linkmesh.mongoUriParts {
    user = db.appUser;
    inherit (db) members;
    replicaSet = db.replSetName;
    inherit (db) authSource;
    options = db.uriOptions;
  };
  composedUriFile = "/run/linkmesh-ha/database-uri";

  instanceCfg = cfg // {
    secrets = cfg.secrets // lib.optionalAttrs composeUri { databaseUriFile = composedUriFile; };
  };

  built = lib.listToAttrs (map
    (i: {
      name = "linkmesh-${i.name}";
      value = service.mkInstance {
        unitName = "linkmesh-${i.name}";
        cfg = instanceCfg;
        settings = linkmesh.instanceSettings {
          base = linkmesh.recursiveUpdate { storage.backend = "mongodb"; } cfg.settings;
          instance = i // { listenAddress = if i.listenAddress == null then i.host else i.listenAddress; };
        };
      };
    })
    local);

  haproxyText = linkmesh.haproxyConfig {
    instances = allInstances;
    inherit (cfg.haproxy) httpBind grpcBind tlsCertFile statsBind dnsResolvers;
    statsSocket = "/run/haproxy/admin.sock";
    header = [ "" "NixOS: services.linkmesh.ha.haproxy (nix/ha.nix)." ];
  };

  initScript = pkgs.writeText "linkmesh-mongodb-init.js" (linkmesh.mongoInitScript {
    replSet = linkmesh.replSetConfig { name = db.replSetName; inherit (db) members; };
    inherit (db) adminUser appUser;
    appDatabase = cfg.settings.database.name or "linkmesh";
  });

  secretFileOption = what: mkOption {
    type = types.nullOr types.str;
    default = null;
    description = "Absolute path (outside the Nix store, root-only) of a file holding ${what}.";
  };
in
{
  key = "linkmesh/nix/ha.nix";

  imports = [ ./module.nix ];

  options.services.linkmesh.ha = service.instanceOptions
    {
      defaultPackage = config.services.linkmesh.package;
      defaultPackageText = "config.services.linkmesh.package";
    } // {
    enable = mkEnableOption "a highly available LinkMesh group (instances, HAProxy, MongoDB replica set)";

    instances = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          host = mkOption {
            type = types.str;
            description = "Address or DNS name under which HAProxy reaches this instance.";
          };
          httpPort = mkOption { type = types.port; default = 8080; description = "Web/API port."; };
          grpcPort = mkOption { type = types.port; default = 4320; description = "gRPC (collector) port."; };
          listenAddress = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "0.0.0.0";
            description = "IP address the instance binds to; `host` when null (then `host` must be an IP).";
          };
        };
      });
      example = lib.literalExpression ''
        {
          lm1 = { host = "10.0.0.11"; };
          lm2 = { host = "10.0.0.12"; };
          lm3 = { host = "10.0.0.13"; };
        }
      '';
      description = ''
        Every instance of the group, on whichever machine it runs. All machines
        import the same value; see `localInstances`. A list built with
        `(import ./nix/lib.nix).mkInstances` converts with `instanceAttrs`.
      '';
    };

    localInstances = mkOption {
      type = types.listOf types.str;
      default = lib.attrNames cfg.instances;
      defaultText = lib.literalExpression "lib.attrNames config.services.linkmesh.ha.instances";
      example = [ "lm1" ];
      description = "Names of the instances that run on this machine (none on a pure load balancer).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the ports of the local instances (needed when HAProxy runs on another machine).";
    };

    haproxy = {
      enable = mkEnableOption "HAProxy in front of all instances";
      httpBind = mkOption { type = types.str; default = "*:8080"; description = "HAProxy bind of the web/API frontend."; };
      grpcBind = mkOption { type = types.str; default = "*:4320"; description = "HAProxy bind of the gRPC frontend (HTTP/2)."; };
      tlsCertFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "PEM (certificate chain + key) readable by haproxy: terminate TLS at HAProxy on both frontends.";
      };
      statsBind = mkOption {
        type = types.nullOr types.str;
        default = "127.0.0.1:8404";
        description = "Bind of the HAProxy stats page and Prometheus `/metrics`, or null.";
      };
      dnsResolvers = mkOption {
        type = types.bool;
        default = false;
        description = "Re-resolve instance host names at run time through /etc/resolv.conf.";
      };
      openFirewall = mkOption { type = types.bool; default = false; description = "Open the two frontend ports."; };
      configText = mkOption { type = types.str; readOnly = true; description = "The generated haproxy.cfg."; };
    };

    mongodb = {
      enable = mkEnableOption "a MongoDB replica-set member on this machine (services.mongodb)";
      replSetName = mkOption { type = types.str; default = "rs0"; description = "Replica set name."; };
      members = mkOption {
        type = types.listOf (types.either types.str (types.attrsOf types.anything));
        default = [ ];
        example = [ "lm1:27017" { host = "lm2:27017"; priority = 0.5; } "lm3:27017" ];
        description = ''
          All members of the set, as "host:port" or a member document
          (`{ host; priority; votes; hidden; ... }`). Used for the set's
          configuration and for the connection string of the instances.
        '';
      };
      port = mkOption { type = types.port; default = 27017; description = "Port of the local mongod."; };
      bindIp = mkOption {
        type = types.str;
        default = "0.0.0.0";
        description = "Addresses the local mongod listens on (other members and instances must reach it).";
      };
      keyFile = secretFileOption "the replica-set key (`openssl rand -base64 756`)";
      openFirewall = mkOption { type = types.bool; default = false; description = "Open the mongod port."; };

      adminUser = mkOption { type = types.str; default = "admin"; description = "Administrator created by the init unit."; };
      adminPasswordFile = secretFileOption "the MongoDB administrator's password (init machine only)";
      appUser = mkOption { type = types.str; default = "linkmesh"; description = "MongoDB user of the LinkMesh instances."; };
      appPasswordFile = secretFileOption ''
        the LinkMesh MongoDB user's password (characters A-Z a-z 0-9 . _ ~ -,
        e.g. `openssl rand -hex 32`). Used by the init unit, and to compose the
        instances' connection string unless `secrets.databaseUriFile` is set
      '';
      authSource = mkOption { type = types.str; default = "admin"; description = "Database holding the users."; };
      uriOptions = mkOption {
        type = types.attrsOf (types.oneOf [ types.str types.int types.bool ]);
        default = { };
        example = { tls = true; w = "majority"; };
        description = "Extra connection string options.";
      };

      initiate = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Run `linkmesh-mongodb-init.service` here: initiate the set, wait
          until this member is primary, create the admin and LinkMesh users
          (localhost exception), idempotently. Enable on exactly one member,
          preferably the one with the highest priority.
        '';
      };
      shellPackage = mkOption {
        type = types.package;
        default = pkgs.mongosh;
        defaultText = lib.literalExpression "pkgs.mongosh";
        description = "mongosh, used by the init unit.";
      };
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      assertions =
        map (message: { assertion = false; inherit message; })
          (linkmesh.validateInstances allInstances
          ++ lib.concatMap (b: b.errors) (lib.attrValues built)
          ++ map (n: "services.linkmesh.ha.localInstances: '${n}' is not in instances")
            (lib.filter (n: !(cfg.instances ? ${n})) cfg.localInstances))
        ++ [
          {
            assertion = local == [ ] || cfg.secrets.databaseUriFile != null || db.appPasswordFile != null;
            message = "services.linkmesh.ha: set secrets.databaseUriFile or mongodb.appPasswordFile (instances need the MongoDB connection string)";
          }
        ];

      services.linkmesh.ha.haproxy.configText = haproxyText;

      systemd.services = lib.mapAttrs
        (_: b: lib.mkMerge [
          b.service
          (lib.mkIf composeUri {
            after = [ "linkmesh-ha-database-uri.service" ];
            requires = [ "linkmesh-ha-database-uri.service" ];
          })
          (lib.mkIf (db.enable && db.initiate) {
            after = [ "linkmesh-mongodb-init.service" ];
            wants = [ "linkmesh-mongodb-init.service" ];
          })
        ])
        built;

      networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall
        (lib.unique (lib.concatMap (b: b.ports) (lib.attrValues built)));

      environment.systemPackages = lib.mkIf (local != [ ]) [ cfg.package ];
    }

    (lib.mkIf (composeUri && local != [ ]) {
      # Writes prefix + password + suffix into a root-only runtime file, which
      # every local instance receives through LoadCredential.
      systemd.services.linkmesh-ha-database-uri = {
        description = "Compose the MongoDB connection string of the LinkMesh instances";
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          RuntimeDirectory = "linkmesh-ha";
          RuntimeDirectoryMode = "0700";
          UMask = "0077";
          LoadCredential = [ "app-password:${db.appPasswordFile}" ];
        };
        script = ''
          pw=$(cat "$CREDENTIALS_DIRECTORY/app-password")
          case "$pw" in
            "" | *[!A-Za-z0-9._~-]*)
              echo "mongodb.appPasswordFile: use only A-Z a-z 0-9 . _ ~ - (e.g. openssl rand -hex 32)" >&2
              exit 1 ;;
          esac
          printf '%s%s%s' ${lib.escapeShellArg uriParts.prefix} "$pw" ${lib.escapeShellArg uriParts.suffix} \
            > ${composedUriFile}
        '';
      };
    })

    (lib.mkIf cfg.haproxy.enable {
      services.haproxy = {
        enable = true;
        config = haproxyText;
      };
      networking.firewall.allowedTCPPorts = lib.mkIf cfg.haproxy.openFirewall
        (map linkmesh.portOf [ cfg.haproxy.httpBind cfg.haproxy.grpcBind ]);
    })

    (lib.mkIf db.enable {
      assertions = [
        { assertion = db.keyFile != null; message = "services.linkmesh.ha.mongodb.keyFile is required"; }
        { assertion = db.members != [ ]; message = "services.linkmesh.ha.mongodb.members is empty"; }
      ];

      # mongodb-ce is unfree (SSPL): allow it, or choose another package.
      services.mongodb = {
        enable = true;
        package = lib.mkDefault pkgs.mongodb-ce;
        inherit (db) replSetName;
        bind_ip = db.bindIp;
        extraConfig = ''
          net.port: ${toString db.port}
          security.keyFile: /run/linkmesh-mongodb/keyfile
        '';
      };

      # mongod insists on a key file readable by its user only.
      systemd.services.linkmesh-mongodb-keyfile = {
        description = "Install the MongoDB replica-set key file";
        before = [ "mongodb.service" ];
        requiredBy = [ "mongodb.service" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          RuntimeDirectory = "linkmesh-mongodb";
          RuntimeDirectoryMode = "0700";
        };
        script = ''
          install -m 0400 -o ${config.services.mongodb.user} ${lib.escapeShellArg db.keyFile} /run/linkmesh-mongodb/keyfile
          chown ${config.services.mongodb.user} /run/linkmesh-mongodb
        '';
      };

      networking.firewall.allowedTCPPorts = lib.mkIf db.openFirewall [ db.port ];
    })

    (lib.mkIf (db.enable && db.initiate) {
      assertions = [{
        assertion = db.adminPasswordFile != null && db.appPasswordFile != null;
        message = "services.linkmesh.ha.mongodb.initiate needs adminPasswordFile and appPasswordFile";
      }];

      systemd.services.linkmesh-mongodb-init = {
        description = "Initiate the MongoDB replica set and create the LinkMesh user";
        wantedBy = [ "multi-user.target" ];
        after = [ "mongodb.service" ];
        requires = [ "mongodb.service" ];
        path = [ db.shellPackage ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          DynamicUser = true;
          PrivateTmp = true;
          LoadCredential = [
            "admin-password:${db.adminPasswordFile}"
            "app-password:${db.appPasswordFile}"
          ];
        };
        script = ''
          export HOME=$(mktemp -d)
          export ADMIN_PASSWORD_FILE="$CREDENTIALS_DIRECTORY/admin-password"
          export APP_PASSWORD_FILE="$CREDENTIALS_DIRECTORY/app-password"
          url="mongodb://127.0.0.1:${toString db.port}/admin?directConnection=true"
          for _ in $(seq 1 90); do
            if mongosh --quiet --norc "$url" --eval 'db.runCommand({ ping: 1 }).ok' >/dev/null 2>&1; then break; fi
            sleep 2
          done
          mongosh --quiet --norc "$url" ${initScript}
        '';
      };
    })
  ]);
}
