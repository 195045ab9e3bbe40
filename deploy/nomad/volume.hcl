# `nomad volume create volume.hcl`: a 1 GiB volume on the volmgr plugin.
# The capacity is enforced on ZFS and btrfs providers only.
id        = "web-data"
name      = "web-data"
type      = "csi"
plugin_id = "volmgr"

capacity_min = "1GiB"
capacity_max = "1GiB"

capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}

parameters {
  provider = "default"
}
