# The volmgr CSI plugin on every client node: one monolith task serves the
# Controller and Node services (a volume lives on the node that made it).
# The agent's state (journal) stays on the host under /var/lib/volmgr.
job "volmgr-csi" {
  type = "system"

  group "plugin" {
    task "volmgr" {
      driver = "docker"

      config {
        image      = "volmgr:latest"
        privileged = true
        args = [
          "serve",
          "--state-dir=/var/lib/volmgr",
          "--csi-endpoint=unix:///csi/csi.sock",
          "--node-id=${node.unique.name}",
        ]
        mount {
          type   = "bind"
          source = "/var/lib/volmgr"
          target = "/var/lib/volmgr"
        }
      }

      csi_plugin {
        id        = "volmgr"
        type      = "monolith"
        mount_dir = "/csi"
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
