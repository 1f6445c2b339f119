# NixOS module: one LinkMesh instance, `services.linkmesh`.
#
# The `settings` are rendered to the server TOML (the keys of
# `linkmesh check-config`), checked at build time, and run by a hardened
# systemd unit with a dynamic user. Secrets are file paths outside the store.
# See docs/deploy-nixos.md; nixosModules.ha (ha.nix) builds on the same pieces.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.linkmesh;
  service = import ./service.nix { inherit lib pkgs; };
  instance = service.mkInstance { unitName = "linkmesh"; inherit cfg; };
in
{
  # Lets nixosModules.default and nixosModules.ha (which imports this file) be
  # imported together: the module system keeps one copy per key.
  key = "linkmesh/nix/module.nix";

  options.services.linkmesh = service.instanceOptions
    {
      defaultPackage = pkgs.callPackage ./package.nix { };
      defaultPackageText = "pkgs.callPackage ./nix/package.nix { }";
    } // {
    enable = lib.mkEnableOption "LinkMesh, the control plane for fleets of telemetry collectors";

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the web/API and gRPC ports (from `server.http_listen` and `server.grpc_listen`) in the firewall.";
    };

    configFile = lib.mkOption {
      type = lib.types.path;
      readOnly = true;
      description = "The generated (and checked) server TOML.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = map (message: { assertion = false; inherit message; }) instance.errors;

    services.linkmesh.configFile = instance.configFile;

    systemd.services.linkmesh = instance.service;

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall instance.ports;

    environment.systemPackages = [ cfg.package ];
  };
}
