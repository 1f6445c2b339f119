{
  description = "LinkMesh: control plane for fleets of telemetry collectors";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      # builtins only, so that `lib` and the module list evaluate without nixpkgs.
      forAllSystems = f: builtins.listToAttrs
        (map (system: { name = system; value = f system; }) systems);
      pkgsFor = system: import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
        # The VM test's replica set uses mongodb-ce (SSPL).
        config.allowUnfreePredicate = pkg: builtins.elem (nixpkgs.lib.getName pkg) [ "mongodb-ce" ];
      };
    in
    {
      # Pure helpers (no nixpkgs): haproxy.cfg, instance lists, replica set.
      lib = import ./nix/lib.nix;

      overlays.default = final: _prev: {
        linkmesh = final.callPackage ./nix/package.nix { };
      };

      packages = forAllSystems (system:
        let pkgs = pkgsFor system; in {
          default = pkgs.linkmesh;
          inherit (pkgs) linkmesh;
          image = pkgs.callPackage ./nix/image.nix { };
        });

      nixosModules = {
        default = import ./nix/module.nix;
        ha = import ./nix/ha.nix;
      };

      checks = forAllSystems (system:
        let pkgs = pkgsFor system; in {
          package = pkgs.linkmesh;
          lib = pkgs.runCommand "linkmesh-nix-lib-test"
            { result = builtins.toJSON (import ./nix/tests/lib-test.nix); }
            ''echo "$result" > $out'';
          haproxy-config = pkgs.runCommand "linkmesh-haproxy-config"
            { nativeBuildInputs = [ pkgs.haproxy ]; }
            ''
              haproxy -c -f ${pkgs.writeText "haproxy.cfg" (import ./nix/generated.nix).haproxy}
              diff -u ${./config/haproxy/haproxy.cfg} ${pkgs.writeText "haproxy.cfg" (import ./nix/generated.nix).haproxy}
              touch $out
            '';
          mongodb-init = pkgs.runCommand "linkmesh-mongodb-init-test"
            { nativeBuildInputs = [ pkgs.nodejs ]; }
            ''
              node ${./nix/tests/mongodb-init-test.js} ${pkgs.writeText "mongodb-init.js" (import ./nix/generated.nix).mongodbInit}
              touch $out
            '';
          ha = pkgs.testers.runNixOSTest (import ./nix/tests/ha.nix {
            haModule = self.nixosModules.ha;
          });
        });

      formatter = forAllSystems (system: (pkgsFor system).nixpkgs-fmt);
    };
}
