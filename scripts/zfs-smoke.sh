#!/bin/bash
# zfs-smoke.sh: end-to-end check of the ZFS guest environment and of the ZFS behaviour
# volmgr relies on.  Runs inside the guest: `scripts/zfs-test --smoke`.
set -euo pipefail

n=0
ok() { n=$((n + 1)); echo "smoke: ok: $*"; }
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }
expect_fail() { # expect_fail PATTERN CMD...: CMD must fail with PATTERN on stderr
    local pat=$1 err; shift
    if err=$("$@" 2>&1); then fail "succeeded unexpectedly: $*"; fi
    grep -q -- "$pat" <<<"$err" || fail "'$*' failed without '$pat': $err"
}
prop() { zfs get -H -p -o value "$1" "$2"; }

[[ ${ZFSVM_IN_VM:-} == 1 ]] || fail "run me inside the guest: scripts/zfs-test --smoke"
[[ -c /dev/zfs ]] || fail "/dev/zfs missing"
echo "smoke: $(zfs version | tr '\n' ' ')| disks: ${ZFSVM_DISKS:-none} | PATH=$PATH"
for c in zfs zpool truncate cmp; do command -v "$c" >/dev/null || fail "no $c"; done
read -ra disks <<<"${ZFSVM_DISKS:-}"
[[ ${#disks[@]} -ge 1 && -b ${disks[0]} ]] || fail "no virtio disk"
[[ -L /dev/disk/by-id/virtio-zfsvm0 ]] || fail "udev did not create /dev/disk/by-id/virtio-zfsvm0"
ok "environment"

tmp=$(mktemp -d)
truncate -s 512M "$tmp/vdev0"

# A pool on the first virtio disk, one on a sparse file vdev in /tmp.
zpool create -f -O mountpoint=/smk -O compression=lz4 smk "${disks[0]}"
zpool create -O mountpoint=/fp fp "$tmp/vdev0"
ok "pools on ${disks[0]} and on a file vdev"

# Datasets tagged with user properties; children inherit them.
zfs create -o volmgr:volume-id=vol-1 smk/a
zfs create smk/a/child
[[ $(zfs get -H -o value,source volmgr:volume-id smk/a/child) == $'vol-1\tinherited from smk/a' ]] ||
    fail "user property not inherited"
[[ $(prop volmgr:volume-id smk) == - ]] || fail "unset user property should read '-'"
ok "user properties"

dd if=/dev/urandom of=/smk/a/f1 bs=1M count=4 status=none
zfs snapshot smk/a@s1
dd if=/dev/urandom of=/smk/a/f2 bs=1M count=2 status=none
zfs snapshot smk/a@s2
zfs clone smk/a@s1 smk/c
[[ $(prop origin smk/c) == smk/a@s1 ]] || fail "clone origin"
expect_fail "dataset already exists" zfs create smk/a
expect_fail "dataset does not exist" zfs get -H guid smk/nope
ok "snapshots, clone, error texts"

# Machine-readable listing: tab separated, no header, exact numbers.
list=$(zfs list -H -p -t all -r -o name,type,guid,createtxg,origin,volmgr:volume-id smk)
echo "$list"
awk -F'\t' 'NF != 6 || $3 !~ /^[0-9]+$/ || $4 !~ /^[0-9]+$/ { bad = 1 } END { exit bad }' <<<"$list" ||
    fail "zfs list -H -p format"
# A clone does not take its origin's user properties: it inherits from its parent.
grep -qP '^smk/c\tfilesystem\t[0-9]+\t[0-9]+\tsmk/a@s1\t-$' <<<"$list" || fail "clone row"
grep -qP '^smk/a@s2\tsnapshot\t[0-9]+\t[0-9]+\t-\tvol-1$' <<<"$list" || fail "snapshot row"
(($(prop createtxg smk/a@s1) < $(prop createtxg smk/a@s2))) || fail "createtxg order"
ok "zfs list -H -p"

# Full + incremental send/recv; snapshot GUIDs survive the trip.
zfs send smk/a@s1 | zfs recv -o volmgr:volume-id=vol-2 fp/r
zfs send -i @s1 smk/a@s2 | zfs recv fp/r
cmp /smk/a/f1 /fp/r/f1 || fail "received f1 differs"
cmp /smk/a/f2 /fp/r/f2 || fail "received f2 differs"
[[ $(prop guid fp/r@s2) == "$(prop guid smk/a@s2)" ]] || fail "snapshot guid changed by send/recv"
[[ $(prop volmgr:volume-id fp/r) == vol-2 ]] || fail "recv -o"
# Re-receiving a snapshot that exists by name is skipped with exit 0 (libzfs, 2.1).
zfs send -i @s1 smk/a@s2 >"$tmp/inc"
grep -q "already exists; ignoring" <(zfs recv -v fp/r <"$tmp/inc" 2>&1) || fail "re-receive not ignored"
zfs send smk/a@s1 >"$tmp/full1"
expect_fail "destination 'fp/r' exists" zfs recv fp/r <"$tmp/full1"
ok "full and incremental send/recv (cmp, guid)"

# Resumable receive: an interrupted stream leaves receive_resume_token.
zfs send smk/a@s2 >"$tmp/full"
head -c $(($(stat -c %s "$tmp/full") / 2)) "$tmp/full" >"$tmp/half"
if zfs recv -s fp/res <"$tmp/half" 2>/dev/null; then fail "truncated stream was accepted"; fi
token=$(prop receive_resume_token fp/res)
[[ $token != - && -n $token ]] || fail "no receive_resume_token"
# 2.1 refuses a plain full receive there with "destination 'fp/res' exists" (not with
# "contains partially-complete state", which is the text for other cases).
expect_fail "partially-complete state\|destination 'fp/res' exists" zfs recv fp/res <"$tmp/full"
zfs send -t "$token" | zfs recv -s fp/res
cmp /smk/a/f2 /fp/res/f2 || fail "resumed data differs"
if zfs recv -s fp/ab <"$tmp/half" 2>/dev/null; then fail "truncated stream was accepted"; fi
zfs recv -A fp/ab
[[ $(zfs list -H -o name fp/ab 2>/dev/null) == "" ]] || fail "recv -A left fp/ab"
ok "recv -s resume token, send -t, recv -A"

# A zvol shows up under /dev/zvol (udev), bounded wait.
zfs create -V 64M smk/vol
for ((i = 0; i < 100; i++)); do [[ -e /dev/zvol/smk/vol ]] && break; sleep 0.1; done
[[ -b /dev/zvol/smk/vol ]] || fail "/dev/zvol/smk/vol did not appear"
ok "zvol device node"

# Export/import both pools.
zpool export fp
zpool import -d "$tmp" fp
cmp /smk/a/f1 /fp/r/f1 || fail "data after file-vdev import"
zpool export smk
zpool import smk
[[ $(prop volmgr:volume-id smk/a) == vol-1 ]] || fail "property after import"
ok "export/import"

# Dependencies block destroy; destroy -r after removing the clone.
expect_fail "dependent clones" zfs destroy -r smk/a
zfs destroy smk/c
zfs destroy -r smk/a
expect_fail "dataset does not exist" zfs list -H -r smk/a
zpool destroy smk
zpool destroy fp
rm -rf "$tmp"
ok "destroy -r, pool destroy"
echo "smoke: all $n checks passed"
