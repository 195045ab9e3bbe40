
-- Takes snapshot SNAP of filesystem SRC, tagged, in one sync task (one
-- transaction group: no crash leaves it untagged).
-- argv: SRC, SRC_ID (the volume SRC must be tagged as), SNAP, then the
-- snapshot's tags as "property=value" (split by tag_args, lua/props.lua).
-- Returns {result = "made", guid} | {result = "absent"} (no filesystem SRC)
-- | {result = "foreign"} (SRC not tagged as SRC_ID: nothing made)
-- | {result = "exists", guid, owner, volume, op, kind} (SNAP exists: its
-- tags, for the caller's idempotence rule) | {result = "failed", errno, step}
-- (a zfs.sync call refused: nothing made).
local argv = (...)["argv"]
local src, src_id, snap = argv[1], argv[2], argv[3]

-- The tags (lua/props.lua), split before anything is made (nothing below
-- can fail fatally after the snapshot).
local props = tag_args(argv, 4)

if not zfs.exists(src) or zfs.get_prop(src, "type") ~= "filesystem" then
    return {result = "absent"}
end
if not tagged(src, src_id, "data") then
    return {result = "foreign"}
end
if zfs.exists(snap) then
    return {
        result = "exists",
        guid = tostring(zfs.get_prop(snap, "guid")),
        owner = zfs.get_prop(snap, "volmgr:owner"),
        volume = zfs.get_prop(snap, "volmgr:volume-id"),
        op = zfs.get_prop(snap, "volmgr:op"),
        kind = zfs.get_prop(snap, "volmgr:kind"),
    }
end
local err = zfs.sync.snapshot(snap)
if err ~= 0 then
    return {result = "failed", errno = err, step = "snapshot"}
end
for _, p in ipairs(props) do
    err = zfs.sync.set_prop(snap, p[1], p[2])
    if err ~= 0 then
        -- Undone in the same transaction group: never visible untagged.
        zfs.sync.destroy(snap)
        return {result = "failed", errno = err, step = "set_prop " .. p[1]}
    end
end
return {result = "made", guid = tostring(zfs.get_prop(snap, "guid"))}
